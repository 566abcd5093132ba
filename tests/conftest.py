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
    import convert
    return convert.aux_logits_as_tf(net, x)


def within_tf_bound(got, ref) -> bool:
    """max|got - ref| within the bound of every comparison with TensorFlow: TF_REL_TOL of the
    largest magnitude of ``ref`` (tf_reference.tf_tolerance)."""
    import numpy as np
    import tf_reference
    got, ref = np.asarray(got), np.asarray(ref)
    return got.shape == ref.shape and float(np.abs(got - ref).max()) <= tf_reference.tf_tolerance(np.abs(ref).max())


def within_reported_bounds(report) -> bool:
    """Every endpoint convert.convert compared with TF within the bound it reported."""
    return all(report['diffs'][k] <= bound for k, bound in report['bounds'].items())


def pytest_configure(config):
    config.addinivalue_line('markers', 'tf: compares with TensorFlow; .ci/run runs these with '
                                       'TF_ENABLE_ONEDNN_OPTS=0 and =1')


def pytest_collection_modifyitems(config, items):
    """Marks every test that runs TensorFlow, through the tf or small_checkpoint fixtures
    (directly or through another fixture), as ``tf``."""
    for item in items:
        if {'tf', 'small_checkpoint'} & set(getattr(item, 'fixturenames', ())):
            item.add_marker(pytest.mark.tf)
