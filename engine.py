"""The inference engine: a converted network, made fast for inference, as a module of its own.

``InferenceModel(net)`` folds every BatchNorm into the conv before it (in float64), stores the
weights channels_last and runs eval forwards through a plan made once per cell. The plan does the
same arithmetic as ``Cell.forward`` in fewer passes over memory:

- one ReLU per cell state, shared by the ops that read it rectified; a cell hands over
  ReLU(output) when every reader rectifies it (all of PNASNet's do);
- each combination is added (and rectified) in one pass straight into the cell's concat buffer,
  or, where later ops of the cell read it, summed by the second op's last conv in place;
- max pools are two passes of elementwise maxima (``max_pool_same``, bit-exact), and equal pools
  of a cell are computed once; no padding copies where TF pads symmetrically;
- on the CPU in float32 (and in bfloat16 under CPU bf16 autocast, where the CPU has native bf16)
  each conv is one oneDNN primitive, its weight packed once per input shape, with the ReLU or the
  combination's add and ReLU as post-ops. Elsewhere (CUDA, other autocast, oneDNN disabled) the
  same plan runs on ops that every backend has.

Logits stay within 1e-4 of the plain model. ``model.py`` and ``operations.py`` know nothing of
this file; it reads their modules by type.
"""
import collections
import copy
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Cell, NetworkImageNet
from operations import (Conv2dSame, Conv7x1x1x7, DilConv, FactorizedReduce, Pool, ReLUConvBN,
                        SepConv, SkipConnect, Zero, pad_for_same, same_padding)
from runtime import cpu_has_native_bf16


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last where ``x`` is laid out so (and not also plain contiguous), else contiguous."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


# --- what the CPU has -------------------------------------------------------------------------------

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_convolution_pointwise')
_ONEDNN_BF16 = _ONEDNN and cpu_has_native_bf16()


def cpu_kernels(x: torch.Tensor) -> bool:
    """Whether ``x`` may take the CPU-only kernels (oneDNN's fused convolutions, aten's
    ``_add_relu``): it lives on the CPU and oneDNN is enabled. Everything else, CUDA included,
    runs ops that every backend has; ``torch.backends.mkldnn.enabled = False`` sends a CPU run
    down that same portable branch, which is how the tests audit it without a GPU."""
    return x.device.type == 'cpu' and torch.backends.mkldnn.enabled


def onednn_dtype(x: torch.Tensor, weight: torch.Tensor) -> Optional[torch.dtype]:
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


# --- BatchNorm folding ------------------------------------------------------------------------------

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
    """Folds ``owner.<bn_name>`` into ``owner.<conv_name>`` and replaces the BN by a pass-through."""
    bn = getattr(owner, bn_name, None)
    if isinstance(bn, nn.BatchNorm2d):
        fold_bn_into_conv(getattr(owner, conv_name), bn)
        setattr(owner, bn_name, nn.Identity())


# the (conv, BN) pairs of each op type; FactorizedReduce's one BN spans its two convs
_BN_PAIRS = {ReLUConvBN: [('conv', 'bn')], SepConv: [('pointwise1', 'bn1'), ('pointwise2', 'bn2')],
             DilConv: [('pointwise', 'bn')], Conv7x1x1x7: [('conv_7x1', 'bn')],
             Pool: [('conv', 'bn')], SkipConnect: [('conv', 'bn')]}


def fold_batch_norms(net: NetworkImageNet) -> None:
    """Folds every BatchNorm of ``net`` into the conv before it, in place (inference only). The
    network's own forward stays valid: each BN becomes a pass-through."""
    fold_bn(net, 'conv0', 'conv0_bn')
    for cell in net.cells:
        for op in [cell.preprocess0, cell.preprocess1, *cell.ops]:
            if isinstance(op, FactorizedReduce):
                half = op.C_out // 2
                fold_bn_into_conv(op.conv_1, op.bn, slice(0, half))
                fold_bn_into_conv(op.conv_2, op.bn, slice(half, None))
                op.bn = nn.Identity()
            for conv_name, bn_name in _BN_PAIRS.get(type(op), []):
                fold_bn(op, conv_name, bn_name)
    if net.auxiliary_head is not None:
        fold_bn(net.auxiliary_head, 'proj', 'bn0')
        fold_bn(net.auxiliary_head, 'conv', 'bn1')


# --- max pool as elementwise maxima -----------------------------------------------------------------

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


def _step(dim: int, s: int):
    return (slice(None),) * dim + (slice(None, None, s),)


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
    fmt = memory_format_of(x)
    rows = torch.empty(n, c, h, wo, dtype=x.dtype, device=x.device, memory_format=fmt)
    _max_along(x, rows, 3, k, s, left)
    if out is None:
        out = torch.empty(n, c, ho, wo, dtype=x.dtype, device=x.device, memory_format=fmt)
    _max_along(rows, out, 2, k, s, top)
    return out


# --- convolutions -----------------------------------------------------------------------------------

class ConvRunner:
    """Runs the engine's convolutions, and holds what it derives for them: oneDNN-packed copies
    of each conv's weight, by input shape. Derived data, never copied or saved (an opaque oneDNN
    tensor cannot be); rebuilt on first use, and when a weight changes (in place or replaced).

    ``observer``, if set, is called as ``observer(conv, seconds)`` after each convolution (with
    the device synchronised), for benchmark.py's split of a forward by kind of conv."""

    def __init__(self):
        self._packed: Dict[int, dict] = {}
        self.observer: Optional[Callable[[nn.Conv2d, float], None]] = None

    def __deepcopy__(self, memo):
        return ConvRunner()

    def _packed_weight(self, conv: nn.Conv2d, x: torch.Tensor, pad, strides):
        cache = self._packed.setdefault(id(conv), {})
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

    def __call__(self, conv: nn.Conv2d, x: torch.Tensor, relu: bool = False,
                 add_to: Optional[torch.Tensor] = None, stride: Optional[int] = None) -> torch.Tensor:
        """``conv(x)``, then ``add_to += that`` in place if given, then ReLU if ``relu``;
        ``stride`` overrides the conv's (for an input that was subsampled already)."""
        if self.observer is None:
            return self._run(conv, x, relu, add_to, stride)
        _synchronize(x)
        start = time.perf_counter()
        out = self._run(conv, x, relu, add_to, stride)
        _synchronize(out)
        self.observer(conv, time.perf_counter() - start)
        return out

    def _run(self, conv, x, relu, add_to, stride):
        strides = tuple(conv.stride) if stride is None else (stride, stride)
        dtype = onednn_dtype(x, conv.weight)
        if dtype is not None and add_to is not None and add_to.dtype != dtype:
            dtype = None
        if dtype is not None and x.dtype != dtype:
            x = x.to(dtype)
        if isinstance(conv, Conv2dSame):
            x, pad = pad_for_same(x, conv.kernel_size, strides, conv.dilation, conv.pad_mode)
        else:
            pad = conv.padding
        if dtype is not None:
            if not (x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous()):
                x = x.contiguous(memory_format=torch.channels_last)  # faster here than inside the op
            w, b = self._packed_weight(conv, x, pad, strides)
            if add_to is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, w, b, list(pad), list(strides), list(conv.dilation), conv.groups,
                    'relu' if relu else 'none', [], '')
            return torch.ops.mkldnn._convolution_pointwise_.binary(
                add_to, x, w, b, list(pad), list(strides), list(conv.dilation), conv.groups,
                'add', 1.0, 'relu' if relu else None, [], None)
        y = F.conv2d(x, conv.weight, conv.bias, strides, pad, conv.dilation, conv.groups)
        return finish(y, add_to, relu, owned=True)


def _synchronize(x: torch.Tensor) -> None:
    if x.device.type == 'cuda':
        torch.cuda.synchronize(x.device)


def finish(h: torch.Tensor, add_to: Optional[torch.Tensor], relu: bool, owned: bool = False) -> torch.Tensor:
    """The tail of an op that did not end in a fused conv: ``add_to += h``, then ReLU. ``owned``
    says ``h`` is a fresh tensor that may be rectified in place."""
    if add_to is not None:
        h = add_to.add_(h)
        owned = True
    if relu:
        h = h.relu_() if owned else F.relu(h)
    return h


# --- the ops, by type -------------------------------------------------------------------------------

def reads_rectified(op: nn.Module) -> bool:
    """Whether the op begins with a ReLU of its input (which the cell then computes once)."""
    return isinstance(op, (SepConv, DilConv, Conv7x1x1x7)) or (isinstance(op, SkipConnect) and op.project)


def ends_in_conv(op: nn.Module) -> bool:
    """Whether the op's last step is a conv (BN folded), which can add onto a tensor in place."""
    return isinstance(op, (SepConv, DilConv, Conv7x1x1x7)) or (
        isinstance(op, (Pool, SkipConnect)) and op.project)


def run_op(conv: ConvRunner, op: nn.Module, x: torch.Tensor, add_to: Optional[torch.Tensor] = None,
           relu: bool = False) -> torch.Tensor:
    """One op of a cell, BN folded. ``x`` is the op's rectified input where ``reads_rectified``,
    the pool's output for Pool (the cell shares pools), the raw input otherwise; the result is
    added onto ``add_to`` and rectified if asked."""
    if isinstance(op, SepConv):
        x = conv(op.pointwise1, conv(op.depthwise1, x), relu=True)
        return conv(op.pointwise2, conv(op.depthwise2, x), relu=relu, add_to=add_to)
    if isinstance(op, DilConv):
        return conv(op.pointwise, conv(op.depthwise, x), relu=relu, add_to=add_to)
    if isinstance(op, Conv7x1x1x7):
        return conv(op.conv_7x1, conv(op.conv_1x7, x), relu=relu, add_to=add_to)
    if isinstance(op, (Pool, SkipConnect)):
        if op.project:
            return conv(op.conv, x, relu=relu, add_to=add_to)
        return finish(x, add_to, relu)
    if isinstance(op, Zero):
        return finish(op(x), add_to, relu, owned=True)
    raise TypeError(f'engine: no fused form for op {type(op).__name__}')


def factorized_reduce(conv: ConvRunner, op: FactorizedReduce, x: torch.Tensor) -> torch.Tensor:
    """FactorizedReduce on a rectified ``x``, without padding the input: on an odd size, the
    second path's last row and column read only TF's zero padding, so they are its folded bias."""
    h, w = x.shape[-2:]
    first = conv(op.conv_1, x)
    if not (h % 2 or w % 2):
        return torch.cat([first, conv(op.conv_2, x[:, :, 1::2, 1::2], stride=1)], dim=1)
    n, half, ho, wo = first.shape
    # a 1-pixel side leaves the second path nothing but padding; otherwise it reads the odd
    # rows and columns, gathered first (a quarter of x) for a stride-1 conv
    second = (conv(op.conv_2, x[:, :, 1::2, 1::2], stride=1) if h > 1 and w > 1
              else first.new_empty(n, half, 0, 0))
    out = torch.empty(n, 2 * half, ho, wo, dtype=first.dtype, device=first.device,
                      memory_format=memory_format_of(first))
    out[:, :half].copy_(first)
    rest = out[:, half:]
    rest[:, :, :second.shape[2], :second.shape[3]].copy_(second)
    edge = (op.conv_2.bias if op.conv_2.bias is not None else first.new_zeros(half))
    edge = edge.to(out.dtype).view(1, half, 1, 1)
    rest[:, :, second.shape[2]:, :].copy_(edge.expand_as(rest[:, :, second.shape[2]:, :]))
    rest[:, :, :, second.shape[3]:].copy_(edge.expand_as(rest[:, :, :, second.shape[3]:]))
    return out


def preprocess(conv: ConvRunner, op: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A cell's input projection on its rectified input."""
    if isinstance(op, FactorizedReduce):
        return factorized_reduce(conv, op, x)
    return conv(op.conv, x)  # ReLUConvBN


# --- the cell plan ----------------------------------------------------------------------------------

class _State:
    """A tensor of the engine as computed (``raw``), rectified (``rect``), or both."""
    __slots__ = ('raw', 'rect')

    def __init__(self, raw: Optional[torch.Tensor] = None, rect: Optional[torch.Tensor] = None):
        self.raw, self.rect = raw, rect

    def relu(self) -> torch.Tensor:
        if self.rect is None:
            self.rect = F.relu(self.raw)
        return self.rect

    def get_raw(self) -> torch.Tensor:
        if self.raw is None:  # CellPlan keeps raw every state that an op reads raw
            raise RuntimeError('inference engine: a state was kept rectified but is read raw')
        return self.raw


Step = collections.namedtuple('Step', 'first second accumulate owned')


class CellPlan:
    """How the engine runs one cell. ``rectify_output``: every reader of the cell's output takes
    its ReLU, so the cell may hand over ReLU(output) only. A combination is stored rectified when
    nobody needs it raw: then its last conv applies the ReLU as a post-op.

    Per combination: run ``first``, then ``second``; ``accumulate``: second's last conv adds onto
    first's result in a dense tensor (needed by a state that later ops of the cell read, or that
    is not concatenated), else the two results are added into the concat slice."""

    def __init__(self, cell: Cell, rectify_output: bool):
        self.cell = cell
        self.rectify_output = rectify_output
        ops, indices = cell.ops, cell.indices
        raw_readers = {index for op, index in zip(ops, indices) if not reads_rectified(op)}
        self.rect = {s: s not in raw_readers and (rectify_output or s not in cell.concat)
                     for s in range(2, 2 + cell.steps)}
        uses = collections.Counter(self.pool_key(j) for j, op in enumerate(ops) if isinstance(op, Pool))
        self.shared_pools = {key for key, n in uses.items() if n > 1}
        self.steps: List[Step] = []
        for i in range(cell.steps):
            ja, jb = 2 * i, 2 * i + 1
            conv_ends = [j for j in (jb, ja) if ends_in_conv(ops[j])]
            first, second = (ja, jb) if not conv_ends or conv_ends[0] == jb else (jb, ja)
            accumulate = bool(conv_ends) and (2 + i in indices or 2 + i not in cell.concat)
            self.steps.append(Step(first, second, accumulate, accumulate and self._owns_result(first)))

    def pool_key(self, j: int) -> Tuple[int, str, int]:
        op = self.cell.ops[j]
        return (self.cell.indices[j], op.kind, op.pool.stride)

    def _owns_result(self, j: int) -> bool:
        """Whether op ``j`` returns a fresh tensor that nothing else holds (may be added onto)."""
        op = self.cell.ops[j]
        if isinstance(op, Pool) and not op.project:
            return self.pool_key(j) not in self.shared_pools
        return ends_in_conv(op) or isinstance(op, Zero)

    def _pool(self, j: int, states: list, pools: dict) -> torch.Tensor:
        """The pool of op ``j``, computed once per cell."""
        key = self.pool_key(j)
        if key not in pools:
            op, x = self.cell.ops[j], states[key[0]].get_raw()
            if op.kind == 'max':
                pools[key] = max_pool_same(x, op.pool.kernel_size, op.pool.stride, op.pool.pad_mode)
            else:
                pools[key] = op.pool(x)
        return pools[key]

    def _run(self, conv: ConvRunner, j: int, states: list, pools: dict, add_to=None, relu=False):
        op, state = self.cell.ops[j], states[self.cell.indices[j]]
        if isinstance(op, Pool):
            x = self._pool(j, states, pools)
        else:
            x = state.relu() if reads_rectified(op) else state.get_raw()
        return run_op(conv, op, x, add_to, relu)

    def __call__(self, conv: ConvRunner, s0: Optional[_State], s1: _State) -> _State:
        """The cell's eval forward: a combination that only the next cells read is added, and
        rectified where every reader would rectify it, in one pass that writes its slice of the
        concat buffer. One that later ops of this cell read is summed in a dense tensor of its
        own, the second op's last conv adding onto the first op's result in place with the ReLU
        as oneDNN post-ops, then copied into its slice."""
        cell = self.cell
        if cell.preprocess0 is None:
            st0 = s1
        elif isinstance(cell.preprocess0, nn.Identity):
            st0 = s0
        else:
            st0 = _State(raw=preprocess(conv, cell.preprocess0, s0.relu()))
        st1 = _State(raw=preprocess(conv, cell.preprocess1, s1.relu()))
        states = [st0, st1]
        ref = st1.raw
        n, _, h, w = ref.shape
        stride = 2 if cell.reduction else 1
        fmt = memory_format_of(ref)
        buf = torch.empty(n, cell.C * len(cell.concat), -(-h // stride), -(-w // stride),
                          dtype=ref.dtype, device=ref.device, memory_format=fmt)
        slices = {i: buf[:, k * cell.C:(k + 1) * cell.C] for k, i in enumerate(cell.concat)}
        pools = {}
        for i, step in enumerate(self.steps):
            rect, dst = self.rect[2 + i], slices.get(2 + i)
            if step.accumulate:
                # oneDNN adds onto a dense tensor only (onto a slice PyTorch falls back to conv,
                # then add): the first op's result, own or copied, takes the second op's conv
                partial = self._run(conv, step.first, states, pools)
                if not step.owned:
                    partial = partial.clone(memory_format=fmt)
                out = self._run(conv, step.second, states, pools, add_to=partial, relu=rect)
                if dst is not None:
                    dst.copy_(out)
            else:
                a = self._run(conv, step.first, states, pools)
                b = self._run(conv, step.second, states, pools)
                if rect and dst is not None and dst.dtype == torch.float32 and cpu_kernels(dst):
                    # one pass; aten has this kernel for the CPU (float32) only, not for CUDA
                    out = torch.ops.aten._add_relu.out(a, b, out=dst)
                else:
                    out = torch.add(a, b) if dst is None else torch.add(a, b, out=dst)
                    if rect:
                        out.relu_()
            states.append(_State(rect=out) if rect else _State(raw=out))
        if self.rectify_output:  # combinations that were read raw are rectified last
            for i in cell.concat:
                if not self.rect[i]:
                    slices[i].relu_()
            return _State(rect=buf)
        return _State(raw=buf)


# --- the model --------------------------------------------------------------------------------------

class InferenceModel(nn.Module):
    """A converted network made fast for inference; ``net`` itself is left as it is.

    Its BatchNorms are folded (its state dict has no BatchNorm entries), its weights frozen and,
    with ``channels_last``, stored channels_last: feed inputs in ``memory_format``. ``engine``
    (default) runs forwards through the cell plans; without it the folded network runs its own
    forward. ``compile``: ``extract_features`` goes through ``torch.compile`` (inductor, with
    freezing on the CPU, so weights become constants with prepacked oneDNN convolutions); the
    first call compiles, and each new input shape again; call it under ``torch.inference_mode()``.
    In a process that imported TensorFlow first, torch.compile crashes in triton's native
    library: build a compiled model before importing TensorFlow.

    ``forward`` returns the logits like the network in eval mode; ``extract_features``,
    ``forward_features`` and ``forward_head`` are the network's. Forward hooks on its cells see
    nothing: the plans call no cell.
    """

    def __init__(self, net: NetworkImageNet, channels_last: bool = True, engine: bool = True,
                 compile: bool = False):
        super().__init__()
        net = copy.deepcopy(net).eval()
        fold_batch_norms(net)
        net.requires_grad_(False)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        net.to(memory_format=self.memory_format)
        self.net = net
        self.config = net.config
        self.num_features = net.num_features
        self.engine = engine
        self.conv = ConvRunner()
        cells = list(net.cells)
        self.plans: List[CellPlan] = []
        for k, cell in enumerate(cells):
            # readers of cell k: cell k+1's preprocess1 and the final ReLU always rectify; cell
            # k+2's preprocess0 does unless it passes its input through untouched
            raw_reader = k + 2 < len(cells) and isinstance(cells[k + 2].preprocess0, nn.Identity)
            self.plans.append(CellPlan(cell, rectify_output=not raw_reader))
        # torch.compile traces the folded network's own forward, and fuses it itself
        self.compiled = (torch.compile(net.forward_features, options=_compile_options(net))
                         if compile else None)
        self.eval()

    def train(self, mode: bool = True) -> 'InferenceModel':
        if mode:
            raise RuntimeError('InferenceModel is for inference only; train the network it was '
                               'made from')
        return super().train(False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last cell's output after the final ReLU: [N, num_features, h, w]."""
        if self.compiled is not None:
            return self.compiled(x)
        if not self.engine:
            return self.net.forward_features(x)
        s0, s1 = None, _State(raw=self.conv(self.net.conv0, x))
        for plan in self.plans:
            s0, s1 = s1, plan(self.conv, s0, s1)
        return s1.relu()

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Global-pool vector [N, num_features] (TF-Hub's feature_vector)."""
        return self.forward_features(x).mean(dim=(2, 3))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.extract_features(x))


def _compile_options(net: nn.Module) -> dict:
    """Inductor's freezing for CPU inference (weights as constants: prepacked oneDNN convs and
    fused post-ops); on other devices inductor's defaults."""
    on_cpu = next(net.parameters()).device.type == 'cpu'
    return {'freezing': True} if on_cpu else {}
