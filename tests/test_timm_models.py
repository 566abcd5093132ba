"""timm's own model tests (tests/test_models.py of huggingface/pytorch-image-models), unchanged,
on this port's PNASNet-5 Large and Mobile registered in timm's registry as pnasnet5large_port
and pnasnet5mobile_port (hubconf.register_timm, loaded by the tests/timm_registry.py plugin).

The file is not part of this repository: .ci/run takes it from the source distribution of the
installed timm version (the package registry's) and points TIMM_TEST_MODELS at it; elsewhere, set
TIMM_TEST_MODELS or keep a checkout of timm's repository beside this one
(../pytorch-image-models). Without it the test skips, except under CI (CI=true), where a missing
file is a failure. docs/interop.md says how to run it."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CANDIDATES = [os.environ.get('TIMM_TEST_MODELS', ''),
              os.path.join(os.path.dirname(ROOT), 'pytorch-image-models', 'tests', 'test_models.py')]
NAMES = ('pnasnet5large_port', 'pnasnet5mobile_port')
# the tests of timm's file that take a model without pretrained weights
TESTS = ('test_model_forward', 'test_model_backward', 'test_model_default_cfgs',
         'test_model_forward_features', 'test_model_forward_torchscript', 'test_model_forward_fx',
         'test_model_backward_fx', 'test_model_forward_fx_torchscript')


def timm_test_file():
    return next((p for p in CANDIDATES if p and os.path.isfile(p)), None)


def test_timms_own_model_tests_pass_on_both_presets(tmp_path):
    path = timm_test_file()
    if path is None:
        if os.environ.get('CI') or os.environ.get('TIMM_TEST_MODELS'):
            pytest.fail(f'timm\'s tests/test_models.py not found at TIMM_TEST_MODELS='
                        f'{os.environ.get("TIMM_TEST_MODELS")!r}; .ci/run fetches it')
        pytest.skip('timm\'s tests/test_models.py not found (set TIMM_TEST_MODELS)')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, 'tests'), ROOT]))
    run = subprocess.run([sys.executable, '-m', 'pytest', '-p', 'timm_registry', '-p', 'no:cacheprovider',
                          '-q', '-rA', '-p', 'no:warnings', '--rootdir', str(tmp_path), path,
                          '-k', ' or '.join(NAMES)], capture_output=True, text=True, env=env,
                         cwd=str(tmp_path))
    passed = set(re.findall(r'^PASSED \S*::(\w+)\[\w+-(\w+)\]', run.stdout, re.M))
    assert passed == {(t, n) for t in TESTS for n in NAMES}, run.stdout[-4000:]
    assert run.returncode == 0, run.stdout[-4000:]
