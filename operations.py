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


def pad_for_same(x: torch.Tensor, kernel, stride, dilation, mode: str, value: float = 0.0):
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


class _DepthwiseWeightGrad(torch.autograd.Function):
    """A depthwise conv whose weight gradient is computed as convolutions, one per example:
    dW[c] = sum_n x[n, c] (x) dy[n, c], a depthwise conv of the input with the output gradient
    as its kernel (stride and dilation trade places). oneDNN's own weight gradient treats a
    depthwise kernel above 3x3 as a grouped conv padded to 8 channels a group; on the CPU
    this is the faster form there. The forward and the data gradient are oneDNN's."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation)
        return F.conv2d(x, weight, None, stride, padding, dilation, weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conv
        groups = weight.shape[0]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, dilation, False, [0, 0], groups,
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            kh, kw = weight.shape[-2:]
            for n in range(x.shape[0]):
                part = F.conv2d(x[n:n + 1], grad[n].unsqueeze(1), None, dilation, padding, stride,
                                groups)[0, :, :kh, :kw]
                grad_w = part if grad_w is None else grad_w.add_(part)
            grad_w = grad_w.reshape(weight.shape)
        return grad_x, grad_w, None, None, None


def _depthwise_weight_grad_pays(conv: nn.Conv2d, stride) -> bool:
    """Where _DepthwiseWeightGrad is faster than the built-in backward: a depthwise conv
    without bias with a window above 3x3 (oneDNN has a fast 3x3 kernel of its own), unless it
    is both strided and dilated."""
    kh, kw = conv.kernel_size
    window = max((kh - 1) * conv.dilation[0], (kw - 1) * conv.dilation[1]) + 1
    strided_and_dilated = max(stride) > 1 and max(conv.dilation) > 1
    return (conv.groups == conv.in_channels == conv.out_channels and conv.bias is None
            and window > 3 and not strided_and_dilated and conv.weight.requires_grad)


class _PointwiseMatmulGrad(torch.autograd.Function):
    """A stride-1 1x1 conv on a channels_last map, whose gradients are two matrix products of
    the map seen as a [N*H*W, C] matrix (a view: no copy). On a small map (few rows against
    the weight's size) this is faster on the CPU than oneDNN's backward, which reorders the
    weight for the data gradient and the weight gradient back. The forward is oneDNN's."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        n, c_in, h, w = x.shape
        c_out = weight.shape[0]
        rows = grad.permute(0, 2, 3, 1).reshape(-1, c_out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (rows @ weight.view(c_out, c_in)).view(n, h, w, c_in).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            grad_w = (rows.t() @ x.permute(0, 2, 3, 1).reshape(-1, c_in)).view(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = rows.sum(0)
        return grad_x, grad_w, grad_b


POINTWISE_MATMUL_ROWS = 1024  # N*H*W at or below which _PointwiseMatmulGrad pays


def _cpu_fp32_training(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and torch.is_grad_enabled()
            and (weight.requires_grad or x.requires_grad) and not torch.is_autocast_enabled('cpu')
            and not _exporting())


def conv2d(x: torch.Tensor, conv: nn.Conv2d, padding, stride=None) -> torch.Tensor:
    """``conv``'s convolution of ``x`` with ``padding`` (and ``stride``, where it overrides the
    conv's: for an input subsampled already), as F.conv2d computes it; in fp32 training on
    the CPU, with the faster backward of _DepthwiseWeightGrad or _PointwiseMatmulGrad where
    that one pays. Elsewhere (CUDA, autocast, inference) it is F.conv2d itself."""
    stride = conv.stride if stride is None else stride
    if _cpu_fp32_training(x, conv.weight) and x.dim() == 4 and x.shape[0] > 0:
        kh, kw = conv.kernel_size
        if (conv.groups == 1 and (kh, kw) == (1, 1) and tuple(stride) == (1, 1)
                and tuple(padding) == (0, 0) and conv.dilation == (1, 1)
                and x.shape[0] * x.shape[2] * x.shape[3] <= POINTWISE_MATMUL_ROWS
                and x.is_contiguous(memory_format=torch.channels_last)):
            return _PointwiseMatmulGrad.apply(x, conv.weight, conv.bias)
        if _depthwise_weight_grad_pays(conv, stride):
            return _DepthwiseWeightGrad.apply(x, conv.weight, stride, padding, conv.dilation)
    return F.conv2d(x, conv.weight, conv.bias, stride, padding, conv.dilation, conv.groups)


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d whose padding follows TF 'SAME' (``padding='tf'``) or is symmetric."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, dilation=1,
                 groups: int = 1, bias: bool = False, padding: str = 'tf'):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         dilation=dilation, groups=groups, bias=bias)
        self.pad_mode = _check_mode(padding)

    def forward(self, x: torch.Tensor, stride=None) -> torch.Tensor:
        """``stride`` overrides the conv's own, for an input that was subsampled already."""
        stride = self.stride if stride is None else stride
        x, pad = pad_for_same(x, self.kernel_size, stride, self.dilation, self.pad_mode)
        return conv2d(x, self, pad, stride)


class MaxPool2dSame(nn.Module):
    """3x3-style max pool; padded cells never win, as in TF."""

    def __init__(self, kernel_size: int, stride: int, padding: str = 'tf'):
        super().__init__()
        self.kernel_size, self.stride, self.pad_mode = kernel_size, stride, _check_mode(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        x, pad = pad_for_same(x, (k, k), (s, s), (1, 1), self.pad_mode, value=float('-inf'))
        return F.max_pool2d(x, k, s, pad)


class AvgPool2dSame(nn.Module):
    """Average pool that divides by the number of real cells under the window, as TF 'SAME' does."""

    def __init__(self, kernel_size: int, stride: int, padding: str = 'tf'):
        super().__init__()
        self.kernel_size, self.stride, self.pad_mode = kernel_size, stride, _check_mode(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        h, w = x.shape[-2:]
        padded, pad = pad_for_same(x, (k, k), (s, s), (1, 1), self.pad_mode)
        if padded is x:
            return F.avg_pool2d(x, k, s, pad, count_include_pad=False)
        # explicit zero padding: divide the window sums by the number of real cells
        ones, _ = pad_for_same(x.new_ones(1, 1, h, w), (k, k), (s, s), (1, 1), self.pad_mode)
        return F.avg_pool2d(padded, k, s, divisor_override=1) / F.avg_pool2d(ones, k, s, divisor_override=1)


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

    reads_relu = True  # its first step is ReLU(x): a caller may pass x rectified already

    def forward(self, x: torch.Tensor, rectified: bool = False) -> torch.Tensor:
        return self.bn(self.conv(x if rectified else self.relu(x)))


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last where ``x`` is laid out so (and not also plain contiguous), else contiguous."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class _Subsample(torch.autograd.Function):
    """The grids ``x[:, :, i::step, j::step]`` for each offset (i, j), each made contiguous in
    ``x``'s layout; the backward writes every grid's gradient into one zero-filled gradient of
    ``x`` (autograd's slicing would fill one for each grid and then add them)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, step: int, offsets: tuple):
        ctx.shape, ctx.step, ctx.offsets, ctx.fmt = x.shape, step, offsets, memory_format_of(x)
        return tuple(x[:, :, i::step, j::step].contiguous(memory_format=ctx.fmt) for i, j in offsets)

    @staticmethod
    def backward(ctx, *grads):
        g0 = grads[0]
        gx = torch.empty(ctx.shape, dtype=g0.dtype, device=g0.device, memory_format=ctx.fmt).zero_()
        for (i, j), g in zip(ctx.offsets, grads):
            if g is not None and g.numel():
                gx[:, :, i::ctx.step, j::ctx.step] = g
        return gx, None, None


def subsample(x: torch.Tensor, step: int, *offsets) -> Tuple[torch.Tensor, ...]:
    """``x[:, :, i::step, j::step]`` for each (i, j) in ``offsets``, as contiguous tensors.

    A strided 1x1 conv equals a stride-1 conv of ``subsample(x, stride, (0, 0))``, and on the
    CPU the latter's backward is much cheaper: the strided conv's data gradient is computed at
    the input's full size, the subsampled one at its quarter."""
    if not (torch.is_grad_enabled() and x.requires_grad) or _exporting():
        return tuple(x[:, :, i::step, j::step] for i, j in offsets)  # no backward to save on
    return _Subsample.apply(x, step, tuple(offsets))


def _exporting() -> bool:
    """Under torch.jit.trace/script or ONNX export, which cannot record a Python autograd
    Function: the plain ops are traced instead."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


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
        self.conv_1 = Conv2dSame(C_in, C_out // 2, 1, stride=2)  # 1x1: no padding
        self.conv_2 = Conv2dSame(C_in, C_out // 2, 1, stride=2)
        self.bn = batch_norm(self.C_out)

    reads_relu = True

    def forward(self, x: torch.Tensor, rectified: bool = False) -> torch.Tensor:
        x = x if rectified else self.relu(x)
        h, w = x.shape[-2:]
        # conv_1 samples the even rows and columns, conv_2 (after TF's shift) the odd ones
        even, odd = subsample(x, 2, (0, 0), (1, 1))
        if h % 2 or w % 2:  # TF's zero row/column, which only an odd size ever samples
            odd = F.pad(odd, (0, w % 2, 0, h % 2))
        return self.bn(torch.cat([self.conv_1(even, stride=(1, 1)),
                                  self.conv_2(odd, stride=(1, 1))], dim=1))


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
        self.pointwise1 = Conv2dSame(C_in, C_out, 1)
        self.bn1 = batch_norm(C_out)
        self.relu2 = nn.ReLU(inplace=False)
        self.depthwise2 = Conv2dSame(C_out, C_out, kernel_size, 1, groups=C_out, padding=padding)
        self.pointwise2 = Conv2dSame(C_out, C_out, 1)
        self.bn2 = batch_norm(C_out)

    reads_relu = True  # its first step is ReLU(x): a cell may pass x rectified already

    def forward(self, x: torch.Tensor, rectified: bool = False) -> torch.Tensor:
        x = self.bn1(self.pointwise1(self.depthwise1(x if rectified else self.relu1(x))))
        return self.bn2(self.pointwise2(self.depthwise2(self.relu2(x))))


class DilConv(nn.Module):
    """DARTS `dil_conv_KxK`: ReLU, dilated depthwise KxK (dilation 2), pointwise 1x1, BN."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, dilation: int = 2,
                 padding: str = 'tf'):
        super().__init__()
        self.kernel_size = kernel_size
        self.relu = nn.ReLU(inplace=False)
        self.depthwise = Conv2dSame(C_in, C_in, kernel_size, stride, dilation=dilation,
                                    groups=C_in, padding=padding)
        self.pointwise = Conv2dSame(C_in, C_out, 1)
        self.bn = batch_norm(C_out)

    reads_relu = True

    def forward(self, x: torch.Tensor, rectified: bool = False) -> torch.Tensor:
        return self.bn(self.pointwise(self.depthwise(x if rectified else self.relu(x))))


class Conv7x1x1x7(nn.Module):
    """DARTS `conv_7x1_1x7`: ReLU, 1x7 conv, 7x1 conv, BN (the stride split over the two)."""

    def __init__(self, C_in: int, C_out: int, stride: int, padding: str = 'tf'):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1x7 = Conv2dSame(C_in, C_out, (1, 7), (1, stride), padding=padding)
        self.conv_7x1 = Conv2dSame(C_out, C_out, (7, 1), (stride, 1), padding=padding)
        self.bn = batch_norm(C_out)

    reads_relu = True

    def forward(self, x: torch.Tensor, rectified: bool = False) -> torch.Tensor:
        return self.bn(self.conv_7x1(self.conv_1x7(x if rectified else self.relu(x))))


class Pool(nn.Module):
    """`max_pool_3x3` / `avg_pool_3x3`: pool, then 1x1 conv + BN (no ReLU) if the width changes."""

    def __init__(self, kind: str, C_in: int, C_out: int, stride: int, padding: str = 'tf'):
        super().__init__()
        self.kind = kind
        pool_cls = MaxPool2dSame if kind == 'max' else AvgPool2dSame
        self.pool = pool_cls(3, stride, padding=padding)
        self.project = C_in != C_out
        if self.project:
            self.conv = Conv2dSame(C_in, C_out, 1)
            self.bn = batch_norm(C_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        return self.bn(self.conv(x)) if self.project else x


class SkipConnect(nn.Module):
    """`skip_connect` (TF-Slim's 'none'): identity, or ReLU, strided 1x1 conv, BN when the
    stride or the width changes. A 1x1 'SAME' conv never pads, so the plain conv is exact."""

    def __init__(self, C_in: int, C_out: int, stride: int):
        super().__init__()
        self.project = stride > 1 or C_in != C_out
        if self.project:
            self.relu = nn.ReLU(inplace=False)
            self.conv = Conv2dSame(C_in, C_out, 1, stride)  # 1x1: no padding
            self.bn = batch_norm(C_out)

    @property
    def reads_relu(self) -> bool:
        return self.project

    def forward(self, x: torch.Tensor, rectified: bool = False) -> torch.Tensor:
        if not self.project:
            return x
        x = x if rectified else self.relu(x)
        if self.conv.stride != (1, 1):  # a 1x1 'SAME' conv reads every stride-th pixel
            (x,) = subsample(x, self.conv.stride[0], (0, 0))
        return self.bn(self.conv(x, stride=(1, 1)))


class Zero(nn.Module):
    """DARTS `none`: the zero op (no connection)."""

    def __init__(self, C_in: int, C_out: int, stride: int):
        super().__init__()
        self.C_out, self.stride = C_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        s = self.stride
        return x.new_zeros(n, self.C_out, -(-h // s), -(-w // s))


OPS: Dict[str, Callable[[int, int, int, str], nn.Module]] = {
    'none': lambda C_in, C_out, stride, padding: Zero(C_in, C_out, stride),
    'skip_connect': lambda C_in, C_out, stride, padding: SkipConnect(C_in, C_out, stride),
    'max_pool_3x3': lambda C_in, C_out, stride, padding: Pool('max', C_in, C_out, stride, padding),
    'avg_pool_3x3': lambda C_in, C_out, stride, padding: Pool('avg', C_in, C_out, stride, padding),
    'sep_conv_3x3': lambda C_in, C_out, stride, padding: SepConv(C_in, C_out, 3, stride, padding),
    'sep_conv_5x5': lambda C_in, C_out, stride, padding: SepConv(C_in, C_out, 5, stride, padding),
    'sep_conv_7x7': lambda C_in, C_out, stride, padding: SepConv(C_in, C_out, 7, stride, padding),
    'dil_conv_3x3': lambda C_in, C_out, stride, padding: DilConv(C_in, C_out, 3, stride, 2, padding),
    'dil_conv_5x5': lambda C_in, C_out, stride, padding: DilConv(C_in, C_out, 5, stride, 2, padding),
    'conv_7x1_1x7': lambda C_in, C_out, stride, padding: Conv7x1x1x7(C_in, C_out, stride, padding),
}


def drop_path_mask(x: torch.Tensor, drop_prob: float) -> Optional[torch.Tensor]:
    """The per-example factor of TF-Slim's nasnet_utils.drop_path for ``x``: 0 with probability
    ``drop_prob``, else 1/keep_prob, shaped [N, 1, 1, 1]; None when nothing is dropped."""
    if drop_prob <= 0.0:
        return None
    keep_prob = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return mask.div_(keep_prob)


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Drops whole examples of ``x`` with probability ``drop_prob`` and rescales the survivors by
    1/keep_prob, as TF-Slim's nasnet_utils.drop_path; call it in training mode only."""
    mask = drop_path_mask(x, drop_prob)
    return x if mask is None else x * mask  # one pass over x (TF divides, then multiplies: two)


def add_dropped(h1: torch.Tensor, mask1: Optional[torch.Tensor], h2: torch.Tensor,
                mask2: Optional[torch.Tensor]) -> torch.Tensor:
    """``h1 * mask1 + h2 * mask2`` (a missing mask: that term is kept whole), the sum of a cell's
    combination under drop path, with the masks applied inside the add: one pass fewer over the
    map per mask than dropping each term first."""
    if mask1 is None and mask2 is None:
        return h1 + h2
    if mask1 is None:
        return torch.addcmul(h1, h2, mask2)
    if mask2 is None:
        return torch.addcmul(h2, h1, mask1)
    return torch.addcmul(h1 * mask1, h2, mask2)
