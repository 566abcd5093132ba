"""train.py on small generated ImageFolder trees: fine-tuning, freezing, resume, the recipe's
formulas, DDP wiring and every refused input."""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import convert
import genotypes
import main as main_mod
import model as model_mod
import train
from conftest import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = {'blue': (40, 60, 200), 'green': (40, 180, 60), 'red': (200, 40, 40)}
SMALL = ['--image-size', '64', '--batch-size', '8', '--workers', '0', '--no-progress']
SCRATCH = ['--preset', 'mobile', '--filters', '8', '--cells', '3'] + SMALL


def make_data(root, n_train=16, n_val=6, seed=0, colours=COLOURS):
    """A learnable task: the class is the image's dominant colour, under noise and sizes."""
    rng = np.random.default_rng(seed)
    for split, n in (('train', n_train), ('val', n_val)):
        for name, c in colours.items():
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for j in range(n):
                h, w = rng.integers(40, 80, 2)
                img = np.clip(np.array(c) + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(os.path.join(root, split, name, f'{j}.jpg'))
    return str(root)


def run_train(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = train.main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def weights(small_checkpoint, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('weights') / 'small.pth')
    convert.convert(small_checkpoint['prefix'], out, check=False, log=lambda *a: None)
    return out


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def test_fine_tuning_learns_and_best_pth_evaluates_with_main(tmp_path, weights):
    data = make_data(tmp_path / 'd', n_train=24, n_val=8)
    out = tmp_path / 'run'
    status, text, err = run_train('--data', data, '--output', out, '--weights', weights,
                                  '--epochs', 6, '--drop-path', 0, *SMALL)
    assert status == 0, err
    lines = text.strip().splitlines()
    assert lines[-1].startswith('Epoch 6/6  train loss ')
    assert 'classifier: new, for the 3 classes' in text
    assert 'aux head: does not fit 64 px' in text  # the log line says what happens to it
    log = [json.loads(line) for line in open(out / 'log.jsonl')]
    assert [r['epoch'] for r in log] == [1, 2, 3, 4, 5, 6]
    for key in ('train_loss', 'lr', 'drop_path', 'val_prec1', 'val_prec5', 'images_per_second'):
        assert all(r[key] is not None for r in log), key
    best = max(log, key=lambda r: r['val_prec1'])
    assert best['val_prec1'] >= 0.75  # chance is 1/3
    assert os.path.getsize(out / 'curves.png') > 1000
    for name in ('best.pth', 'last.pth'):
        load(out / name)  # weights_only=True reads every file written
    # best.pth: main.py labels the val folders by the class names it carries
    net = model_mod.load_pretrained(str(out / 'best.pth'))
    assert net.class_names == ['blue', 'green', 'red']
    printed = [l for l in lines if l.startswith('  best:')][-1]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert main_mod.main(['--valdir', os.path.join(data, 'val'), '--weights', str(out / 'best.pth'),
                              '--device', 'cpu', '--no-progress', '--batch-size', '5']) == 0
    final = stdout.getvalue().strip().splitlines()[-1]
    assert final.startswith('Test: [24/24]')
    assert f'Prec@1 {best["val_prec1"]:.3f}' in final and f'Prec@1 {best["val_prec1"]:.3f}' in printed
    # --image prints the weights' class names
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert main_mod.main(['--image', os.path.join(data, 'val', 'red', '0.jpg'), '--weights',
                              str(out / 'best.pth'), '--device', 'cpu']) == 0
    assert 'red' in stdout.getvalue() and 'n0' not in stdout.getvalue()


def test_freeze_body_leaves_every_body_weight_bit_identical(tmp_path, data, weights):
    out = tmp_path / 'run'
    status, _, err = run_train('--data', data, '--output', out, '--weights', weights,
                               '--epochs', 1, '--freeze-body', *SMALL)
    assert status == 0, err
    before = model_mod.read_weights(weights)['state_dict']
    after = load(out / 'last.pth')['model']
    body = [k for k in after if not k.startswith('classifier.')]
    assert body and all(torch.equal(after[k], before[k]) for k in body)  # BN statistics too
    assert after['classifier.weight'].shape == (3, 200)


def test_interrupted_and_resumed_equals_straight_through(tmp_path, data, monkeypatch):
    args = ['--data', data, '--epochs', 3, '--ema', 0.9, *SCRATCH]
    assert run_train(*args, '--output', tmp_path / 'straight')[0] == 0
    real_save, calls = train.save, []

    def save_then_stop(obj, path):  # Ctrl-C right after the first epoch's last.pth
        real_save(obj, path)
        if path.endswith('last.pth'):
            calls.append(path)
            raise KeyboardInterrupt
    monkeypatch.setattr(train, 'save', save_then_stop)
    status, _, err = run_train(*args, '--output', tmp_path / 'cut')
    assert status == 130 and '--resume' in err
    monkeypatch.setattr(train, 'save', real_save)
    status, text, err = run_train('--data', data, '--resume', tmp_path / 'cut' / 'last.pth',
                                  '--workers', 0, '--no-progress')
    assert status == 0, err
    assert 'resuming' in text and text.strip().splitlines()[-1].startswith('Epoch 3/3')
    a, b = load(tmp_path / 'straight' / 'last.pth'), load(tmp_path / 'cut' / 'last.pth')
    for part in ('model',):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    assert all(torch.equal(a['ema']['state_dict'][k], b['ema']['state_dict'][k]) for k in a['ema']['state_dict'])
    la = [json.loads(x) for x in open(tmp_path / 'straight' / 'log.jsonl')]
    lb = [json.loads(x) for x in open(tmp_path / 'cut' / 'log.jsonl')]
    assert [r['train_loss'] for r in la] == [r['train_loss'] for r in lb]


def test_drop_path_rate_per_cell_and_step_follows_tf_slim():
    net = model_mod.NetworkImageNet(model_mod.PNASNetConfig.mobile(num_conv_filters=8, num_cells=3))
    cells = len(net.cells)
    total = 100
    for step in (0, 25, 50, 100, 150):
        rate = train.drop_path_rate(0.4, step, total)
        ratio = min(1.0, step / total)
        assert rate == pytest.approx(0.4 * ratio)
        for k, cell in enumerate(net.cells):
            # TF-Slim: layer_ratio = (cell_num + 1) / total_num_cells; keep = 1 - ratio * (1 - keep_prob)
            keep_tf = 1 - ratio * ((k + 1) / cells * (1 - 0.6))
            assert 1 - rate * cell.drop_scale == pytest.approx(keep_tf)
    assert train.drop_path_rate(0.4, 0, total, fixed=True) == 0.4


def test_aux_loss_enters_with_weight_0_4():
    torch.manual_seed(0)
    logits, aux, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    total, main, aux_loss = train.losses((logits, aux), y, 0.1, 0.4)
    ce = torch.nn.functional.cross_entropy
    assert float(main) == pytest.approx(float(ce(logits, y, label_smoothing=0.1)))
    assert float(aux_loss) == pytest.approx(float(ce(aux, y, label_smoothing=0.1)))
    assert float(total) == pytest.approx(float(main + 0.4 * aux_loss))
    assert train.RECIPE['aux_weight'][0] == 0.4
    args = train.parse_args(['--data', 'x'])
    train.fill_defaults(args)
    assert args.aux_weight == 0.4 and args.label_smoothing == 0.1 and args.weight_decay == 4e-5


def test_rmsprop_matches_tensorflow(tf):
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(3, 4)).astype(np.float32)
    grads = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(5)]
    w = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = train.RMSpropTF([w], lr=0.01, decay=0.9, momentum=0.9, eps=1.0)
    for g in grads:
        w.grad = torch.from_numpy(g)
        opt.step()
    v = tf.Variable(w0)
    tf_opt = tf.compat.v1.train.RMSPropOptimizer(0.01, decay=0.9, momentum=0.9, epsilon=1.0)
    for g in grads:
        tf_opt.apply_gradients([(tf.constant(g), v)])
    np.testing.assert_allclose(w.detach().numpy(), v.numpy(), rtol=0, atol=1e-6)
    # and not torch's RMSprop, whose epsilon sits outside the root
    w2 = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt2 = torch.optim.RMSprop([w2], lr=0.01, alpha=0.9, momentum=0.9, eps=1.0)
    for g in grads:
        w2.grad = torch.from_numpy(g)
        opt2.step()
    assert np.abs(w2.detach().numpy() - v.numpy()).max() > 1e-3


def test_lr_schedules():
    args = train.parse_args(['--data', 'x', '--warmup-epochs', '1'])
    train.fill_defaults(args)
    assert [train.lr_factor(s, 10, args) for s in (0, 9)] == [0.1, 1.0]
    assert train.lr_factor(10 + 23, 10, args) == 1.0 and train.lr_factor(10 + 24, 10, args) == 0.97
    args.schedule = 'cosine'
    assert train.lr_factor(10 + 45, 10, args) == pytest.approx(0.5)


def test_torchrun_two_processes_write_one_set_of_files(tmp_path, data):
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
           str(free_port()), os.path.join(ROOT, 'train.py'), '--data', data, '--output', str(out),
           '--epochs', '1', '--device', 'cpu'] + SCRATCH
    env = dict(os.environ, OMP_NUM_THREADS='1')
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    # the ranks' own errors come first, torchrun's summary last: show both
    assert p.returncode == 0, p.stderr[:3000] + '\n...\n' + p.stderr[-1500:]
    assert p.stdout.count('Epoch 1/1') == 1  # rank 0 alone prints
    assert sorted(os.listdir(out)) == ['best.pth', 'curves.png', 'last.pth', 'log.jsonl']
    record = json.loads(open(out / 'log.jsonl').read())
    assert record['train_images'] == 48  # 2 processes x 3 steps x batch 8
    assert 'batch 8 x 2' in p.stdout


def bad(tmp_path, *args):
    status, text, err = run_train(*args)
    lines = err.strip().splitlines()
    assert status == 1 and len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


@pytest.mark.quick
def test_bad_inputs_get_one_line_and_exit_1(tmp_path, data, weights):
    missing = tmp_path / 'nothing'
    assert 'no such folder' in bad(tmp_path, '--data', missing, '--output', tmp_path / 'o', *SCRATCH)
    no_val = tmp_path / 'noval'
    shutil.copytree(os.path.join(data, 'train'), no_val / 'train')
    assert 'no val/ folder' in bad(tmp_path, '--data', no_val, '--output', tmp_path / 'o', *SCRATCH)
    empty = tmp_path / 'empty'
    shutil.copytree(data, empty)
    shutil.rmtree(empty / 'val' / 'red')
    os.makedirs(empty / 'val' / 'red')
    assert 'an empty class folder' in bad(tmp_path, '--data', empty, '--output', tmp_path / 'o', *SCRATCH)
    differ = tmp_path / 'differ'
    shutil.copytree(data, differ)
    shutil.move(str(differ / 'val' / 'red'), str(differ / 'val' / 'yellow'))
    line = bad(tmp_path, '--data', differ, '--output', tmp_path / 'o', *SCRATCH)
    assert 'different classes' in line and 'yellow' in line

    broken = tmp_path / 'broken'
    shutil.copytree(data, broken)
    (broken / 'train' / 'red' / 'zz_broken.jpg').write_bytes(b'not a jpeg')
    line = bad(tmp_path, '--data', broken, '--output', tmp_path / 'b1', *SCRATCH, '--epochs', 1)
    assert 'zz_broken.jpg' in line and '--skip-bad' in line
    status, _, err = run_train('--data', broken, '--output', tmp_path / 'b2', *SCRATCH, '--epochs', 1,
                               '--skip-bad')
    assert status == 0, err
    assert json.loads(open(tmp_path / 'b2' / 'log.jsonl').read())['skipped_bad'] == 1

    # an output folder that holds a run
    line = bad(tmp_path, '--data', data, '--output', tmp_path / 'b2', *SCRATCH)
    assert 'already holds a run' in line and '--resume' in line and '--force' in line
    before = (tmp_path / 'b2' / 'last.pth').read_bytes()
    # --resume from another class set, another config, a file that is not a last.pth
    line = bad(tmp_path, '--data', data, '--resume', tmp_path / 'b2' / 'last.pth', '--epochs', 2,
               '--filters', '16', '--workers', '0')
    assert '--filters 16 differs' in line
    other = tmp_path / 'other'
    make_data(other, n_train=3, n_val=2, colours={'cyan': (0, 200, 200), 'pink': (250, 100, 200)})
    line = bad(tmp_path, '--data', other, '--resume', tmp_path / 'b2' / 'last.pth', '--epochs', 2)
    assert 'classes' in line
    line = bad(tmp_path, '--data', data, '--resume', weights, '--epochs', 2)
    assert 'not a train.py last.pth' in line
    assert (tmp_path / 'b2' / 'last.pth').read_bytes() == before  # nothing damaged
    # weights of another architecture
    line = bad(tmp_path, '--data', data, '--output', tmp_path / 'w', '--weights', weights,
               '--filters', '12', *SMALL)
    assert 'num_conv_filters 10' in line
    sd = model_mod.read_weights(weights)
    sd['state_dict']['conv0.weight'] = torch.zeros(5, 3, 3, 3)
    sd['config'] = sd['config'].to_dict()
    torch.save(sd, tmp_path / 'foreign.pth')
    line = bad(tmp_path, '--data', data, '--output', tmp_path / 'w', '--weights', tmp_path / 'foreign.pth', *SMALL)
    assert 'conv0.weight' in line and 'another architecture' in line
    line = bad(tmp_path, '--data', data, '--output', tmp_path / 'w', '--weights', tmp_path / 'none.pth', *SMALL)
    assert 'no such weights file' in line


def test_compile_runs_the_step_under_torch_compile_and_saves_the_plain_weights(tmp_path, data,
                                                                                weights, monkeypatch):
    """--compile hands the network to torch.compile (stood in for here: compiling PNASNet takes
    minutes on a CPU) and trains through what it returns; the files hold the model's own keys."""
    calls = []

    class Compiled(torch.nn.Module):  # as torch.compile's wrapper, it keeps the module as _orig_mod
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

        def forward(self, x):
            calls.append(tuple(x.shape))
            return self._orig_mod(x)
    monkeypatch.setattr(train.torch, 'compile', Compiled)
    out = tmp_path / 'run'
    status, _, err = run_train('--data', data, '--output', out, '--weights', weights,
                               '--epochs', 1, '--freeze-body', '--compile', *SMALL)
    assert status == 0, err
    assert calls and calls[0] == (8, 3, 64, 64)
    saved = model_mod.read_weights(str(out / 'best.pth'))['state_dict']
    assert saved['classifier.weight'].shape == (3, 200) and not [k for k in saved if '_orig_mod' in k]


# --- the recipe's formulas, each against TF-Slim's written out here, through the forward pass and
# the training step a user runs ----------------------------------------------------------------------

def op_masks(net, x):
    """Runs ``net`` in training mode on ``x`` and returns, for every cell k and op i, the factor
    each example's op output entered its combination with (solved from the op outputs and the
    cell's output by least squares): 1 where the op was kept whole, 0 where dropped, 1/keep where
    drop path kept and rescaled it."""
    records, handles = {}, []
    for k, cell in enumerate(net.cells):
        for i, op in enumerate(cell.ops):
            handles.append(op.register_forward_hook(
                lambda m, a, out, k=k, i=i: records.__setitem__((k, i), out.detach().double())))
        handles.append(cell.register_forward_hook(
            lambda m, a, out, k=k: records.__setitem__(k, out.detach().double())))
    net(x)
    for h in handles:
        h.remove()
    masks = {}
    for k, cell in enumerate(net.cells):
        width = records[k].shape[1] // len(cell.concat)
        for c in range(len(cell.ops) // 2):
            out = records[k][:, cell.concat.index(2 + c) * width:][:, :width].flatten(1)
            a, b = records[(k, 2 * c)].flatten(1), records[(k, 2 * c + 1)].flatten(1)
            design = torch.stack([a, b], -1)  # [N, D, 2]
            solved = torch.linalg.lstsq(design, out[..., None]).solution[..., 0]  # [N, 2]
            masks[(k, 2 * c)], masks[(k, 2 * c + 1)] = solved[:, 0], solved[:, 1]
    return masks


def test_drop_path_in_the_forward_pass_scales_by_cell_and_spares_the_identity():
    """TF-Slim (SPEC): keep = 1 - (cell + 1) / total_cells * (1 - keep_prob), the stem cells
    counted, each example's op output kept whole with probability keep and scaled by 1/keep;
    the identity ('none', here skip_connect) never dropped."""
    torch.manual_seed(0)
    config = model_mod.PNASNetConfig.mobile(num_conv_filters=8, num_cells=3)
    net = model_mod.NetworkImageNet(config).train()
    net.drop_path_prob = 0.5  # = 1 - keep_prob, after the ramp
    masks = op_masks(net, torch.randn(48, 3, 40, 40))
    total = config.num_cells + 2
    genotype = genotypes.get(config.genotype)
    seen_identity = 0
    for k, cell in enumerate(net.cells):
        keep = 1 - (k + 1) / total * 0.5
        for i, (name, _) in enumerate(genotype.reduce if cell.reduction else genotype.normal):
            m = masks[(k, i)]
            if name == 'skip_connect':
                seen_identity += 1
                assert torch.allclose(m, torch.ones_like(m), atol=1e-6), (k, i)
                continue
            kept = m.abs() > 1e-6
            assert torch.allclose(m[kept], torch.full_like(m[kept], 1 / keep), atol=1e-5), (k, i, m[kept][:3], keep)
            assert 0 < int(kept.sum()) < len(m) or keep > 0.9, (k, i)  # some dropped, some kept
    assert seen_identity > 0


@pytest.mark.quick
def test_the_training_step_smooths_labels_and_adds_the_aux_loss_at_0_4():
    """train_step's losses against cross entropy written out: smoothed targets (1 - e) on the
    label plus e / K on every class (e = 0.1, the recipe's), aux logits weighted 0.4."""
    torch.manual_seed(0)
    config = model_mod.PNASNetConfig.mobile(num_conv_filters=8, num_cells=3, num_classes=5,
                                            auxiliary=True, image_size=128)
    net = model_mod.NetworkImageNet(config).train()
    args = train.parse_args(['--data', 'x'])
    train.fill_defaults(args)
    outputs = []
    net.register_forward_hook(lambda m, a, out: outputs.append(out))
    optimizer = train.make_optimizer(train.param_groups(net, args.weight_decay), args)
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    x, y = torch.randn(6, 3, 128, 128), torch.tensor([0, 1, 2, 3, 4, 1])
    total, main_loss, aux_loss = (float(v.detach()) for v in train.train_step(net, optimizer, scaler, x, y, args))
    logits, logits_aux = outputs[0]

    def smoothed_ce(z, eps=0.1):
        logp = torch.log_softmax(z.detach().double(), 1)
        return float((-(1 - eps) * logp[torch.arange(len(y)), y] - eps / z.shape[1] * logp.sum(1)).mean())
    assert main_loss == pytest.approx(smoothed_ce(logits), rel=1e-5)
    assert aux_loss == pytest.approx(smoothed_ce(logits_aux), rel=1e-5)
    assert total == pytest.approx(smoothed_ce(logits) + 0.4 * smoothed_ce(logits_aux), rel=1e-5)
    assert abs(smoothed_ce(logits) - smoothed_ce(logits, 0.0)) > 1e-3  # smoothing changes the number


def test_ema_averages_with_tf_slims_warmup():
    """TF's ExponentialMovingAverage(decay, num_updates): decay_t = min(decay, (1 + t) / (10 + t)),
    shadow = decay_t * shadow + (1 - decay_t) * value, from the weights it started with."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = train.EMA(net, 0.999)
    shadow = {k: v.detach().clone().double() for k, v in net.state_dict().items() if v.dtype.is_floating_point}
    for t in range(1, 8):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.randn(5, 3))  # moves the BN statistics too
        ema.update(net)
        d = min(0.999, (1 + t) / (10 + t))
        for k, v in net.state_dict().items():
            if k in shadow:
                shadow[k] = d * shadow[k] + (1 - d) * v.detach().double()
    got = ema.module.state_dict()
    for k, v in shadow.items():
        assert torch.allclose(got[k].double(), v, atol=1e-5), k


@pytest.mark.quick
def test_lr_schedules_follow_tf_slims_formulas_at_every_step():
    """TF-Slim's exponential_decay(staircase=True): lr * rate ** floor(step / decay_steps) with
    decay_steps = int(steps_per_epoch * epochs_per_decay); a linear warmup before it; a cosine
    0.5 (1 + cos(pi t / T)) over the steps after the warmup."""
    import math
    args = train.parse_args(['--data', 'x', '--epochs', '20'])
    train.fill_defaults(args)
    steps_per_epoch, decay_steps = 10, int(10 * args.decay_epochs)
    for step in range(200):
        assert train.lr_factor(step, steps_per_epoch, args) == pytest.approx(
            args.decay_rate ** (step // decay_steps), rel=1e-12), step
    args.warmup_epochs = 2
    for step in range(200):
        want = (step + 1) / 20 if step < 20 else args.decay_rate ** ((step - 20) // decay_steps)
        assert train.lr_factor(step, steps_per_epoch, args) == pytest.approx(want, rel=1e-12), step
    args.schedule, args.warmup_epochs = 'cosine', 0
    for step in range(0, 200, 7):
        want = 0.5 * (1 + math.cos(math.pi * step / 200))
        assert train.lr_factor(step, steps_per_epoch, args) == pytest.approx(want, rel=1e-9, abs=1e-12), step
