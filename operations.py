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
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.fx
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


# The padded ops below read the input's size to pad it, so their padding is kept out of
# torch.fx traces (torch.fx.wrap: the call is recorded whole, as timm does with its own 'SAME'
# padding) and a traced or scripted model pads right at every input size.

def conv2d_same(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                stride: List[int], dilation: List[int], groups: int) -> torch.Tensor:
    """F.conv2d with TF 'SAME' padding: the conv's own (symmetric) padding where TF pads
    symmetrically, an explicit F.pad where a stride-2 window meets an even size."""
    kh, kw = weight.shape[-2], weight.shape[-1]
    top, bottom = same_padding(x.shape[-2], kh, stride[0], dilation[0])
    left, right = same_padding(x.shape[-1], kw, stride[1], dilation[1])
    if top == bottom and left == right:
        return F.conv2d(x, weight, bias, stride, [top, left], dilation, groups)
    return F.conv2d(F.pad(x, [left, right, top, bottom]), weight, bias, stride, [0, 0], dilation, groups)


def max_pool2d_same(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Max pool with TF 'SAME' padding; padded cells never win."""
    top, bottom = same_padding(x.shape[-2], kernel_size, stride)
    left, right = same_padding(x.shape[-1], kernel_size, stride)
    if top == bottom and left == right:
        return F.max_pool2d(x, kernel_size, stride, [top, left])
    x = F.pad(x, [left, right, top, bottom], value=float('-inf'))
    return F.max_pool2d(x, kernel_size, stride)


def avg_pool2d_same(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Average pool with TF 'SAME' padding, which divides by the number of real cells."""
    top, bottom = same_padding(x.shape[-2], kernel_size, stride)
    left, right = same_padding(x.shape[-1], kernel_size, stride)
    if top == bottom and left == right:
        return F.avg_pool2d(x, kernel_size, stride, [top, left], count_include_pad=False)
    pad = [left, right, top, bottom]
    ones = F.pad(torch.ones_like(x[:1, :1]), pad)
    return (F.avg_pool2d(F.pad(x, pad), kernel_size, stride, divisor_override=1)
            / F.avg_pool2d(ones, kernel_size, stride, divisor_override=1))


torch.fx.wrap('conv2d_same')
torch.fx.wrap('max_pool2d_same')
torch.fx.wrap('avg_pool2d_same')


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d whose padding follows TF 'SAME' (``padding='tf'``) or is symmetric."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, dilation=1,
                 groups: int = 1, bias: bool = False, padding: str = 'tf'):
        k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        d = (dilation, dilation) if isinstance(dilation, int) else dilation
        symmetric = (((k[0] - 1) * d[0]) // 2, ((k[1] - 1) * d[1]) // 2)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=symmetric if padding == 'symmetric' else 0,
                         dilation=dilation, groups=groups, bias=bias)
        self.pad_mode = _check_mode(padding)
        self.tf_same = padding == 'tf'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tf_same:
            return conv2d_same(x, self.weight, self.bias, list(self.stride), list(self.dilation),
                               self.groups)
        return self._conv_forward(x, self.weight, self.bias)


class MaxPool2dSame(nn.Module):
    """3x3-style max pool; padded cells never win, as in TF."""

    def __init__(self, kernel_size: int, stride: int, padding: str = 'tf'):
        super().__init__()
        self.kernel_size, self.stride, self.pad_mode = kernel_size, stride, _check_mode(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_mode == 'tf':
            return max_pool2d_same(x, self.kernel_size, self.stride)
        return F.max_pool2d(x, self.kernel_size, self.stride, (self.kernel_size - 1) // 2)


class AvgPool2dSame(nn.Module):
    """Average pool that divides by the number of real cells under the window, as TF 'SAME' does."""

    def __init__(self, kernel_size: int, stride: int, padding: str = 'tf'):
        super().__init__()
        self.kernel_size, self.stride, self.pad_mode = kernel_size, stride, _check_mode(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_mode == 'tf':
            return avg_pool2d_same(x, self.kernel_size, self.stride)
        return F.avg_pool2d(x, self.kernel_size, self.stride, (self.kernel_size - 1) // 2,
                            count_include_pad=False)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x, [0, 1, 0, 1])[:, :, 1:, 1:]  # TF's shift by one pixel up-left
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.pointwise1(self.depthwise1(self.relu1(x))))
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pointwise(self.depthwise(self.relu(x))))


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


class Pool(nn.Module):
    """`max_pool_3x3` / `avg_pool_3x3`: pool, then 1x1 conv + BN (no ReLU) if the width changes."""

    def __init__(self, kind: str, C_in: int, C_out: int, stride: int, padding: str = 'tf'):
        super().__init__()
        self.kind = kind
        pool_cls = MaxPool2dSame if kind == 'max' else AvgPool2dSame
        self.pool = pool_cls(3, stride, padding=padding)
        self.project = C_in != C_out
        self.conv = Conv2dSame(C_in, C_out, 1) if self.project else None
        self.bn = batch_norm(C_out) if self.project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        if self.conv is None or self.bn is None:
            return x
        return self.bn(self.conv(x))


class SkipConnect(nn.Module):
    """`skip_connect` (TF-Slim's 'none'): identity, or ReLU, strided 1x1 conv, BN when the
    stride or the width changes. A 1x1 'SAME' conv never pads, so the plain conv is exact."""

    def __init__(self, C_in: int, C_out: int, stride: int):
        super().__init__()
        self.project = stride > 1 or C_in != C_out
        self.relu = nn.ReLU(inplace=False)
        self.conv = Conv2dSame(C_in, C_out, 1, stride) if self.project else None  # 1x1: no padding
        self.bn = batch_norm(C_out) if self.project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None or self.bn is None:
            return x
        return self.bn(self.conv(self.relu(x)))


class Zero(nn.Module):
    """DARTS `none`: the zero op (no connection)."""

    def __init__(self, C_in: int, C_out: int, stride: int):
        super().__init__()
        self.C_out, self.stride = C_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        return x.new_zeros(x.shape[0], self.C_out, (x.shape[2] + s - 1) // s, (x.shape[3] + s - 1) // s)


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


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Drops whole examples of ``x`` with probability ``drop_prob`` and rescales the survivors by
    1/keep_prob, as TF-Slim's nasnet_utils.drop_path; call it in training mode only."""
    if drop_prob <= 0.0:
        return x
    keep_prob = 1.0 - drop_prob
    mask = x.new_empty([x.shape[0], 1, 1, 1]).bernoulli_(keep_prob)
    return x * mask.div_(keep_prob)
