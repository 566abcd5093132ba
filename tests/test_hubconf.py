"""hubconf.py through torch.hub.load(..., source='local'), as users call it."""
import os

import pytest
import torch

import model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def mobile_weights(tmp_path_factory):
    torch.manual_seed(0)
    net = model.NetworkImageNet(model.PNASNetConfig.mobile(num_conv_filters=8, auxiliary=True))
    path = tmp_path_factory.mktemp('hub') / 'mobile.pth'
    torch.save({'config': net.config.to_dict(), 'state_dict': net.state_dict()}, path)
    return str(path), net


@pytest.mark.quick
def test_both_entry_points_without_weights():
    large = torch.hub.load(ROOT, 'pnasnet5large', source='local', num_conv_filters=8)
    mobile = torch.hub.load(ROOT, 'pnasnet5mobile', source='local', num_classes=10)
    assert large.config.num_cells == 12 and large.config.image_size == 331
    assert mobile.config.num_cells == 9 and mobile.classifier.out_features == 10


@pytest.mark.quick
def test_local_weights_with_num_classes_and_features_only(mobile_weights):
    path, ref = mobile_weights
    net = torch.hub.load(ROOT, 'pnasnet5mobile', source='local', weights=path, num_classes=5)
    assert net.classifier.out_features == 5 and net.config.num_classes == 5
    assert torch.equal(net.cells[3].ops[0].depthwise1.weight, ref.cells[3].ops[0].depthwise1.weight)
    feats = torch.hub.load(ROOT, 'pnasnet5mobile', source='local', weights=path, features_only=True,
                           out_indices=(1, 4))
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        maps = feats(x)
        want = ref.eval().forward_stages(x, (1, 4))
    assert len(maps) == 2 and all(torch.equal(a, b) for a, b in zip(maps, want))
    assert feats.feature_info.channels((1, 4)) == [ref.feature_info[1]['num_chs'], ref.num_features]
