"""The inference engine (engine.InferenceModel): each fused piece equals the plain op it replaces,
and whole networks of every genotype give the plain model's logits."""
import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import engine
import model
import runtime
from engine import ConvRunner, max_pool_same
from genotypes import Genotype
from operations import Conv2dSame, FactorizedReduce, MaxPool2dSame

torch.manual_seed(0)


def channels_last(x):
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.quick
@pytest.mark.parametrize('mode', ['tf', 'symmetric'])
def test_max_pool_same_equals_max_pool2d_bit_for_bit(mode):
    for h in (1, 2, 3, 4, 11, 12, 41, 42):
        for w in (h, h + 1):
            for s in (1, 2):
                x = torch.randn(2, 5, h, w)
                ref = MaxPool2dSame(3, s, mode)(x)
                for inp in (x, channels_last(x)):
                    got = max_pool_same(inp, 3, s, mode)
                    assert got.shape == ref.shape and torch.equal(got, ref), (h, w, s, mode)
    # into a channel slice of a larger buffer, leaving the rest alone
    x = channels_last(torch.randn(2, 5, 12, 12))
    buf = channels_last(torch.full((2, 15, 6, 6), 7.0))
    max_pool_same(x, 3, 2, 'tf', out=buf[:, 5:10])
    assert torch.equal(buf[:, 5:10], MaxPool2dSame(3, 2)(x))
    assert (buf[:, :5] == 7).all() and (buf[:, 10:] == 7).all()


def _conv(C_in, C_out, k, stride, groups, cls=Conv2dSame):
    conv = cls(C_in, C_out, k, stride, groups=groups, bias=True) if cls is Conv2dSame else \
        torch.nn.Conv2d(C_in, C_out, k, stride, groups=groups, bias=True)
    conv.requires_grad_(False)
    return conv.to(memory_format=torch.channels_last)


@pytest.mark.parametrize('k, groups, stride', [(1, 1, 1), (1, 1, 2), (3, 8, 2), (5, 8, 1), (7, 8, 2)])
def test_conv_runner_with_relu_and_in_place_add_into_a_slice(k, groups, stride):
    run_conv = ConvRunner()
    conv = _conv(8, 8, k, stride, groups, Conv2dSame if k > 1 else torch.nn.Conv2d)
    for size in (12, 13):
        x = channels_last(torch.randn(2, 8, size, size))
        with torch.inference_mode():
            ref = conv(x)
            out = run_conv(conv, x)
            assert (out - ref).abs().max() < 1e-5
            assert (run_conv(conv, x, relu=True) - F.relu(ref)).abs().max() < 1e-5
            buf = channels_last(torch.randn(2, 24, *ref.shape[2:]))
            before = buf.clone()
            res = run_conv(conv, x, relu=True, add_to=buf[:, 8:16])
            assert res.data_ptr() == buf[:, 8:16].data_ptr()
            assert (buf[:, 8:16] - F.relu(before[:, 8:16] + ref)).abs().max() < 1e-5
            assert torch.equal(buf[:, :8], before[:, :8]) and torch.equal(buf[:, 16:], before[:, 16:])
            # the unfused fallback (autocast takes it) computes the same
            with torch.autocast('cpu', dtype=torch.bfloat16):
                low = run_conv(conv, x, relu=True)
            assert low.dtype == torch.bfloat16
            assert (low.float() - F.relu(ref)).abs().max() < 0.05 * max(1.0, ref.abs().max().item())


def test_packed_weights_follow_weight_changes_and_do_not_break_copies():
    run_conv = ConvRunner()
    conv = _conv(8, 16, 1, 1, 1, torch.nn.Conv2d)
    x = channels_last(torch.randn(2, 8, 9, 9))
    with torch.inference_mode():
        first = run_conv(conv, x)
    assert (first - conv(x)).abs().max() < 1e-5
    conv.weight.mul_(2)  # in place, as load_state_dict does
    with torch.inference_mode():
        again = run_conv(conv, x)
        assert (again - conv(x)).abs().max() < 1e-5 and (again - first).abs().max() > 0.1
        twin = copy.deepcopy(run_conv)  # a oneDNN tensor cannot be deep-copied: nor is the cache
        assert (twin(copy.deepcopy(conv), x) - again).abs().max() == 0
    conv.load_state_dict({'weight': torch.zeros_like(conv.weight), 'bias': torch.ones(16)})
    with torch.inference_mode():
        assert (run_conv(conv, x) - 1).abs().max() == 0


@pytest.mark.parametrize('h, w', [(12, 12), (13, 13), (12, 13), (13, 12), (1, 1)])
def test_factorized_reduce_fused_equals_its_forward(h, w):
    fr = FactorizedReduce(6, 9).eval()  # odd width: 2 x 4 channels, as TF's int(9 / 2)
    for m in fr.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            m.bias.data.normal_()
    x = torch.randn(2, 6, h, w)
    with torch.inference_mode():
        ref = fr(x)
        half = fr.C_out // 2
        engine.fold_bn_into_conv(fr.conv_1, fr.bn, slice(0, half))
        engine.fold_bn_into_conv(fr.conv_2, fr.bn, slice(half, None))
        fr.to(memory_format=torch.channels_last)
        got = engine.factorized_reduce(ConvRunner(), fr, F.relu(channels_last(x)))
    assert got.shape == ref.shape and (got - ref).abs().max() < 1e-5


def randomize_bn(net):
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2)
            m.running_mean.normal_(0, 0.1)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return net


# a cell that reads concatenated combinations raw (pool, skip) and uses 'none', dilated and
# 7x1/1x7 convs; with one concatenated state its width equals C, so the cell two ahead passes its
# input through untouched and the engine must keep some cell outputs raw
ODD = Genotype(
    normal=[('max_pool_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 2), ('avg_pool_3x3', 2),
            ('dil_conv_3x3', 3), ('none', 1), ('conv_7x1_1x7', 1), ('max_pool_3x3', 4)],
    normal_concat=[2, 3, 5], reduce=[('max_pool_3x3', 0), ('dil_conv_5x5', 1), ('avg_pool_3x3', 1),
                                     ('skip_connect', 2), ('sep_conv_7x7', 0), ('max_pool_3x3', 3),
                                     ('skip_connect', 0), ('max_pool_3x3', 1)],
    reduce_concat=[4, 5])
NARROW = Genotype(normal=ODD.normal, normal_concat=[5], reduce=ODD.reduce, reduce_concat=[5])


@pytest.mark.parametrize('genotype', ['PNASNet', 'NASNet', 'AmoebaNet', 'DARTS_V1', 'DARTS_V2',
                                      ODD, NARROW])
def test_engine_gives_the_plain_models_logits_for_every_genotype(genotype):
    # 9 cells: three normal cells in a row, so that NARROW's third one passes its input through
    config = model.PNASNetConfig.mobile(genotype=genotype, num_conv_filters=10, num_cells=9)
    net = randomize_bn(model.NetworkImageNet(config).eval())
    fast = engine.InferenceModel(net)
    assert fast.engine and len(fast.plans) == len(net.cells)
    if genotype is NARROW:  # some cell feeds an untouched input: its output stays raw
        assert any(isinstance(cell.preprocess0, torch.nn.Identity) for cell in net.cells)
        assert not all(plan.rectify_output for plan in fast.plans)
    for size, n, fmt in ((64, 2, torch.channels_last), (67, 1, torch.channels_last),
                         (70, 3, torch.contiguous_format)):
        x = torch.randn(n, 3, size, size + 3)
        with torch.inference_mode():
            ref, feats = net(x), net.extract_features(x)
            got = fast(x.contiguous(memory_format=fmt))
            got_feats = fast.extract_features(x.contiguous(memory_format=fmt))
        assert (got - ref).abs().max() < 1e-5, (genotype, size)
        assert (got_feats - feats).abs().max() < 1e-5
    unfused = engine.InferenceModel(net, engine=False)
    with torch.inference_mode():
        assert (unfused(x) - ref).abs().max() < 1e-5


def test_engine_under_bf16_autocast_stays_close_and_the_model_is_inference_only():
    net = randomize_bn(model.NetworkImageNet(model.PNASNetConfig.mobile(num_conv_filters=10)).eval())
    fast = engine.InferenceModel(net)
    x = channels_last(torch.randn(2, 3, 96, 96))
    with torch.inference_mode():
        ref = net(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = fast(x).float()
    assert 0 < (low - ref).abs().max() < 0.05 * max(1.0, ref.abs().max().item())
    assert low.argmax(1).tolist() == ref.argmax(1).tolist()
    with pytest.raises(RuntimeError, match='inference only'):
        fast.train()
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    # the network it was made from is left as it is
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert all(p.requires_grad for p in net.parameters())


def test_onednn_path_is_taken_for_float32_and_bf16_autocast_cpu_inference():
    conv = _conv(8, 8, 1, 1, 1, torch.nn.Conv2d)
    x = channels_last(torch.randn(1, 8, 5, 5))
    with torch.inference_mode():
        assert engine.onednn_dtype(x, conv.weight) == (torch.float32 if engine._ONEDNN else None)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            expected = torch.bfloat16 if engine._ONEDNN_BF16 else None
            assert engine.onednn_dtype(x, conv.weight) == expected
            assert ConvRunner()(conv, x).dtype == torch.bfloat16
        with torch.autocast('cpu', dtype=torch.float16):
            assert engine.onednn_dtype(x, conv.weight) is None
    assert engine.onednn_dtype(x.double(), conv.weight) is None
    x.requires_grad_(True)
    assert engine.onednn_dtype(x, conv.weight) is None


COMPILE_CHECK = """
import copy, sys, torch
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import engine, model
from test_engine import channels_last, randomize_bn
torch.manual_seed(0)
net = randomize_bn(model.NetworkImageNet(
    model.PNASNetConfig.mobile(num_conv_filters=8, num_cells=1)).eval())
compiled = engine.InferenceModel(net, compile=True)
x = channels_last(torch.randn(2, 3, 40, 40))
with torch.inference_mode():
    ref, got = net.extract_features(x), compiled.extract_features(x)
import torch._inductor.config as inductor_config
print(tuple(got.shape) == tuple(ref.shape), (got - ref).abs().max().item(), inductor_config.freezing)
"""


def test_compiled_inference_model_gives_the_plain_models_features():
    """A real inductor compile with freezing, of a one-cell network; inductor compiles the folded
    network's own forward and fuses it itself. In a fresh
    interpreter: inductor's triton import crashes a process that loaded TensorFlow first."""
    tests = os.path.dirname(os.path.abspath(__file__))
    script = COMPILE_CHECK.format(root=os.path.dirname(tests), tests=tests)
    run = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    same_shape, diff, freezing = run.stdout.split()[-3:]
    # freezing is an option of this compile, not a global setting left behind
    assert same_shape == 'True' and freezing == 'False' and float(diff) < 1e-5


@pytest.mark.quick
def test_fast_path_gives_the_plain_models_logits(small_checkpoint, tmp_path):
    """InferenceModel (BN folded, shared ReLUs and pools, channels_last) stays within 1e-4 of the
    converted model, at sizes where TF pads symmetrically and where it does not."""
    import convert
    import tf_reference
    out = str(tmp_path / 'small.pth')
    convert.convert(small_checkpoint['prefix'], out, check=False, log=lambda *a: None)
    plain = model.load_pretrained(out)
    fast = engine.InferenceModel(plain)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    for size in (224, 225, 299, 331):
        _, x = tf_reference.check_images(size, seed=size)
        with torch.no_grad():
            a, b = plain(x), fast(x.contiguous(memory_format=fast.memory_format))
            fa, fb = plain.extract_features(x), fast.extract_features(x)
        assert 0.2 < a.abs().max() < 10
        d = (a - b).abs().max().item()
        print(f'fast vs plain at {size}px: max|d logits| = {d:.2e}')
        assert d < 1e-4 and (fa - fb).abs().max().item() < 1e-4 * max(1.0, fa.abs().max().item())


@pytest.mark.parametrize('avx512_bf16, amx, onednn_bf16, native', [
    (False, False, True, False),   # AVX-512 without AVX512_BF16 (Skylake-X): oneDNN emulates bf16
    (True, False, True, True),     # AVX512_BF16 (Cooper Lake, Zen 4)
    (False, True, True, True),     # AMX (Sapphire Rapids)
    (True, True, False, False),    # ONEDNN_MAX_CPU_ISA caps oneDNN below bf16
    (False, False, False, False),  # AVX2 only
])
def test_native_bf16_is_decided_by_what_the_cpu_has(monkeypatch, avx512_bf16, amx, onednn_bf16, native):
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: amx)
    monkeypatch.setattr(torch.ops.mkldnn, '_is_mkldnn_bf16_supported', lambda: onednn_bf16)
    assert runtime.cpu_has_native_bf16() is native
