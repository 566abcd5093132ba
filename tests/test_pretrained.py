"""The weights objects (pretrained.py, through hubconf as torchvision has them): the transform is
main.py's preprocessing bit for bit, the meta holds the published facts, the URL follows the
mirror variables."""
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import timm  # before TensorFlow: triton's native library (timm imports it) crashes after TF's
import torch
from PIL import Image

import hubconf
import model
import pretrained
import utils
import weights_io


@pytest.fixture(scope='module')
def jpegs(tmp_path_factory):
    """Real JPEG files: colour of an odd size, greyscale, CMYK, and one smaller than the crop."""
    folder = tmp_path_factory.mktemp('jpegs')
    rng = np.random.default_rng(11)
    paths = []
    for name, mode, size in (('rgb', 'RGB', (500, 375)), ('grey', 'L', (333, 401)),
                             ('cmyk', 'CMYK', (260, 250)), ('small', 'RGB', (97, 120))):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize(size, Image.BICUBIC).convert(mode)
        path = folder / f'{name}.jpg'
        image.save(path, quality=87)
        paths.append(str(path))
    return paths


@pytest.mark.quick
@pytest.mark.parametrize('weights, size', [(hubconf.PNASNet5_Large_Weights.IMAGENET1K_TF, 331),
                                           (hubconf.PNASNet5_Mobile_Weights.DEFAULT, 224)])
def test_transforms_are_main_pys_preprocessing_bit_for_bit(jpegs, weights, size):
    transform = weights.transforms()
    dataset = utils.EvalDataset([(p, 0) for p in jpegs], size, 'numpy', skip_bad=True)
    for k, path in enumerate(jpegs):
        fed = dataset[k][0]  # what main.py's loader gives the network for this file
        with open(path, 'rb') as f:
            from_pil = transform(Image.open(io.BytesIO(f.read())))
        pixels = torch.from_numpy(utils.load_rgb(path).copy()).permute(2, 0, 1)  # torchvision's layout
        assert from_pil.dtype == torch.float32 and from_pil.shape == (3, size, size)
        assert torch.equal(from_pil, fed), path
        assert torch.equal(transform(pixels), fed), path
    grey = torch.from_numpy(utils.load_rgb(jpegs[1])[:, :, :1].copy()).permute(2, 0, 1)
    assert torch.equal(transform(grey), transform(grey.expand(3, -1, -1).contiguous()))
    with pytest.raises(ValueError, match='uint8 image tensor'):
        transform(torch.zeros(3, 8, 8))


@pytest.mark.quick
def test_meta_holds_the_published_facts_and_the_networks_own_numbers():
    large, mobile = pretrained.PNASNet5_Large_Weights, pretrained.PNASNet5_Mobile_Weights
    assert hubconf.PNASNet5_Large_Weights is large and large.DEFAULT is large.IMAGENET1K_TF
    for weights, config, top in ((large.IMAGENET1K_TF, model.PNASNetConfig.large(), (82.9, 96.2)),
                                 (mobile.IMAGENET1K_TF, model.PNASNetConfig.mobile(), (74.2, 91.9))):
        meta = weights.meta
        with torch.device('meta'):
            net = model.NetworkImageNet(config)
        assert meta['num_params'] == sum(p.numel() for p in net.parameters())
        assert meta['input_size'] == (3, config.image_size, config.image_size)
        assert meta['num_classes'] == config.num_classes == len(meta['categories']) == 1001
        assert meta['categories'][0] == 'background' and meta['categories'][1:] == [
            name for _, name in utils.read_class_names()]
        assert (meta['_metrics']['ImageNet-1K']['acc@1'], meta['_metrics']['ImageNet-1K']['acc@5']) == top
        assert weights.transforms().size == config.image_size
    assert large.verify('IMAGENET1K_TF') is large.IMAGENET1K_TF
    assert large.verify('PNASNet5_Large_Weights.IMAGENET1K_TF') is large.IMAGENET1K_TF
    with pytest.raises(ValueError, match='IMAGENET1K_TF'):
        large.verify('IMAGENET1K_V2')
    # another preset's weights are refused before anything is fetched, by name or by member
    with pytest.raises(ValueError, match='holds PNASNet-5 Large, not Mobile'):
        hubconf.pnasnet5mobile(weights='PNASNet5_Large_Weights.IMAGENET1K_TF')
    with pytest.raises(ValueError, match='holds PNASNet-5 Mobile, not Large'):
        hubconf.pnasnet5large(weights=mobile.DEFAULT)


def test_url_is_the_release_unless_a_mirror_is_named(monkeypatch):
    weights = pretrained.PNASNet5_Mobile_Weights.IMAGENET1K_TF
    monkeypatch.delenv('PNASNET_MOBILE_URL', raising=False)
    assert weights.url == 'http://download.tensorflow.org/models/pnasnet-5_mobile_2017_12_13.tar.gz'
    monkeypatch.setenv('PNASNET_MOBILE_URL', 'file:///srv/mirror/pnasnet-5_mobile_2017_12_13.tar.gz')
    assert weights.url == 'file:///srv/mirror/pnasnet-5_mobile_2017_12_13.tar.gz'
    assert pretrained.PNASNet5_Large_Weights.IMAGENET1K_TF.url.endswith('pnasnet-5_large_2017_12_13.tar.gz')


# --- fetched, converted and cached on first use -----------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = 'PNASNet5_Mobile_Weights.IMAGENET1K_TF'


@pytest.fixture(scope='module')
def release_archive(small_checkpoint, tmp_path_factory):
    """A Mobile-shaped archive (F=10) shaped as the release is: its variable names, no aux
    BatchNorms, a global_step; packed as the official .tar.gz is, served by file://."""
    import tf_reference
    folder = tmp_path_factory.mktemp('release')
    values = {k: v for k, v in small_checkpoint['values'].items() if not tf_reference.AUX_BN.match(k)}
    tf_reference.write_checkpoint(str(folder / 'ckpt' / 'model.ckpt'), {**values, 'global_step': np.int64(0)})
    archive = folder / 'pnasnet-5_mobile_2017_12_13.tar.gz'
    with tarfile.open(archive, 'w:gz') as tar:
        for name in sorted(os.listdir(folder / 'ckpt')):
            if name.startswith('model.ckpt'):
                tar.add(folder / 'ckpt' / name, arcname=name)
    cut = folder / 'cut' / archive.name
    cut.parent.mkdir()
    cut.write_bytes(archive.read_bytes()[:archive.stat().st_size // 2])
    return {'archive': str(archive), 'url': archive.as_uri(), 'cut_url': cut.as_uri()}


def no_tf_env(tmp_path, **extra):
    """The environment of a process where TensorFlow cannot be imported."""
    blocked = tmp_path / 'no_tf' / 'tensorflow'
    blocked.mkdir(parents=True, exist_ok=True)
    (blocked / '__init__.py').write_text("raise ImportError('TensorFlow is not installed here')\n")
    return dict(os.environ, PYTHONPATH=str(blocked.parent), **extra)


HUB_LOAD = ("import sys, numpy as np, torch; sys.path.insert(0, {root!r}); import tf_reference; "
            "net = torch.hub.load({root!r}, 'pnasnet5mobile', source='local', weights='IMAGENET1K_TF'); "
            "x = tf_reference.check_images(224)[1]; np.save(sys.argv[1], net(x).detach().numpy()); "
            "print('tensorflow' in sys.modules)")


def test_first_call_fetches_converts_and_caches_then_the_cache_alone_serves(release_archive, tmp_path):
    """The issue's contract: torch.hub.load(..., weights='IMAGENET1K_TF') with TORCH_HOME and
    PNASNET_MOBILE_URL gives the network convert.py makes of the archive, converted once by two
    processes asking at once; again, with TensorFlow unimportable, it reads the cache and gives
    the same logits."""
    import convert
    import hashlib
    import tf_reference
    home = tmp_path / 'home'
    env = dict(os.environ, TORCH_HOME=str(home), PNASNET_MOBILE_URL=release_archive['url'])
    # two processes at once (DDP ranks, a notebook beside a script): one converts, one waits
    procs = [subprocess.Popen([sys.executable, '-c', HUB_LOAD.format(root=ROOT), str(tmp_path / f'{k}.npy')],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in 'ac']
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum(err.count('converting') for _, err in outs) == 1, outs
    assert np.array_equal(np.load(tmp_path / 'a.npy'), np.load(tmp_path / 'c.npy'))
    cache = home / 'hub' / 'checkpoints' / 'pnasnet5mobile_tf_in1k.safetensors'
    sidecar = json.loads(cache.with_suffix('.json').read_text())
    assert sidecar['archive_sha256'] == hashlib.sha256(open(release_archive['archive'], 'rb').read()).hexdigest()
    second = subprocess.run([sys.executable, '-c', HUB_LOAD.format(root=ROOT), str(tmp_path / 'b.npy')],
                            env=no_tf_env(tmp_path, TORCH_HOME=str(home), PNASNET_MOBILE_URL='file:///nowhere'),
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.strip() == 'False' and 'converting' not in second.stderr
    convert.convert(release_archive['archive'], str(tmp_path / 'ref.pth'), check=False, log=lambda *a: None)
    ref = model.load_pretrained(str(tmp_path / 'ref.pth'))
    with torch.no_grad():
        want = ref(tf_reference.check_images(224)[1]).numpy()
    cached = weights_io.read_weights_file(str(cache))['state_dict']
    assert all(torch.equal(cached[k], v) for k, v in ref.state_dict().items())  # the same network
    first_logits = np.load(tmp_path / 'a.npy')
    assert np.array_equal(np.load(tmp_path / 'b.npy'), first_logits)  # the same run, from the cache
    assert np.abs(first_logits - want).max() <= 1e-5 * np.abs(want).max()  # another process's sums
    # main.py takes the same name for --weights, from the cache, without TensorFlow
    image = tmp_path / 'cat.jpg'
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(image)
    run = subprocess.run([sys.executable, 'main.py', '--weights', NAME, '--image', str(image), '--device', 'cpu'],
                         cwd=ROOT, env=no_tf_env(tmp_path, TORCH_HOME=str(home)), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[0] == str(image) and len(run.stdout.splitlines()) == 6


@pytest.mark.quick
def test_offline_and_broken_downloads_say_one_line_and_keep_nothing(release_archive, tmp_path, monkeypatch):
    import pretrained
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'home'))
    folder = tmp_path / 'home' / 'hub' / 'checkpoints'
    monkeypatch.setenv('PNASNET_MOBILE_URL', 'http://127.0.0.1:9/pnasnet-5_mobile_2017_12_13.tar.gz')
    with pytest.raises(pretrained.ConvertError) as err:
        pretrained.cached_weights(NAME, log=lambda m: None)
    message = str(err.value)
    assert '\n' not in message and 'http://127.0.0.1:9/' in message and 'PNASNET_MOBILE_URL' in message
    assert str(folder / 'pnasnet-5_mobile_2017_12_13.tar.gz') in message
    monkeypatch.setenv('PNASNET_MOBILE_URL', release_archive['cut_url'])  # half an archive
    with pytest.raises(pretrained.ConvertError, match='cannot unpack'):
        pretrained.cached_weights(NAME, log=lambda m: None)
    assert sorted(os.listdir(folder)) == ['pnasnet5mobile_tf_in1k.safetensors.lock']
    run = subprocess.run([sys.executable, 'main.py', '--weights', 'IMAGENET1K_TF', '--image', 'x.jpg'],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PNASNET_LARGE_URL='http://127.0.0.1:9/large.tar.gz'))
    assert run.returncode == 1 and run.stderr.count('\n') == 1, run.stderr
    assert run.stderr.startswith('main.py: error: cannot download http://127.0.0.1:9/large.tar.gz')


def test_a_cut_download_and_a_damaged_cache_recover(release_archive, tmp_path, monkeypatch):
    import pretrained
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('PNASNET_MOBILE_URL', release_archive['cut_url'])  # a download cut short
    with pytest.raises(pretrained.ConvertError, match='cannot unpack'):
        pretrained.cached_weights(NAME, log=lambda m: None)
    monkeypatch.setenv('PNASNET_MOBILE_URL', release_archive['url'])  # then whole: it recovers
    said = []
    path = pretrained.cached_weights(NAME, log=said.append)
    whole = open(path, 'rb').read()
    first = weights_io.read_weights_file(path)
    first['state_dict'] = {k: v.clone() for k, v in first['state_dict'].items()}  # not the file's map
    open(path, 'wb').write(whole[:len(whole) // 3])  # cut short
    said.clear()
    assert pretrained.cached_weights(NAME, log=said.append) == path
    assert said[0].startswith(f'{path}: damaged (') and any('converting' in s for s in said)
    again = weights_io.read_weights_file(path)  # the same conversion again
    assert again['config'] == first['config'] and again['source'] == first['source']
    assert all(torch.equal(again['state_dict'][k], v) for k, v in first['state_dict'].items())
    foreign = tmp_path / 'foreign.safetensors'  # another program's file: found damaged, not used
    foreign.write_bytes(b'not a safetensors file at all')
    said.clear()
    assert not pretrained._cache_whole(str(foreign), said.append) and not foreign.exists()
    assert len(said) == 1 and said[0].startswith(f'{foreign}: damaged (')
    # timm's pretrained=True takes the cache; another num_classes gets a fresh classifier
    hubconf.register_timm()
    ours = timm.create_model('pnasnet5mobile_port', pretrained=True, num_classes=10)
    cached = model.load_pretrained(path)
    assert ours.classifier.out_features == 10 and torch.equal(
        ours.cells[3].ops[0].depthwise1.weight, cached.cells[3].ops[0].depthwise1.weight)
    # model.pnasnet5mobile(weights=...), torchvision's builder form, reads the same file
    built = model.pnasnet5mobile(weights=pretrained.PNASNet5_Mobile_Weights.IMAGENET1K_TF)
    assert torch.equal(built.cells[3].ops[0].depthwise1.weight, cached.cells[3].ops[0].depthwise1.weight)
    with pytest.raises(ValueError, match='holds PNASNet-5 Mobile, not Large'):
        model.pnasnet5large(weights=pretrained.PNASNet5_Mobile_Weights.IMAGENET1K_TF)
    # train.py fine-tunes the same weights by name
    import train
    args = train.parse_args(['--data', str(tmp_path), '--weights', NAME])
    train.fill_defaults(args)
    tuned, _ = train.network_for_run(args, ['cat', 'dog'], log=lambda m: None)
    assert tuned.classifier.out_features == 2 and torch.equal(
        tuned.cells[3].ops[0].depthwise1.weight, cached.cells[3].ops[0].depthwise1.weight)
    with pytest.raises(model.CheckpointError, match='IMAGENET1K_V1: no such weights file'):
        hubconf.pnasnet5mobile(weights='IMAGENET1K_V1')  # neither a file nor one of its weights


def test_timms_copy_of_large_is_converted_checked_and_cached(tmp_path, monkeypatch):
    """source='timm': timm's pnasnet5large weights (here random ones, served by a patched fetch)
    mapped and checked against timm's model, cached beside the TF-made cache, then read alone."""
    import pretrained
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'home'))
    torch.manual_seed(5)
    state = timm.create_model('pnasnet5large', pretrained=False).state_dict()
    fetched = []
    monkeypatch.setattr(pretrained, 'timm_state_dict', lambda: fetched.append(1) or state)
    said = []
    net = hubconf.pnasnet5large(pretrained=True, source='timm')
    path = pretrained.cached_weights('IMAGENET1K_TF', log=said.append, source='timm')
    assert fetched == [1] and said == [] and path.endswith('pnasnet5large_timm_in1k.safetensors')
    assert net.num_classes == 1000 and net.auxiliary_head is None
    import timm_weights
    ours = net.state_dict()
    pairs = timm_weights.timm_name_map(net)
    assert len(pairs) == len(state) and all(torch.equal(ours[a], state[b]) for a, b in pairs)
    with pytest.raises(pretrained.ConvertError, match='timm has PNASNet-5 Large only'):
        pretrained.cached_weights(NAME, source='timm')
