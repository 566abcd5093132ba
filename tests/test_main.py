"""main.py end to end on a generated ImageNet-style folder, against the TF twin."""
import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import convert
import main
import runtime
import tf_reference
import utils
from conftest import free_port, within_tf_bound

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WNIDS = ['n01440764', 'n01443537', 'n15075141']  # classes 0, 1 and 999


def smooth_image(rng, h, w):
    coarse = rng.uniform(0, 255, (6, 6, 3))
    img = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.BILINEAR))
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def valdir(tmp_path_factory):
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp('imagenet') / 'val'
    sizes = [(180, 240), (300, 200), (257, 311), (224, 224)]
    for c, wnid in enumerate(WNIDS):
        os.makedirs(root / wnid)
        for j, (h, w) in enumerate(sizes[:3] if c else sizes):
            Image.fromarray(smooth_image(rng, h, w)).save(root / wnid / f'ILSVRC2012_val_{c}{j}.JPEG',
                                                          quality=90)
    odd = root / WNIDS[1]
    Image.fromarray(smooth_image(rng, 200, 260)).convert('L').save(odd / 'gray.JPEG')
    Image.fromarray(smooth_image(rng, 210, 190)).convert('CMYK').save(odd / 'cmyk.JPEG')
    Image.fromarray(smooth_image(rng, 190, 230)).save(odd / 'png_inside.JPEG', format='PNG')
    return str(root)


@pytest.fixture(scope='module')
def weights(small_checkpoint, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('weights') / 'small.pth')
    convert.convert(small_checkpoint['prefix'], out, check=False, log=lambda *a: None)
    return out


def run_main(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main.main(list(args) + ['--no-progress'])
    return status, out.getvalue(), err.getvalue()


def test_decoding_grayscale_cmyk_and_png_inside_jpeg(valdir):
    for name in ('gray.JPEG', 'cmyk.JPEG', 'png_inside.JPEG'):
        img = utils.load_rgb(os.path.join(valdir, WNIDS[1], name))
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


@pytest.mark.quick
def test_labels_come_from_the_canonical_wnid_list(valdir):
    samples, classes, how = utils.find_images(valdir)
    assert how == 'wnid' and classes == WNIDS
    assert {label for _, label in samples} == {0, 1, 999}
    assert len(samples) == 4 + 3 + 3 + 3


def test_main_matches_the_tf_twin_image_for_image(valdir, weights, small_checkpoint, tmp_path):
    result_path, feat_path = tmp_path / 'r.json', tmp_path / 'f.npy'
    status, out, _ = run_main('--valdir', valdir, '--weights', weights, '--batch-size', '4',
                              '--workers', '2', '--output', str(result_path), '--features', str(feat_path))
    assert status == 0
    result = json.loads(result_path.read_text())
    samples, _, _ = utils.find_images(valdir)
    images = np.stack([utils.preprocess_for_eval_tf(utils.load_rgb(p), 224, 224) for p, _ in samples])
    ref = tf_reference.run_checkpoint(small_checkpoint['prefix'], small_checkpoint['config'], images)
    ref_top5 = np.argsort(-ref['logits'][:, 1:], axis=1, kind='stable')[:, :5]
    labels = np.array([label for _, label in samples])
    assert [r['top5'] for r in result['per_image']] == ref_top5.tolist()
    assert [r['path'] for r in result['per_image']] == [p for p, _ in samples]
    p1 = float(np.mean(ref_top5[:, 0] == labels))
    p5 = float(np.mean([l in t for l, t in zip(labels, ref_top5)]))
    assert result['prec1'] == p1 and result['prec5'] == p5 and result['images'] == len(samples)
    assert out.strip().splitlines()[-1] == f'Test: [13/13]\tPrec@1 {p1:.3f}\tPrec@5 {p5:.3f}'
    feats = np.load(feat_path)
    assert feats.shape == (13, 200) and within_tf_bound(feats, ref['global_pool'])


def test_tf_and_numpy_preprocessing_agree(valdir, weights, tmp_path):
    results = {}
    for mode in ('numpy', 'tf'):
        path = tmp_path / f'{mode}.json'
        status, _, _ = run_main('--valdir', valdir, '--weights', weights, '--workers', '0',
                                '--preprocess', mode, '--output', str(path), '--features',
                                str(tmp_path / f'{mode}.npy'))
        assert status == 0
        results[mode] = json.loads(path.read_text())
    assert results['numpy']['per_image'] == results['tf']['per_image']
    assert np.array_equal(np.load(tmp_path / 'numpy.npy'), np.load(tmp_path / 'tf.npy'))


def test_torchrun_two_processes_give_the_same_totals(valdir, weights, tmp_path):
    status, single, _ = run_main('--valdir', valdir, '--weights', weights, '--workers', '0',
                                 '--output', str(tmp_path / 'one.json'))
    assert status == 0
    run = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                          f'--master_port={free_port()}', 'main.py', '--valdir', valdir, '--weights', weights,
                          '--workers', '0', '--batch-size', '3', '--device', 'cpu',
                          '--output', str(tmp_path / 'two.json'), '--no-progress'],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == single.strip().splitlines()[-1]
    one = json.loads((tmp_path / 'one.json').read_text())
    two = json.loads((tmp_path / 'two.json').read_text())
    assert two['settings']['processes'] == 2
    assert two['per_image'] == one['per_image'] and len(two['per_image']) == 13


@pytest.mark.quick
def test_limit_and_single_images(valdir, weights):
    status, out, _ = run_main('--valdir', valdir, '--weights', weights, '--workers', '0', '--limit', '5')
    assert status == 0 and out.strip().splitlines()[-1].startswith('Test: [5/5]\tPrec@1 ')
    image = os.path.join(valdir, WNIDS[1], 'cmyk.JPEG')
    status, out, _ = run_main('--weights', weights, '--image', image)
    lines = out.strip().splitlines()
    assert status == 0 and lines[0] == image and len(lines) == 6
    probs = [float(line.split()[0]) for line in lines[1:]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


@pytest.mark.quick
def test_bad_inputs_give_one_clear_message(valdir, weights, tmp_path):
    status, _, err = run_main('--valdir', str(tmp_path / 'nope'), '--weights', weights)
    assert status == 1 and 'no such folder' in err
    os.makedirs(tmp_path / 'empty')
    status, _, err = run_main('--valdir', str(tmp_path / 'empty'), '--weights', weights)
    assert status == 1 and 'no class folders' in err
    os.makedirs(tmp_path / 'named' / 'cats')
    status, _, err = run_main('--valdir', str(tmp_path / 'named'), '--weights', weights)
    assert status == 1 and "'cats' is not an ILSVRC-2012 wnid" in err
    status, _, err = run_main('--valdir', valdir, '--weights', str(tmp_path / 'none.pth'))
    assert status == 1 and 'convert.py' in err and 'Traceback' not in err
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'\xff\xd8 not really a JPEG')
    status, _, err = run_main('--weights', weights, '--image', str(broken))
    assert status == 1 and f'{broken}: cannot decode the image' in err and 'Traceback' not in err


@pytest.mark.parametrize('option, value', [('--batch-size', '0'), ('--image-size', '2'),
                                           ('--workers', '-1'), ('--limit', '0'),
                                           ('--limit', 'ten')])
def test_numeric_options_out_of_range_are_refused_before_any_work(option, value):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        main.parse_args([option, value])
    assert info.value.code == 2 and f'argument {option}: ' in err.getvalue()
    assert (f'{value} is below' in err.getvalue() or f"'{value}' is not a whole number" in err.getvalue())


def test_corrupt_image_stops_or_is_skipped(valdir, weights, tmp_path):
    import shutil
    bad_root = tmp_path / 'val'
    shutil.copytree(valdir, bad_root)
    good = (bad_root / WNIDS[0] / 'ILSVRC2012_val_00.JPEG').read_bytes()
    bad = bad_root / WNIDS[0] / 'ILSVRC2012_val_0zz.JPEG'
    bad.write_bytes(good[:len(good) // 3])
    status, _, err = run_main('--valdir', str(bad_root), '--weights', weights, '--workers', '1')
    assert status == 1 and str(bad) in err and '--skip-bad' in err
    status, out, _ = run_main('--valdir', str(bad_root), '--weights', weights, '--workers', '1',
                              '--skip-bad', '--output', str(tmp_path / 'r.json'))
    assert status == 0
    lines = out.strip().splitlines()
    assert f'skipped (cannot decode): {bad}' in lines and lines[-1].startswith('Test: [13/13]')
    assert json.loads((tmp_path / 'r.json').read_text())['skipped_bad'] == [str(bad)]


def test_compile_option_compiles_the_fast_path(valdir, weights, monkeypatch):
    """main.py --compile builds engine.InferenceModel(compile=True) (a real compile is tested in
    test_engine.py); here a stand-in for torch.compile records the call and compiles nothing."""
    calls = []

    def spy(fn, **kwargs):
        calls.append((getattr(fn, '__name__', ''), kwargs))
        return fn
    monkeypatch.setattr(torch, 'compile', spy)
    status, out, _ = run_main('--valdir', valdir, '--weights', weights, '--workers', '0',
                              '--limit', '4', '--compile', '--device', 'cpu')
    assert status == 0 and calls == [('forward_features', {'options': {'freezing': True}})]
    assert out.strip().splitlines()[-1].startswith('Test: [4/4]\tPrec@1 ')
    status, _, err = run_main('--valdir', valdir, '--weights', weights, '--compile', '--plain')
    assert status == 1 and '--compile compiles the fast path' in err


def test_low_precision_on_a_cpu_without_it_warns_once_and_runs_fp32(valdir, weights, tmp_path):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN see a CPU without native bf16, as AVX2-only CPUs are."""
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA='AVX2')
    run = subprocess.run([sys.executable, 'main.py', '--valdir', valdir, '--weights', weights,
                          '--workers', '0', '--limit', '3', '--device', 'cpu', '--precision', 'bf16',
                          '--no-progress', '--output', str(tmp_path / 'r.json')],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    warnings = [line for line in run.stderr.splitlines() if line.startswith('main.py: warning:')]
    assert len(warnings) == 1 and 'no native bfloat16' in warnings[0] and 'fp32' in warnings[0]
    assert json.loads((tmp_path / 'r.json').read_text())['settings']['precision'] == 'fp32'
    assert run.stdout.strip().splitlines()[-1].startswith('Test: [3/3]\tPrec@1 ')


@pytest.mark.parametrize('precision, native', [('bf16', True), ('bf16', False), ('fp16', False),
                                               ('fp32', False)])
@pytest.mark.quick
def test_resolve_precision_keeps_what_the_cpu_has(monkeypatch, precision, native):
    monkeypatch.setattr(runtime, 'cpu_has_native_bf16', lambda: native)
    monkeypatch.setattr(runtime, 'cpu_has_native_fp16', lambda: native)
    said = []
    got = runtime.resolve_precision(torch.device('cpu'), precision, warn=said.append)
    expected = precision if native or precision == 'fp32' else 'fp32'
    assert got == expected and len(said) == (expected != precision)
    assert runtime.resolve_precision(torch.device('cuda'), precision, warn=said.append) == precision


def test_cuda_settings_for_fast_exact_evaluation():
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    try:
        runtime.setup_cuda(allow_tf32=False)
        assert torch.backends.cudnn.benchmark is True
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        runtime.setup_cuda(allow_tf32=True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved
    assert main.parse_args([]).tf32 is False and main.parse_args(['--tf32']).tf32 is True


def test_single_image_path_gives_the_tf_twins_probabilities(valdir, weights, small_checkpoint):
    """main.py --image as TF-Slim evaluates one image: the 0.875 central crop, the resize to
    224, the network; its printed top-5 (class and probability) are the TF twin's."""
    image = os.path.join(valdir, WNIDS[0], sorted(os.listdir(os.path.join(valdir, WNIDS[0])))[0])
    status, out, _ = run_main('--weights', weights, '--image', image)
    assert status == 0
    x = utils.preprocess_for_eval_tf(utils.load_rgb(image), 224, 224)[None]
    ref = tf_reference.run_checkpoint(small_checkpoint['prefix'], small_checkpoint['config'], x)['logits'][0]
    probs = np.exp(ref - ref.max()) / np.exp(ref - ref.max()).sum()
    names = ['background'] + [name for _, name in utils.read_class_names()]
    printed = [line.split(None, 1) for line in out.strip().splitlines()[1:]]
    assert [label for _, label in printed] == [names[k] for k in np.argsort(-probs, kind='stable')[:5]]
    for (p, _), k in zip(printed, np.argsort(-probs, kind='stable')[:5]):
        assert abs(float(p) - probs[k]) <= 5e-5 + tf_reference.tf_tolerance(1.0), (p, probs[k])
