"""convert.py: the whole network against the TF twin at many sizes, and every user error."""
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
import torch.nn as nn

import convert
import model
import tf_reference
from model import PNASNetConfig

TOL = 1e-4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# sizes grouped by the aux head kernel they imply (one TF graph per group)
CASES = [(preset, f, group) for preset, f in (('large', 8), ('mobile', 10))
         for group in ((331, 323), (299,), (224, 225))]


def aux_logits(net, x):
    """Aux logits as TF-Slim computes them: training graph, BN on moving statistics."""
    net.train()
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.Dropout)):
            m.eval()
    with torch.no_grad():
        out = net(x)[1]
    net.eval()
    return out


@pytest.mark.parametrize('preset, filters, sizes', CASES,
                         ids=[f'{p}-f{f}-{"-".join(map(str, g))}' for p, f, g in CASES])
def test_network_matches_tf_twin(tmp_path, tf, preset, filters, sizes):
    config = getattr(PNASNetConfig, preset)(num_conv_filters=filters, image_size=sizes[0])
    batches = [tf_reference.calibration_images(s, n=2, seed=s) for s in sizes]
    prefix = str(tmp_path / 'model.ckpt')
    _, refs = tf_reference.make_random_checkpoint(prefix, config, seed=sizes[0],
                                                  eval_images=batches)
    out = str(tmp_path / 'converted.pth')
    convert.convert(prefix, out, check=False, log=lambda *a: None)
    net = model.load_pretrained(out, auxiliary=True)
    for size, batch, ref in zip(sizes, batches, refs):
        x = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())
        with torch.no_grad():
            logits = net(x)[0].numpy()
            feats = net.extract_features(x).numpy()
        aux = aux_logits(net, x).numpy()
        d_logits = np.abs(logits - ref['logits']).max()
        d_feats = np.abs(feats - ref['global_pool']).max()
        d_aux = np.abs(aux - ref['aux_logits']).max()
        print(f'{preset} F={filters} {size}px: logits {d_logits:.2e} features {d_feats:.2e} '
              f'aux {d_aux:.2e}')
        assert 0.2 < np.abs(ref['logits']).max() < 5  # unit-scale logits: the tolerance means something
        assert d_logits < TOL and d_aux < TOL, size
        # the pooled features reach ~3.5 here, and float32 itself (PyTorch in float64 against
        # float32) differs by ~1e-4 on this random network: the tolerance scales with them
        assert d_feats < TOL * max(1.0, np.abs(ref['global_pool']).max()), size
        assert (np.argsort(-logits, 1)[:, :5] == np.argsort(-ref['logits'], 1)[:, :5]).all()


def test_convert_runs_both_checks_and_writes_a_loadable_file(small_checkpoint, tmp_path):
    out = tmp_path / 'sub' / 'mobile.pth'
    lines = []
    report = convert.convert(small_checkpoint['prefix'], str(out), log=lines.append)
    assert report['bookkeeping'] == ['global_step']
    assert report['diffs']['logits'] < TOL and report['diffs']['aux_logits'] < TOL
    assert any(line.startswith('check 1:') for line in lines)
    assert any(line.startswith('check 2') for line in lines)
    saved = torch.load(out, weights_only=True)
    assert saved['config']['num_conv_filters'] == 10 and saved['config']['image_size'] == 224
    net = model.load_pretrained(str(out))
    x = torch.from_numpy(small_checkpoint['images'].transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        d = np.abs(net(x)[0].numpy() - small_checkpoint['ends']['logits']).max()
    assert d < TOL
    assert not [p for p in os.listdir(out.parent) if p.endswith('.tmp')]


def test_checkpoint_as_folder_and_as_tar_gz(small_checkpoint, tmp_path):
    folder = os.path.dirname(small_checkpoint['prefix'])
    archive = tmp_path / 'pnasnet-5_mobile.tar.gz'
    with tarfile.open(archive, 'w:gz') as tar:
        for name in os.listdir(folder):
            if name.startswith('model.ckpt'):
                tar.add(os.path.join(folder, name), arcname=name)
    for source in (folder, str(archive)):
        out = tmp_path / (os.path.basename(source) + '.pth')
        convert.convert(source, str(out), check=False, log=lambda *a: None)
        assert model.load_pretrained(str(out)).config.num_conv_filters == 10


def run_cli(*args):
    """convert.main in this process; returns (exit status, stderr)."""
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = convert.main(list(args))
    return status, err.getvalue()


def test_missing_and_unreadable_checkpoints(tmp_path):
    status, err = run_cli('--checkpoint', str(tmp_path / 'nothing' / 'model.ckpt'),
                          '--output', str(tmp_path / 'o.pth'))
    assert status == 1 and 'no checkpoint there' in err and 'README' in err
    (tmp_path / 'bad.ckpt.index').write_bytes(b'\0garbage' * 10)
    status, err = run_cli('--checkpoint', str(tmp_path / 'bad.ckpt'), '--output', str(tmp_path / 'o.pth'))
    assert status == 1 and 'cannot read the TF checkpoint' in err and 'bad.ckpt' in err
    (tmp_path / 'broken.tar.gz').write_bytes(b'not gzip')
    status, err = run_cli('--checkpoint', str(tmp_path / 'broken.tar.gz'), '--output', str(tmp_path / 'o.pth'))
    assert status == 1 and 'cannot unpack' in err
    assert not (tmp_path / 'o.pth').exists()


@pytest.mark.parametrize('edit, message', [
    (lambda v: v.pop('cell_3/comb_iter_2/left/bn_sep_5x5_2/gamma'),
     'tensor cell_3/comb_iter_2/left/bn_sep_5x5_2/gamma (for cells.5._ops.4.bn2.weight) is missing'),
    (lambda v: v.update({'cell_1/1x1/weights': np.zeros((1, 1, 100, 10), np.float32)}),
     'tensor cell_1/1x1/weights has shape [1, 1, 100, 10]'),
    (lambda v: v.update({'cell_1/extra/weights': np.zeros((3,), np.float32)}),
     'checkpoint tensor cell_1/extra/weights [3] was not used'),
    (lambda v: v.pop('conv0/weights'), 'tensor conv0/weights is missing: this is not a PNASNet-5'),
])
def test_checkpoint_of_another_network_names_the_tensor(small_checkpoint, tmp_path, edit, message):
    values = dict(small_checkpoint['values'])
    edit(values)
    prefix = str(tmp_path / 'other.ckpt')
    tf_reference.write_checkpoint(prefix, values)
    status, err = run_cli('--checkpoint', prefix, '--output', str(tmp_path / 'o.pth'))
    assert status == 1 and message in err, err
    assert not (tmp_path / 'o.pth').exists()


def test_existing_output_is_kept_unless_force(small_checkpoint, tmp_path):
    out = tmp_path / 'PNASNet-5_Large.pth'
    out.write_bytes(b'precious')
    status, err = run_cli('--checkpoint', small_checkpoint['prefix'], '--output', str(out))
    assert status == 1 and '--force' in err and out.read_bytes() == b'precious'
    convert.convert(small_checkpoint['prefix'], str(out), force=True, check=False, log=lambda *a: None)
    assert model.load_pretrained(str(out)).config.num_conv_filters == 10


def test_output_folder_that_cannot_be_written(small_checkpoint, tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    status, err = run_cli('--checkpoint', small_checkpoint['prefix'], '--output', str(blocker / 'out.pth'))
    assert status == 1 and 'cannot create the output folder' in err


def test_cli_error_has_no_traceback(tmp_path):
    run = subprocess.run([sys.executable, 'convert.py', '--checkpoint', str(tmp_path / 'none'),
                          '--output', str(tmp_path / 'x.pth')], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1
    assert 'convert.py: error:' in run.stderr and 'Traceback' not in run.stderr
