"""convert.py: the whole network against the TF twin at many sizes, and every user error."""
import os
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

import convert
import model
import tf_reference
import tf_weights
from conftest import aux_logits, within_reported_bounds, within_tf_bound
from model import PNASNetConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# every size in one TF graph per preset; the aux logits at the sizes whose aux kernel is the one
# of the preset's own size (331 and 323 for Large, 224 and 225 for Mobile), the aux head being
# VALID convolutions whose kernel alone depends on the size
CASES = [('large', 8, (331, 323, 299, 224, 225)), ('mobile', 10, (224, 225, 331, 323, 299))]


@pytest.mark.parametrize('preset, filters, sizes', CASES, ids=[f'{p}-f{f}' for p, f, _ in CASES])
def test_network_matches_tf_twin(tmp_path, tf, preset, filters, sizes):
    config = getattr(PNASNetConfig, preset)(num_conv_filters=filters, image_size=sizes[0])
    batches = [tf_reference.calibration_images(s, n=2, seed=s) for s in sizes]
    prefix = str(tmp_path / 'model.ckpt')
    _, refs = tf_reference.make_random_checkpoint(prefix, config, seed=sizes[0],
                                                  eval_images=batches)
    out = str(tmp_path / 'converted.pth')
    convert.convert(prefix, out, check=False, log=lambda *a: None)
    net = model.load_pretrained(out, auxiliary=True)
    assert ['aux_logits' in ref for ref in refs] == [True, True, False, False, False]
    for size, batch, ref in zip(sizes, batches, refs):
        x = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())
        with torch.no_grad():
            logits = net(x).numpy()
            feats = net.extract_features(x).numpy()
        d_logits = np.abs(logits - ref['logits']).max()
        d_feats = np.abs(feats - ref['global_pool']).max()
        print(f'{preset} F={filters} {size}px: logits {d_logits:.2e} features {d_feats:.2e}')
        assert 0.2 < np.abs(ref['logits']).max() < 5  # unit-scale logits
        assert within_tf_bound(logits, ref['logits']) and within_tf_bound(feats, ref['global_pool']), size
        assert (np.argsort(-logits, 1)[:, :5] == np.argsort(-ref['logits'], 1)[:, :5]).all()
        if 'aux_logits' in ref:
            aux = aux_logits(net, x).numpy()
            print(f'  aux logits {np.abs(aux - ref["aux_logits"]).max():.2e}')
            assert within_tf_bound(aux, ref['aux_logits']), size


@pytest.mark.quick
def test_convert_runs_both_checks_and_writes_a_loadable_file(small_checkpoint, tmp_path):
    out = tmp_path / 'sub' / 'mobile.pth'
    lines = []
    report = convert.convert(small_checkpoint['prefix'], str(out), log=lines.append)
    assert report['bookkeeping'] == ['global_step']
    assert within_reported_bounds(report) and set(report['bounds']) == {'logits', 'features', 'aux_logits'}
    assert any(line.startswith('check 1:') for line in lines)
    assert any(line.startswith('check 2') for line in lines)
    saved = torch.load(out, weights_only=True)
    assert saved['config']['num_conv_filters'] == 10 and saved['config']['image_size'] == 224
    net = model.load_pretrained(str(out))
    x = torch.from_numpy(small_checkpoint['images'].transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        assert within_tf_bound(net(x).numpy(), small_checkpoint['ends']['logits'])
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
                          '--output', str(tmp_path / 'o.pth'), '--no-download')
    assert status == 1 and 'no checkpoint there' in err and 'README' in err
    assert not (tmp_path / 'nothing').exists()
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
    # one aux BN tensor missing is a broken file, not the release's shape (which lacks all eight)
    (lambda v: v.pop('aux_5/aux_logits/aux_bn1/moving_variance'),
     'tensor aux_5/aux_logits/aux_bn1/moving_variance (for auxiliary_head.bn1.running_var) is missing'),
    (lambda v: [v.pop(k) for k in list(v) if k.startswith('aux_5/aux_logits/aux_bn')
                or k == 'aux_5/aux_logits/proj/weights'],
     'tensor aux_5/aux_logits/proj/weights (for auxiliary_head.proj.weight) is missing'),
    (lambda v: v.pop('aux_5/aux_logits/Conv/weights'),
     'checkpoint tensor aux_5/aux_logits/'),
])
@pytest.mark.quick
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


@pytest.mark.quick
def test_cli_error_has_no_traceback(tmp_path):
    run = subprocess.run([sys.executable, 'convert.py', '--checkpoint', str(tmp_path / 'none'),
                          '--output', str(tmp_path / 'x.pth')], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1
    assert 'convert.py: error:' in run.stderr and 'Traceback' not in run.stderr


# --- the checkpoint as published: no aux-head BatchNorm ---------------------------------------------

TF_LOG_LINE = re.compile(r'^[IWEF]\d{4} |cpu_feature_guard|oneDNN custom operations|absl::|'
                         r'rebuild TensorFlow|TF_ENABLE_ONEDNN_OPTS', re.M)
RELEASE_NOTE = ('aux head: proj, Conv and FC from the checkpoint; aux_bn0/aux_bn1 absent from it '
                '(as in the official release), initialised fresh (gamma 1, beta 0, mean 0, var 1)')


def release_values(values):
    return {k: v for k, v in values.items() if not re.match(r'aux_\d+/aux_logits/aux_bn[01]/', k)}


def assert_release_aux_head(out, values):
    """The aux head loads for fine-tuning: convs and FC as in the checkpoint, BNs fresh."""
    net = model.load_pretrained(str(out), auxiliary=True)
    head, scope = net.auxiliary_head, f'aux_{net.aux_index - 2}/aux_logits'
    assert np.array_equal(head.proj.weight.detach().numpy(),
                          values[f'{scope}/proj/weights'].transpose(3, 2, 0, 1))
    assert np.array_equal(head.conv.weight.detach().numpy(),
                          values[f'{scope}/Conv/weights'].transpose(3, 2, 0, 1))
    assert np.array_equal(head.classifier.weight.detach().numpy(), values[f'{scope}/FC/weights'].T)
    for bn in (head.bn0, head.bn1):
        assert (bn.weight == 1).all() and (bn.bias == 0).all()
        assert (bn.running_mean == 0).all() and (bn.running_var == 1).all()
    net.train()
    logits, logits_aux = net(torch.randn(2, 3, net.config.image_size, net.config.image_size))
    assert logits_aux.shape == logits.shape == (2, net.config.num_classes)


def test_the_self_test_command_passes_on_four_shapes_without_tf_log_lines(tmp_path):
    """`python convert.py --self-test` (the README's offline command): random Large- and
    Mobile-shaped checkpoints, each complete and shaped as the release is (no aux BatchNorm),
    converted and checked against TF; the release-shaped aux heads load for fine-tuning with
    fresh BNs. Nothing is written where it runs, and no TF notice reaches the terminal."""
    run = subprocess.run([sys.executable, os.path.join(ROOT, 'convert.py'), '--self-test'],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    lines = run.stdout.splitlines()
    cases = [line for line in lines if line.endswith('-> ok')]
    assert [c.split()[0] for c in cases] == ['large-shaped', 'large-shaped', 'mobile-shaped', 'mobile-shaped']
    assert sum('release' in c and 'aux BN fresh' in c for c in cases) == 2
    assert sum('aux logits' in c for c in cases) == 2 and lines[-1] == 'self-test passed'
    for case in cases:  # each says how far it is from TF: logits and features at least
        assert len(re.findall(r'\d\.\d+e[-+]\d+', case)) >= 2, case
    assert not TF_LOG_LINE.search(run.stdout + run.stderr), run.stderr
    assert os.listdir(tmp_path) == []


# TF_CPP_MIN_LOG_LEVEL=0 lets every notice through: the filter is tested where it has most to do
@pytest.mark.parametrize('onednn, log_level', [('1', '0')])
def test_release_shaped_mobile_checkpoint_through_the_cli_without_tf_log_lines(small_checkpoint,
                                                                               tmp_path, onednn, log_level):
    """TF's start-up notices stay off the terminal with its oneDNN path on (its notice is
    written whatever TF_CPP_MIN_LOG_LEVEL says) and at every log level."""
    values = release_values(small_checkpoint['values'])
    prefix = str(tmp_path / 'release' / 'model.ckpt')
    tf_reference.write_checkpoint(prefix, {**values, 'global_step': np.int64(0)})
    out = tmp_path / 'mobile.pth'
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    env['TF_ENABLE_ONEDNN_OPTS'] = onednn
    if log_level is not None:
        env['TF_CPP_MIN_LOG_LEVEL'] = log_level
    run = subprocess.run([sys.executable, 'convert.py', '--checkpoint', prefix, '--output', str(out),
                          '--no-download'], cwd=ROOT, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert RELEASE_NOTE in run.stdout.splitlines()
    check2 = [line for line in run.stdout.splitlines() if line.startswith('check 2')]
    assert check2 and 'aux logits not compared' in check2[0]
    assert not TF_LOG_LINE.search(run.stdout + run.stderr), run.stderr
    assert_release_aux_head(out, values)
    net = model.load_pretrained(str(out))
    x = torch.from_numpy(small_checkpoint['images'].transpose(0, 3, 1, 2).copy())
    with torch.no_grad():  # the classification network is the one of the complete checkpoint
        assert within_tf_bound(net(x).numpy(), small_checkpoint['ends']['logits'])


def test_checkpoint_without_any_aux_head(small_checkpoint, tmp_path):
    values = {k: v for k, v in small_checkpoint['values'].items() if not k.startswith('aux_')}
    prefix = str(tmp_path / 'noaux.ckpt')
    tf_reference.write_checkpoint(prefix, values)
    out, lines = tmp_path / 'noaux.pth', []
    report = convert.convert(prefix, str(out), check=False, log=lines.append)
    assert report['aux_head'] == 'absent' and tf_weights.AUX_NOTES['absent'] in lines
    assert model.load_pretrained(str(out)).auxiliary_head is None
    with pytest.raises(model.CheckpointError, match='holds no auxiliary-head weights'):
        model.load_pretrained(str(out), auxiliary=True)


# --- the download, against a loopback server ------------------------------------------------------

@pytest.fixture(scope='module')
def archive_server(small_checkpoint, tmp_path_factory):
    """A loopback HTTP server: /pnasnet.tar.gz is a generated archive of the small checkpoint,
    /cut.tar.gz announces it whole but breaks off halfway, anything else is a 404."""
    import http.server
    import io
    import threading
    folder = os.path.dirname(small_checkpoint['prefix'])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:gz') as tar:
        for name in sorted(os.listdir(folder)):
            if name.startswith('model.ckpt'):
                tar.add(os.path.join(folder, name), arcname=name)
    body = buf.getvalue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path not in ('/pnasnet.tar.gz', '/cut.tar.gz'):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body if self.path == '/pnasnet.tar.gz' else body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}', body
    server.shutdown()
    server.server_close()


def test_missing_checkpoint_is_downloaded_unpacked_and_converted(archive_server, tmp_path):
    base, body = archive_server
    folder = tmp_path / 'data'
    status, err = run_cli('--checkpoint', str(folder / 'model.ckpt'), '--url', f'{base}/pnasnet.tar.gz',
                          '--output', str(tmp_path / 'out.pth'))
    assert status == 0, err
    assert sorted(os.listdir(folder)) == ['model.ckpt.data-00000-of-00001', 'model.ckpt.index',
                                          'pnasnet.tar.gz']
    assert (folder / 'pnasnet.tar.gz').read_bytes() == body
    assert model.load_pretrained(str(tmp_path / 'out.pth')).config.num_conv_filters == 10
    # a missing archive path is downloaded as that archive
    report = convert.convert(str(tmp_path / 'x' / 'mobile.tar.gz'), str(tmp_path / 'x.pth'),
                             check=False, log=lambda *a: None, url=f'{base}/pnasnet.tar.gz')
    assert report['aux_head'] == 'complete' and os.listdir(tmp_path / 'x') == ['mobile.tar.gz']


@pytest.mark.parametrize('path, reason', [('/cut.tar.gz', 'the connection broke off'),
                                          ('/nothing.tar.gz', 'HTTP 404'),
                                          (None, 'offline or unreachable')])
def test_failed_download_names_the_url_and_leaves_nothing(archive_server, tmp_path, path, reason):
    import socket
    if path is None:  # a port nobody listens on
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            url = f'http://127.0.0.1:{s.getsockname()[1]}/pnasnet.tar.gz'
    else:
        url = archive_server[0] + path
    folder = tmp_path / 'data'
    status, err = run_cli('--checkpoint', str(folder / 'model.ckpt'), '--url', url,
                          '--output', str(tmp_path / 'out.pth'))
    last = err.strip().splitlines()[-1].split('\r')[-1]
    assert status == 1 and 'Traceback' not in err
    assert last.startswith(f'convert.py: error: cannot download {url} ({reason}')
    assert 'by hand' in last and '--checkpoint' in last
    assert not os.path.exists(folder)  # the folder it made is gone again, with nothing in it
    assert not (tmp_path / 'out.pth').exists()


def test_unpacking_never_replaces_a_file_that_is_there(archive_server, tmp_path):
    folder = tmp_path / 'data'
    folder.mkdir()
    mine = folder / 'model.ckpt.data-00000-of-00001'
    mine.write_bytes(b'mine')
    status, err = run_cli('--checkpoint', str(folder / 'model.ckpt'),
                          '--url', archive_server[0] + '/pnasnet.tar.gz', '--output', str(tmp_path / 'o.pth'))
    assert status == 1 and f'{mine} is already there' in err
    assert mine.read_bytes() == b'mine' and not (folder / 'model.ckpt.index').exists()
    assert sorted(os.listdir(folder)) == ['model.ckpt.data-00000-of-00001', 'pnasnet.tar.gz']


def test_an_archive_that_writes_outside_its_folder_is_refused(tmp_path):
    import io
    archive = tmp_path / 'evil.tar.gz'
    with tarfile.open(archive, 'w:gz') as tar:
        info = tarfile.TarInfo('../escaped.txt')
        info.size = 4
        tar.addfile(info, io.BytesIO(b'evil'))
    (tmp_path / 'data').mkdir()
    with pytest.raises(convert.ConvertError, match='cannot unpack the archive'):
        tf_weights.unpack_checkpoint(str(archive), str(tmp_path / 'data'))
    assert not (tmp_path / 'escaped.txt').exists() and os.listdir(tmp_path / 'data') == []


def test_safetensors_output_reads_back_identical_and_runs_no_code(small_checkpoint, tmp_path):
    pth, st = tmp_path / 'w.pth', tmp_path / 'w.safetensors'
    convert.convert(small_checkpoint['prefix'], str(pth), check=False, log=lambda *a: None)
    convert.convert(small_checkpoint['prefix'], str(st), check=False, log=lambda *a: None)
    head = st.read_bytes()[:9]
    assert head[8:9] == b'{'  # an 8-byte header length, then JSON: no pickle anywhere
    a, b = model.load_pretrained(str(pth), auxiliary=True), model.load_pretrained(str(st), auxiliary=True)
    assert a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    damaged = tmp_path / 'damaged.safetensors'
    damaged.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(model.CheckpointError, match='not a safetensors file this port can read'):
        model.load_pretrained(str(damaged))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_a_pth_that_carries_code_is_refused_with_one_line(small_checkpoint, tmp_path):
    out = tmp_path / 'w.pth'
    convert.convert(small_checkpoint['prefix'], str(out), check=False, log=lambda *a: None)
    payload = torch.load(out, weights_only=True)
    marker = tmp_path / 'code_ran'
    payload['extra'] = _RunsCode(str(marker))
    evil = tmp_path / 'evil.pth'
    torch.save(payload, evil)
    with pytest.raises(model.CheckpointError) as info:
        model.load_pretrained(str(evil))
    message = str(info.value)
    assert len(message.splitlines()) == 1 and str(evil) in message
    assert 'pickles objects other than tensors' in message and not marker.exists()


# --- timm's pnasnet5large ---------------------------------------------------------------------------

def test_timm_weights_convert_in_give_timms_logits_and_convert_back_bit_identical(tmp_path):
    import timm
    from safetensors.torch import load_file, save_file
    torch.manual_seed(0)
    ref = timm.create_model('pnasnet5large', pretrained=False).eval()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2)
            m.running_mean.normal_(0, 0.1)
            m.num_batches_tracked.fill_(7)
    state = ref.state_dict()
    source = tmp_path / 'timm.safetensors'
    save_file({k: v.contiguous() for k, v in state.items()}, str(source))
    ours, lines = tmp_path / 'ours.pth', []
    report = convert.from_timm(str(source), str(ours), log=lines.append)
    assert report['diffs']['logits'] < 1e-4 and lines[0].startswith(f'check 1: all {len(state)} timm tensors used')
    net = model.load_pretrained(str(ours))
    assert net.config.num_classes == 1000 and net.auxiliary_head is None
    x = torch.randn(1, 3, 331, 331)
    with torch.no_grad():
        assert within_tf_bound(net(x), ref(x))  # class k is timm's class k
    status, err = run_cli('--to-timm', str(ours), '--output', str(tmp_path / 'back.safetensors'))
    assert status == 0, err
    back = load_file(str(tmp_path / 'back.safetensors'))
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_a_1001_class_file_loses_its_background_logit_for_timm(tmp_path):
    torch.manual_seed(1)
    net = model.NetworkImageNet(PNASNetConfig.large(auxiliary=True))
    path = tmp_path / 'ours.pth'
    torch.save({'config': net.config.to_dict(), 'state_dict': net.state_dict()}, path)
    report = convert.to_timm(str(path), str(tmp_path / 'timm.pth'), log=lambda *a: None)
    assert report['diffs']['logits'] < 1e-4
    state = torch.load(tmp_path / 'timm.pth', weights_only=True)
    assert torch.equal(state['last_linear.weight'], net.classifier.weight[1:])
    assert not [k for k in state if 'aux' in k]


def test_timm_conversion_errors_name_the_file(tmp_path, small_checkpoint):
    other = tmp_path / 'other.pth'
    torch.save({'fc.weight': torch.zeros(3, 4)}, other)
    status, err = run_cli('--from-timm', str(other), '--output', str(tmp_path / 'o.pth'))
    assert status == 1 and f'{other}: not a timm pnasnet5large state dict' in err
    mobile = tmp_path / 'mobile.pth'
    convert.convert(small_checkpoint['prefix'], str(mobile), check=False, log=lambda *a: None)
    status, err = run_cli('--to-timm', str(mobile), '--output', str(tmp_path / 't.pth'))
    assert status == 1 and 'timm has only pnasnet5large' in err
    status, err = run_cli('--to-timm', str(mobile))
    assert status == 1 and '--to-timm needs --output' in err
    assert not (tmp_path / 'o.pth').exists() and not (tmp_path / 't.pth').exists()


def test_tf_startup_filter_keeps_every_other_line_on_stderr(capfd):
    """The filter drops TensorFlow's start-up notices only: an error TF writes, or anything
    else on file descriptor 2, reaches the user."""
    with tf_reference.tf_startup_filtered():
        os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n'
                    b'I0000 00:00:1796336670.113118    2347 port.cc:153] oneDNN custom operations are on. '
                    b'You may see slightly different numerical results.\n'
                    b'I0000 00:00:1796336670.167569    2347 cpu_feature_guard.cc:227] This TensorFlow binary '
                    b'is optimized to use available CPU instructions.\n'
                    b'To enable the following instructions: AVX2 FMA, in other operations, rebuild '
                    b'TensorFlow with the appropriate compiler flags.\n'
                    b'E0000 00:00:1796336670.2    2347 checkpoint_reader.cc:12] Unsuccessful TensorSliceReader\n'
                    b'something else\n')
    err = capfd.readouterr().err
    assert err.splitlines() == ['E0000 00:00:1796336670.2    2347 checkpoint_reader.cc:12] '
                                'Unsuccessful TensorSliceReader', 'something else']


def test_a_failing_restore_still_says_why(small_checkpoint, tmp_path):
    """A checkpoint whose data file is cut short: the error names the file and TF's reason."""
    prefix = tmp_path / 'model.ckpt'
    for suffix in ('.index', '.data-00000-of-00001'):
        data = open(small_checkpoint['prefix'] + suffix, 'rb').read()
        (tmp_path / f'model.ckpt{suffix}').write_bytes(data if suffix == '.index' else data[:1000])
    run = subprocess.run([sys.executable, 'convert.py', '--checkpoint', str(prefix), '--output',
                          str(tmp_path / 'x.pth'), '--no-download'], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1 and 'Traceback' not in run.stderr
    assert str(prefix) in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_a_wrong_padding_or_a_swapped_tensor_fails_by_orders_of_magnitude(small_checkpoint, tmp_path):
    """The bound is the fp32 floor, far below what a real bug costs: symmetric padding (the
    earlier port's) and two swapped pointwise weights each miss it by over 100x."""
    out = tmp_path / 'mobile.pth'
    convert.convert(small_checkpoint['prefix'], str(out), check=False, log=lambda *a: None)
    x = torch.from_numpy(small_checkpoint['images'].transpose(0, 3, 1, 2).copy())
    ref = small_checkpoint['ends']['logits']
    bound = tf_reference.tf_tolerance(np.abs(ref).max())

    def excess(net):
        with torch.no_grad():
            return float(np.abs(net(x).numpy() - ref).max()) / bound
    assert excess(model.load_pretrained(str(out))) <= 1.0
    assert excess(model.load_pretrained(str(out), padding='symmetric')) > 100
    net = model.load_pretrained(str(out))
    a, b = net.cells[3].ops[0].pointwise1.weight, net.cells[3].ops[2].pointwise1.weight
    assert a.shape == b.shape
    with torch.no_grad():
        a_copy = a.clone()
        a.copy_(b)
        b.copy_(a_copy)
    assert excess(net) > 100
