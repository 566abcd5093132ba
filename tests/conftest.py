import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import torch  # noqa: E402
# now, before any test imports TensorFlow: torch._dynamo loads triton, whose native library
# crashes the process when it is loaded after TensorFlow's (torch.load under a dispatch mode, or
# torch.compile, import it late otherwise)
import torch._dynamo  # noqa: E402,F401

torch.manual_seed(0)


@pytest.fixture(scope='session')
def tf():
    import tf_reference
    return tf_reference.import_tf()


@pytest.fixture(scope='session')
def small_checkpoint(tmp_path_factory, tf):
    """A Mobile-shaped random TF checkpoint (F=10: odd stem-cell width) with its aux head,
    and the TF twin's outputs on one image."""
    import tf_reference
    from model import PNASNetConfig
    config = PNASNetConfig.mobile(num_conv_filters=10)
    prefix = str(tmp_path_factory.mktemp('ckpt') / 'model.ckpt')
    images = tf_reference.calibration_images(224, n=1, seed=5)
    values, (ends,) = tf_reference.make_random_checkpoint(prefix, config, seed=3,
                                                          eval_images=[images])
    return {'prefix': prefix, 'config': config, 'values': values, 'images': images, 'ends': ends}


def aux_logits(net, x):
    """Aux logits as TF-Slim computes them: training graph, BN on moving statistics."""
    import torch.nn as nn
    net.train()
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.Dropout)):
            m.eval()
    with torch.no_grad():
        out = net(x)[1]
    net.eval()
    return out
