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
    import utils
    return utils.import_tf()


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
    import tf_weights
    return tf_weights.aux_logits_as_tf(net, x)


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


def free_port() -> int:
    """A TCP port nobody listens on now, for a torchrun test (two test files may run torchrun
    at once, one per xdist worker)."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pytest.ini): a worker per core, at most four (each holds torch and
    TensorFlow; more would not shorten the longest tests)."""
    return max(1, min(4, _cores()))


def _share_the_cores():
    """Under xdist, each worker and the scripts it starts use its share of the cores, not all
    of them: two workers with two threads each on two cores would wait on each other."""
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    if workers > 1:
        threads = max(1, _cores() // workers)
        os.environ.setdefault('OMP_NUM_THREADS', str(threads))
        torch.set_num_threads(threads)


_share_the_cores()


@pytest.fixture(autouse=True)
def _keep_the_threads():
    """A test that sets torch's thread count (a script's main() run in-process) leaves the
    worker's as it was for the tests after it."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def pytest_configure(config):
    config.addinivalue_line('markers', 'tf: compares with TensorFlow; .ci/run runs these with '
                                       'TF_ENABLE_ONEDNN_OPTS=0 and =1')
    config.addinivalue_line('markers', 'quick: the edit-and-test selection, `pytest -m quick`: '
                                       'a fast test or more of every test file (docs/tests.md)')


def pytest_collection_modifyitems(config, items):
    """Marks every test that runs TensorFlow, through the tf or small_checkpoint fixtures
    (directly or through another fixture), as ``tf``."""
    for item in items:
        if {'tf', 'small_checkpoint'} & set(getattr(item, 'fixturenames', ())):
            item.add_marker(pytest.mark.tf)


class _Call:
    """Pickles as a call of ``fn(*args)``: what a crafted file makes an unpickler run."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __call__(self, *a):
        raise AssertionError('only pickled, never called here')

    def __reduce__(self):
        return self.fn, self.args


@pytest.fixture
def evil_pickles(tmp_path):
    """Pickles that would write ``tmp_path / 'ran'`` (or import a module, or reach a function
    through getattr) when plainly unpickled, each hidden in the dict a table or batch holds:
    builtins.eval, exec, getattr and __import__, os.system, subprocess, and a call whose function
    is itself a call (nested reduce). Returns (name -> bytes, the marker path)."""
    import builtins
    import pickle
    import subprocess
    marker = str(tmp_path / 'ran')
    write = f"open({marker!r}, 'w').write('x')"
    payloads = {
        'eval': _Call(builtins.eval, write),
        'exec': _Call(builtins.exec, write),
        'getattr': _Call(builtins.getattr, _Call(builtins.__import__, 'os'), 'system'),
        '__import__': _Call(builtins.__import__, 'os'),
        'os.system': _Call(os.system, f'touch {marker}'),
        'subprocess': _Call(subprocess.check_call, ['touch', marker]),
        'nested reduce': _Call(_Call(builtins.getattr, _Call(builtins.__import__, 'os'), 'system'),
                               f'touch {marker}'),
    }
    # protocol 2 names builtins '__builtin__' (Python 2's), protocol 4 'builtins': both are tried
    return {f'{name} (protocol {proto})': pickle.dumps({'data': [1, 2, p], 'labels': [0]}, protocol=proto)
            for name, p in payloads.items() for proto in (2, 4)}, marker


def assert_every_payload_refused(load, error, payloads, marker, folder, suffix):
    """``load(path)`` of each payload written to ``folder`` raises ``error`` with one line naming
    the file and 'not allowed', and no payload ran (``marker`` was never written)."""
    import pytest
    for name, data in payloads.items():
        path = os.path.join(str(folder), f'evil{suffix}')
        with open(path, 'wb') as f:
            f.write(data)
        with pytest.raises(error) as err:
            load(path)
        message = str(err.value)
        assert path in message and 'not allowed' in message and '\n' not in message, (name, message)
        assert not os.path.exists(marker), name
