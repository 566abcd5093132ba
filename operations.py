"""Operations of the PNASNet-5 / DARTS search space, with TensorFlow 'SAME' padding.

Every op is a named class so that the converter and the BatchNorm folding can ask what an op is by
type. Ops take ``(C_in, C_out, stride, padding)``: in a PNAS cell an op may read the cell's raw input
(``cell_stem_0`` reads the 96-channel stem conv), so input and output widths can differ.

TensorFlow pads 'SAME' convolutions by ``pad_total = max((ceil(n/s)-1)*s + k - n, 0)`` with the odd
pixel at the bottom/right; PyTorch pads symmetrically. The two agree except where a stride-2 window
meets an even size, which is why an earlier port was exact only at 323 px. ``padding='tf'``
(the default) reproduces TensorFlow at every size; ``padding='symmetric'`` keeps the earlier port's
behaviour for comparison.
"""
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

BN_EPS = 1e-3  # TF-Slim's batch_norm_epsilon; PyTorch's default (1e-5) shifts every BN a little
PADDING_MODES = ('tf', 'symmetric')


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> Tuple[int, int]:
    """(before, after) padding of TensorFlow 'SAME' for one spatial dimension."""
    k = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def _pad_plan(x: torch.Tensor, kernel, stride, dilation, mode: str, value: float = 0.0):
    """Returns (x, padding) so that the op's own symmetric ``padding`` on ``x`` gives TF 'SAME'.

    Where TF pads symmetrically (every stride-1 op, and stride 2 on odd sizes) the op's built-in
    padding does it without a copy; only where a stride-2 window meets an even size, and TF puts
    the odd pixel at the bottom/right, is ``x`` padded explicitly (with ``value``).
    """
    kh, kw = kernel
    if mode == 'symmetric':
        return x, (((kh - 1) * dilation[0]) // 2, ((kw - 1) * dilation[1]) // 2)
    h_before, h_after = same_padding(x.shape[-2], kh, stride[0], dilation[0])
    w_before, w_after = same_padding(x.shape[-1], kw, stride[1], dilation[1])
    if h_before == h_after and w_before == w_after:
        return x, (h_before, w_before)
    return F.pad(x, (w_before, w_after, h_before, h_after), value=value), (0, 0)


def _check_mode(padding: str) -> str:
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
    return padding


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d whose padding follows TF 'SAME' (``padding='tf'``) or is symmetric."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, dilation=1,
                 groups: int = 1, bias: bool = False, padding: str = 'tf'):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         dilation=dilation, groups=groups, bias=bias)
        self.pad_mode = _check_mode(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, pad = _pad_plan(x, self.kernel_size, self.stride, self.dilation, self.pad_mode)
        return F.conv2d(x, self.weight, self.bias, self.stride, pad, self.dilation, self.groups)


class MaxPool2dSame(nn.Module):
    """3x3-style max pool; padded cells never win, as in TF."""

    def __init__(self, kernel_size: int, stride: int, padding: str = 'tf'):
        super().__init__()
        self.kernel_size, self.stride, self.pad_mode = kernel_size, stride, _check_mode(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        x, pad = _pad_plan(x, (k, k), (s, s), (1, 1), self.pad_mode, value=float('-inf'))
        return F.max_pool2d(x, k, s, pad)


class AvgPool2dSame(nn.Module):
    """Average pool that divides by the number of real cells under the window, as TF 'SAME' does."""

    def __init__(self, kernel_size: int, stride: int, padding: str = 'tf'):
        super().__init__()
        self.kernel_size, self.stride, self.pad_mode = kernel_size, stride, _check_mode(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        h, w = x.shape[-2:]
        padded, pad = _pad_plan(x, (k, k), (s, s), (1, 1), self.pad_mode)
        if padded is x:
            return F.avg_pool2d(x, k, s, pad, count_include_pad=False)
        # explicit zero padding: divide the window sums by the number of real cells
        ones, _ = _pad_plan(x.new_ones(1, 1, h, w), (k, k), (s, s), (1, 1), self.pad_mode)
        return F.avg_pool2d(padded, k, s, divisor_override=1) / F.avg_pool2d(ones, k, s, divisor_override=1)


def _format_of(x: torch.Tensor) -> torch.memory_format:
    return (torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous() else torch.contiguous_format)


def _taps(n: int, m: int, k: int, s: int, before: int):
    """For each tap t of a k-wide window with stride s and ``before`` padding over n inputs: the
    first output index it reaches, how many outputs, and the first input index it reads."""
    out = []
    for t in range(k):
        lo = max(0, -(-(before - t) // s))
        hi = min(m - 1, (n - 1 - t + before) // s)
        if hi >= lo:
            out.append((lo, hi - lo + 1, s * lo - before + t))
    return out


def _max_along(src: torch.Tensor, dst: torch.Tensor, dim: int, k: int, s: int, before: int) -> None:
    n, m = src.shape[dim], dst.shape[dim]

    def read(tap, lo=None, count=None):  # the inputs a tap reads for outputs lo .. lo+count-1
        tap_lo, tap_count, start = tap
        lo, count = (tap_lo, tap_count) if lo is None else (lo, count)
        start += s * (lo - tap_lo)
        return src.narrow(dim, start, s * (count - 1) + 1)[_step(dim, s)]

    taps = sorted(_taps(n, m, k, s, before), key=lambda tap: -tap[1])
    if not taps or taps[0][1] < m:  # no tap reaches every output (a window over padding only)
        dst.fill_(float('-inf'))
        rest = taps
    elif len(taps) == 1:
        dst.copy_(read(taps[0]))
        rest = []
    else:
        # the widest two taps in one pass where they overlap, the first alone elsewhere
        full, (lo, count, _) = taps[0], taps[1]
        torch.maximum(read(full, lo, count), read(taps[1]), out=dst.narrow(dim, lo, count))
        if lo > 0:
            dst.narrow(dim, 0, lo).copy_(read(full, 0, lo))
        if lo + count < m:
            dst.narrow(dim, lo + count, m - lo - count).copy_(read(full, lo + count, m - lo - count))
        rest = taps[2:]
    for tap in rest:
        view = dst.narrow(dim, tap[0], tap[1])
        torch.maximum(view, read(tap), out=view)


def _step(dim: int, s: int):
    return (slice(None),) * dim + (slice(None, None, s),)


def max_pool_same(x: torch.Tensor, kernel_size: int, stride: int, padding: str = 'tf',
                  out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """MaxPool2dSame's function as two passes of elementwise maxima over shifted views (rows,
    then columns), optionally into ``out`` (a channel slice of a concat buffer, say). Exact, as
    any max is; padded cells are simply never read. On the CPU this is several times faster
    than max_pool2d, which also writes an index for every output."""
    k, s = kernel_size, stride
    n, c, h, w = x.shape
    if padding == 'tf':
        (top, _), (left, _) = same_padding(h, k, s), same_padding(w, k, s)
        ho, wo = -(-h // s), -(-w // s)
    else:
        top = left = (k - 1) // 2
        ho, wo = (h + 2 * top - k) // s + 1, (w + 2 * left - k) // s + 1
    fmt = _format_of(x)
    rows = torch.empty(n, c, h, wo, dtype=x.dtype, device=x.device, memory_format=fmt)
    _max_along(x, rows, 3, k, s, left)
    if out is None:
        out = torch.empty(n, c, ho, wo, dtype=x.dtype, device=x.device, memory_format=fmt)
    _max_along(rows, out, 2, k, s, top)
    return out


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class ReLUConvBN(nn.Module):
    """ReLU, 1x1 (or kxk) conv, BN: the cell's input projections (TF `1x1`/`prev_1x1`)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int = 1, stride: int = 1,
                 padding: str = 'tf'):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv = Conv2dSame(C_in, C_out, kernel_size, stride, padding=padding)
        self.bn = batch_norm(C_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.relu(x)))

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        """Inference engine (after ``fuse_op``): ``x`` is already rectified."""
        return conv_forward(self.conv, x)


class FactorizedReduce(nn.Module):
    """Halves the spatial size without losing pixels: two 1x1 convs on offset grids, concat, BN.

    TF's second path pads one zero row/column at the bottom/right and drops the first ones, so on
    an odd size its last output row/column is all zeros (the conv has no bias); DARTS' version,
    which slices ``x[:, :, 1:, 1:]``, would come out one pixel short there. Each path has
    ``C_out // 2`` channels, so an odd ``C_out`` gives ``C_out - 1`` (PNASNet Mobile's
    ``cell_stem_1``: 2 x 13 = 26 for a 27-filter cell), as TF's ``int(output_filters / 2)`` does.
    """

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.C_out = 2 * (C_out // 2)
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = batch_norm(self.C_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        h, w = x.shape[-2:]
        shifted = x[:, :, 1:, 1:]
        if h % 2 or w % 2:  # TF's zero row/column, which only an odd size ever samples
            shifted = F.pad(shifted, (0, w % 2, 0, h % 2))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        """Inference engine (after ``fuse_op``): ``x`` is already rectified. Without padding the
        input: on an odd size, the second path's last row and column read only TF's zero
        padding, so they are its folded bias."""
        h, w = x.shape[-2:]
        first = conv_forward(self.conv_1, x)
        if not (h % 2 or w % 2):
            return torch.cat([first, conv_forward(self.conv_2, x[:, :, 1::2, 1::2], stride=1)], dim=1)
        n, half, ho, wo = first.shape
        # a 1-pixel side leaves the second path nothing but padding; otherwise it reads the odd
        # rows and columns, gathered first (a quarter of x) for a stride-1 conv
        second = (conv_forward(self.conv_2, x[:, :, 1::2, 1::2], stride=1) if h > 1 and w > 1
                  else first.new_empty(n, half, 0, 0))
        out = torch.empty(n, 2 * half, ho, wo, dtype=first.dtype, device=first.device,
                          memory_format=_format_of(first))
        out[:, :half].copy_(first)
        rest = out[:, half:]
        rest[:, :, :second.shape[2], :second.shape[3]].copy_(second)
        edge = (self.conv_2.bias if self.conv_2.bias is not None else first.new_zeros(half))
        edge = edge.to(out.dtype).view(1, half, 1, 1)
        rest[:, :, second.shape[2]:, :].copy_(edge.expand_as(rest[:, :, second.shape[2]:, :]))
        rest[:, :, :, second.shape[3]:].copy_(edge.expand_as(rest[:, :, :, second.shape[3]:]))
        return out


class SepConv(nn.Module):
    """PNAS/NASNet `separable_KxK_2`: twice [ReLU, depthwise KxK, pointwise 1x1, BN].

    The stride is on the first depthwise conv only, and the first pointwise conv already maps to
    ``C_out`` (DARTS' SepConv keeps ``C_in`` until the second repetition).
    """

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: str = 'tf'):
        super().__init__()
        self.kernel_size = kernel_size
        self.relu1 = nn.ReLU(inplace=False)
        self.depthwise1 = Conv2dSame(C_in, C_in, kernel_size, stride, groups=C_in, padding=padding)
        self.pointwise1 = nn.Conv2d(C_in, C_out, 1, bias=False)
        self.bn1 = batch_norm(C_out)
        self.relu2 = nn.ReLU(inplace=False)
        self.depthwise2 = Conv2dSame(C_out, C_out, kernel_size, 1, groups=C_out, padding=padding)
        self.pointwise2 = nn.Conv2d(C_out, C_out, 1, bias=False)
        self.bn2 = batch_norm(C_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.pointwise1(self.depthwise1(self.relu1(x))))
        return self.bn2(self.pointwise2(self.depthwise2(self.relu2(x))))

    ends_in_conv = True

    def fused(self, x: torch.Tensor, add_to: Optional[torch.Tensor] = None,
              relu: bool = False) -> torch.Tensor:
        """Inference engine (after ``fuse_op``): ``x`` is already rectified; the inner ReLU is a
        post-op of the first pointwise conv, ``add_to``/``relu`` ride on the last one."""
        x = conv_forward(self.pointwise1, conv_forward(self.depthwise1, x), relu=True)
        return conv_forward(self.pointwise2, conv_forward(self.depthwise2, x), relu=relu, add_to=add_to)


class DilConv(nn.Module):
    """DARTS `dil_conv_KxK`: ReLU, dilated depthwise KxK (dilation 2), pointwise 1x1, BN."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, dilation: int = 2,
                 padding: str = 'tf'):
        super().__init__()
        self.kernel_size, self.dilation = kernel_size, dilation
        self.relu = nn.ReLU(inplace=False)
        self.depthwise = Conv2dSame(C_in, C_in, kernel_size, stride, dilation=dilation,
                                    groups=C_in, padding=padding)
        self.pointwise = nn.Conv2d(C_in, C_out, 1, bias=False)
        self.bn = batch_norm(C_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pointwise(self.depthwise(self.relu(x))))

    ends_in_conv = True

    def fused(self, x: torch.Tensor, add_to: Optional[torch.Tensor] = None,
              relu: bool = False) -> torch.Tensor:
        """Inference engine (after ``fuse_op``): ``x`` is already rectified."""
        return conv_forward(self.pointwise, conv_forward(self.depthwise, x), relu=relu, add_to=add_to)


class Conv7x1x1x7(nn.Module):
    """DARTS `conv_7x1_1x7`: ReLU, 1x7 conv, 7x1 conv, BN (the stride split over the two)."""

    def __init__(self, C_in: int, C_out: int, stride: int, padding: str = 'tf'):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1x7 = Conv2dSame(C_in, C_out, (1, 7), (1, stride), padding=padding)
        self.conv_7x1 = Conv2dSame(C_out, C_out, (7, 1), (stride, 1), padding=padding)
        self.bn = batch_norm(C_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv_7x1(self.conv_1x7(self.relu(x))))

    ends_in_conv = True

    def fused(self, x: torch.Tensor, add_to: Optional[torch.Tensor] = None,
              relu: bool = False) -> torch.Tensor:
        """Inference engine (after ``fuse_op``): ``x`` is already rectified."""
        return conv_forward(self.conv_7x1, conv_forward(self.conv_1x7, x), relu=relu, add_to=add_to)


class _ProjectsOrPasses:
    """The engine side of Pool and Identity: each ends in a 1x1 conv (BN folded) when it
    projects (``self.project``), and passes its tensor on otherwise."""

    @property
    def ends_in_conv(self) -> bool:
        return self.project

    def fused(self, x: torch.Tensor, add_to: Optional[torch.Tensor] = None,
              relu: bool = False) -> torch.Tensor:
        """Inference engine (after ``fuse_op``): ``x`` is what the projection would read: the
        pool's output for Pool (the cell shares it), the rectified input for a projecting
        Identity (``takes_relu``), the input itself for a plain skip."""
        if self.project:
            return conv_forward(self.conv, x, relu=relu, add_to=add_to)
        return finish(x, add_to, relu)


class Pool(_ProjectsOrPasses, nn.Module):
    """`max_pool_3x3` / `avg_pool_3x3`: pool, then 1x1 conv + BN (no ReLU) if the width changes."""

    def __init__(self, kind: str, C_in: int, C_out: int, stride: int, padding: str = 'tf'):
        super().__init__()
        self.kind = kind
        pool_cls = MaxPool2dSame if kind == 'max' else AvgPool2dSame
        self.pool = pool_cls(3, stride, padding=padding)
        self.project = C_in != C_out
        if self.project:
            self.conv = nn.Conv2d(C_in, C_out, 1, bias=False)
            self.bn = batch_norm(C_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.pool(x))

    def finish(self, pooled: torch.Tensor) -> torch.Tensor:
        """The part after the pool, so that a cell can share one pool between two ops."""
        return self.bn(self.conv(pooled)) if self.project else pooled


class Identity(_ProjectsOrPasses, nn.Module):
    """`skip_connect` (TF-Slim's 'none'): identity, or ReLU, strided 1x1 conv, BN when the
    stride or the width changes. A 1x1 'SAME' conv never pads, so the plain conv is exact."""

    def __init__(self, C_in: int, C_out: int, stride: int):
        super().__init__()
        self.project = stride > 1 or C_in != C_out
        if self.project:
            self.relu = nn.ReLU(inplace=False)
            self.conv = nn.Conv2d(C_in, C_out, 1, stride=stride, bias=False)
            self.bn = batch_norm(C_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.relu(x))) if self.project else x


class Zero(nn.Module):
    """DARTS `none`: the zero op (no connection)."""

    def __init__(self, C_in: int, C_out: int, stride: int):
        super().__init__()
        self.C_out, self.stride = C_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        s = self.stride
        return x.new_zeros(n, self.C_out, -(-h // s), -(-w // s))

    ends_in_conv = False

    def fused(self, x: torch.Tensor, add_to: Optional[torch.Tensor] = None,
              relu: bool = False) -> torch.Tensor:
        return finish(self(x), add_to, relu, owned=True)


OPS: Dict[str, Callable[[int, int, int, str], nn.Module]] = {
    'none': lambda C_in, C_out, stride, padding: Zero(C_in, C_out, stride),
    'skip_connect': lambda C_in, C_out, stride, padding: Identity(C_in, C_out, stride),
    'max_pool_3x3': lambda C_in, C_out, stride, padding: Pool('max', C_in, C_out, stride, padding),
    'avg_pool_3x3': lambda C_in, C_out, stride, padding: Pool('avg', C_in, C_out, stride, padding),
    'sep_conv_3x3': lambda C_in, C_out, stride, padding: SepConv(C_in, C_out, 3, stride, padding),
    'sep_conv_5x5': lambda C_in, C_out, stride, padding: SepConv(C_in, C_out, 5, stride, padding),
    'sep_conv_7x7': lambda C_in, C_out, stride, padding: SepConv(C_in, C_out, 7, stride, padding),
    'dil_conv_3x3': lambda C_in, C_out, stride, padding: DilConv(C_in, C_out, 3, stride, 2, padding),
    'dil_conv_5x5': lambda C_in, C_out, stride, padding: DilConv(C_in, C_out, 5, stride, 2, padding),
    'conv_7x1_1x7': lambda C_in, C_out, stride, padding: Conv7x1x1x7(C_in, C_out, stride, padding),
}


def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d, channels: slice = slice(None)) -> None:
    """Makes ``conv`` compute ``bn(conv(x))`` (eval statistics) for the output channels of ``bn``
    selected by ``channels``; folded in float64, stored in the conv's dtype."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    scale, shift = scale[channels], shift[channels]
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


def fold_bn(owner: nn.Module, conv_name: str, bn_name: str) -> None:
    """Folds ``owner.<bn_name>`` into ``owner.<conv_name>`` and replaces the BN by an identity."""
    bn = getattr(owner, bn_name, None)
    if isinstance(bn, nn.BatchNorm2d):
        fold_bn_into_conv(getattr(owner, conv_name), bn)
        setattr(owner, bn_name, nn.Identity())


def fuse_op(op: nn.Module) -> None:
    """Folds every BatchNorm of an op into the conv before it (inference only) and drops the
    op's leading ReLU where the cell can hand it an already rectified input (``takes_relu``)."""
    pairs = {ReLUConvBN: [('conv', 'bn')], SepConv: [('pointwise1', 'bn1'), ('pointwise2', 'bn2')],
             DilConv: [('pointwise', 'bn')], Conv7x1x1x7: [('conv_7x1', 'bn')],
             Pool: [('conv', 'bn')], Identity: [('conv', 'bn')]}
    if isinstance(op, FactorizedReduce):
        half = op.C_out // 2
        fold_bn_into_conv(op.conv_1, op.bn, slice(0, half))
        fold_bn_into_conv(op.conv_2, op.bn, slice(half, None))
        op.bn = nn.Identity()
        return
    for conv_name, bn_name in pairs.get(type(op), []):
        fold_bn(op, conv_name, bn_name)
    first_relu = {SepConv: 'relu1', DilConv: 'relu', Conv7x1x1x7: 'relu', Identity: 'relu'}
    name = first_relu.get(type(op))
    if name and isinstance(getattr(op, name, None), nn.ReLU):
        setattr(op, name, nn.Identity())
        op.takes_relu = True


class _PackCache(dict):
    """oneDNN-packed copies of one conv's weight, by input shape. Derived data: never copied,
    pickled or saved (an opaque oneDNN tensor cannot be), rebuilt on first use."""

    def __deepcopy__(self, memo):
        return _PackCache()

    def __reduce__(self):
        return (_PackCache, ())


_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_convolution_pointwise')


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN computes bfloat16 natively on this CPU (AVX512_BF16 or AMX). Without it
    (AVX2-only CPUs, or ``ONEDNN_MAX_CPU_ISA=AVX2``) bf16 convolutions are emulated and run an
    order of magnitude slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_has_native_fp16() -> bool:
    """Likewise for float16 (AVX512_FP16 or AMX-FP16), which most CPUs lack."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


_ONEDNN_BF16 = _ONEDNN and cpu_has_native_bf16()


def cpu_kernels(x: torch.Tensor) -> bool:
    """Whether ``x`` may take the CPU-only kernels (oneDNN's fused convolutions, aten's
    ``_add_relu``): it lives on the CPU and oneDNN is enabled. Everything else, CUDA included,
    runs ops that every backend has; ``torch.backends.mkldnn.flags(enabled=False)`` sends a CPU
    run down that same portable branch, which is how the tests audit it without a GPU."""
    return x.device.type == 'cpu' and torch.backends.mkldnn.enabled


def _onednn_dtype(x: torch.Tensor, weight: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype the oneDNN fused-conv path computes in, or None for F.conv2d: float32 for CPU
    inference, bfloat16 under CPU bf16 autocast (where oneDNN has bf16); not under autograd or
    torch.compile (which fuses on its own). F.conv2d gives the same numbers, unfused."""
    if not (_ONEDNN and cpu_kernels(x) and weight.dtype == torch.float32
            and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return None
    if torch.is_autocast_enabled('cpu'):
        if (_ONEDNN_BF16 and torch.get_autocast_dtype('cpu') == torch.bfloat16
                and x.dtype in (torch.float32, torch.bfloat16)):
            return torch.bfloat16
        return None
    return torch.float32 if x.dtype == torch.float32 else None


def _packed_weight(conv: nn.Conv2d, x: torch.Tensor, pad, strides):
    """The conv's weight packed by oneDNN for this input shape and dtype, and its bias in that
    dtype; cached on the conv and rebuilt when the weight changes (in place or replaced)."""
    cache = conv.__dict__.get('_packed')
    if cache is None:
        cache = conv._packed = _PackCache()
    w, b = conv.weight, conv.bias
    try:
        version = (w._version, -1 if b is None else b._version)
    except RuntimeError:  # an inference tensor has no version counter
        version = 0
    key = (tuple(x.shape[1:]), x.dtype, tuple(pad), strides, w.data_ptr(),
           None if b is None else b.data_ptr(), version)
    packed = cache.get(key)
    if packed is None:
        if len(cache) >= 4:  # a few input sizes at a time; stale weights drop out here too
            cache.clear()
        weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
            w.detach().to(x.dtype).to_mkldnn(), list(pad), list(strides), list(conv.dilation),
            conv.groups, list(x.shape))
        packed = cache[key] = (weight, None if b is None else b.detach().to(x.dtype))
    return packed


def conv_forward(conv: nn.Conv2d, x: torch.Tensor, relu: bool = False,
                 add_to: Optional[torch.Tensor] = None, stride: Optional[int] = None) -> torch.Tensor:
    """``conv(x)``, then ``add_to += that`` in place if given, then ReLU if ``relu``; ``stride``
    overrides the conv's (for an input that was subsampled already).

    The inference engine's convolution. On the CPU in float32 (and in bfloat16 under CPU bf16
    autocast) it runs one oneDNN primitive with the add and the ReLU as post-ops and the weight
    packed once per input shape; ``add_to`` is then added onto in place. Elsewhere (CUDA, other
    autocast, torch.compile, autograd) it is F.conv2d and the same ops unfused.
    """
    strides = tuple(conv.stride) if stride is None else (stride, stride)
    dtype = _onednn_dtype(x, conv.weight)
    if dtype is not None and add_to is not None and add_to.dtype != dtype:
        dtype = None
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    if isinstance(conv, Conv2dSame):
        x, pad = _pad_plan(x, conv.kernel_size, strides, conv.dilation, conv.pad_mode)
    else:
        pad = conv.padding
    if dtype is not None:
        if not (x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous()):
            x = x.contiguous(memory_format=torch.channels_last)  # faster here than inside the op
        w, b = _packed_weight(conv, x, pad, strides)
        if add_to is None:
            return torch.ops.mkldnn._convolution_pointwise(
                x, w, b, list(pad), list(strides), list(conv.dilation), conv.groups,
                'relu' if relu else 'none', [], '')
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            add_to, x, w, b, list(pad), list(strides), list(conv.dilation), conv.groups,
            'add', 1.0, 'relu' if relu else None, [], None)
    y = F.conv2d(x, conv.weight, conv.bias, strides, pad, conv.dilation, conv.groups)
    return finish(y, add_to, relu, owned=True)


def finish(h: torch.Tensor, add_to: Optional[torch.Tensor], relu: bool, owned: bool = False) -> torch.Tensor:
    """The tail of a fused op that did not end in a conv: ``add_to += h``, then ReLU. ``owned``
    says ``h`` is a fresh tensor that may be rectified in place."""
    if add_to is not None:
        h = add_to.add_(h)
        owned = True
    if relu:
        h = h.relu_() if owned else F.relu(h)
    return h


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Drops whole examples of ``x`` with probability ``drop_prob`` and rescales the survivors by
    1/keep_prob, as TF-Slim's nasnet_utils.drop_path; call it in training mode only."""
    if drop_prob <= 0.0:
        return x
    keep_prob = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x / keep_prob * mask
