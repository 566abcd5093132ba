"""Every op that main.py's paths and a training step call has a CUDA kernel, audited without a GPU.

With oneDNN disabled, a CPU run takes the branch that a CUDA run takes: the engine's CPU-only
kernels (oneDNN's fused convolutions, aten's ``_add_relu``) are used only where
``engine.cpu_kernels`` allows them, and it allows them on the CPU with oneDNN enabled alone.
Each run records every aten op under a ``TorchDispatchMode``; each op must have a CUDA kernel or
a composite one (composite kernels run on every backend).

What the CPU stands in for: CPU autocast casts the same convolutions and matmuls to bf16/fp16 as
CUDA autocast; the two differ in which of the other ops they keep in fp32, which changes only
the dtype an op runs in and adds casts (``aten._to_copy``), both of which CUDA has. A kernel is
checked per op, not per dtype.
"""
import contextlib
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

import main
import model

PORTABLE_KEYS = ('CUDA', 'CompositeExplicitAutograd', 'CompositeExplicitAutogradNonFunctional',
                 'CompositeImplicitAutograd')


class OpRecorder(TorchDispatchMode):
    """Records every op dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func)
        return func(*args, **(kwargs or {}))


def has_cuda_kernel(op) -> bool:
    return any(torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), key) for key in PORTABLE_KEYS)


def without_cuda_kernel(ops) -> list:
    return sorted(str(op) for op in ops if not has_cuda_kernel(op))


@contextlib.contextmanager
def cuda_branch():
    """oneDNN off: the CPU takes the code path that CUDA takes."""
    saved = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = saved


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """A small Mobile-shaped weights file (aux head included) and a two-class wnid folder."""
    root = tmp_path_factory.mktemp('cuda_audit')
    torch.manual_seed(0)
    net = model.NetworkImageNet(model.PNASNetConfig.mobile(num_conv_filters=10, auxiliary=True))
    with torch.no_grad():  # BN statistics away from their defaults, so folding does real work
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.normal_(0, 0.1)
    weights = root / 'small.pth'
    torch.save({'config': net.config.to_dict(), 'state_dict': net.state_dict()}, weights)
    rng = np.random.default_rng(0)
    for wnid, (h, w) in (('n01440764', (150, 200)), ('n01443537', (181, 163))):
        (root / 'val' / wnid).mkdir(parents=True)
        for j in range(2):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / 'val' / wnid / f'img{j}.JPEG')
    return {'weights': str(weights), 'valdir': str(root / 'val'), 'root': root}


def main_ops(setup, plain: bool, precision: str, onednn: bool = False) -> set:
    """The ops of main.py's model loading, batched evaluation (with features) and --image."""
    argv = ['--valdir', setup['valdir'], '--weights', setup['weights'], '--workers', '0',
            '--batch-size', '3', '--no-progress', '--precision', precision,
            '--features', str(setup['root'] / 'f.npy')] + (['--plain'] if plain else [])
    args = main.parse_args(argv)
    device = torch.device('cpu')
    samples, _, _ = main.utils.find_images(args.valdir)
    recorder = OpRecorder()
    branch = contextlib.nullcontext() if onednn else cuda_branch()
    with branch, recorder, contextlib.redirect_stdout(io.StringIO()):
        net = main.load_model(args.weights, device, plain)
        args.image_size = net.config.image_size
        out = main.evaluate(net, samples, args, device)
        main.classify_images(net, [samples[0][0]], args, device)
    assert len(out['records']) == len(samples) and out['features'][1].shape == (4, net.num_features)
    return recorder.ops


@pytest.mark.parametrize('plain', [False, True], ids=['engine', 'plain'])
@pytest.mark.parametrize('precision', ['fp32', 'fp16', 'bf16'])
def test_every_op_of_main_py_has_a_cuda_kernel(setup, plain, precision):
    ops = main_ops(setup, plain, precision)
    names = {str(op) for op in ops}
    assert names & {'aten.conv2d.default', 'aten.convolution.default'}
    assert names & {'aten.linear.default', 'aten.addmm.default'}
    assert without_cuda_kernel(ops) == []


@pytest.mark.quick
def test_the_audit_sees_the_cpu_only_kernels_of_the_onednn_branch(setup):
    """The same run with oneDNN on takes CPU-only kernels, and the audit names them: it can fail."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_convolution_pointwise')):
        pytest.skip('this PyTorch has no oneDNN fused convolution')
    missing = without_cuda_kernel(main_ops(setup, plain=False, precision='fp32', onednn=True))
    assert 'aten._add_relu.out' in missing
    assert 'mkldnn._convolution_pointwise.default' in missing
    assert not has_cuda_kernel(torch.ops.aten._add_relu.out)
    assert has_cuda_kernel(torch.ops.aten.add.Tensor)


@pytest.mark.parametrize('precision,optimizer', [('fp32', 'rmsprop'), ('bf16', 'sgd'), ('fp16', 'rmsprop')])
def test_train_py_step_has_cuda_kernels(precision, optimizer):
    """What train.py runs per step: train mode, drop path, the aux head, label smoothing, backward,
    L2, clipping, the optimizer (TF's RMSProp or SGD), fp16's grad scaler and the EMA update."""
    import train
    torch.manual_seed(1)
    net = model.NetworkImageNet(model.PNASNetConfig.mobile(num_conv_filters=10, auxiliary=True,
                                                           drop_path_prob=0.3)).train()
    net = net.to(memory_format=torch.channels_last)
    args = train.parse_args(['--data', '-', '--optimizer', optimizer, '--precision', precision])
    train.fill_defaults(args)
    optimizer = train.make_optimizer(train.param_groups(net, args.weight_decay), args)
    scaler = torch.amp.GradScaler('cpu', enabled=precision == 'fp16')
    ema = train.EMA(net, 0.9)
    x = torch.randn(2, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([3, 7])
    recorder = OpRecorder()
    with cuda_branch(), recorder:
        for _ in range(2):  # the second step reads the optimizer state the first one made
            train.train_step(net, optimizer, scaler, x, y, args)
            ema.update(net)
    names = {str(op) for op in recorder.ops}
    assert 'aten.convolution_backward.default' in names and 'aten.bernoulli_.float' in names
    assert net.auxiliary_head.conv.weight.grad is not None
    assert without_cuda_kernel(recorder.ops) == []
