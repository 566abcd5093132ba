"""The weights objects (pretrained.py, through hubconf as torchvision has them): the transform is
main.py's preprocessing bit for bit, the meta holds the published facts, the URL follows the
mirror variables."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

import hubconf
import model
import pretrained
import utils


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


def test_url_is_the_release_unless_a_mirror_is_named(monkeypatch):
    weights = pretrained.PNASNet5_Mobile_Weights.IMAGENET1K_TF
    monkeypatch.delenv('PNASNET_MOBILE_URL', raising=False)
    assert weights.url == 'http://download.tensorflow.org/models/pnasnet-5_mobile_2017_12_13.tar.gz'
    monkeypatch.setenv('PNASNET_MOBILE_URL', 'file:///srv/mirror/pnasnet-5_mobile_2017_12_13.tar.gz')
    assert weights.url == 'file:///srv/mirror/pnasnet-5_mobile_2017_12_13.tar.gz'
    assert pretrained.PNASNet5_Large_Weights.IMAGENET1K_TF.url.endswith('pnasnet-5_large_2017_12_13.tar.gz')
