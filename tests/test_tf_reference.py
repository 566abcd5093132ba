"""The TF twin has the official checkpoints' variables, names and shapes, in order."""
import os

import pytest

import tf_reference
from model import PNASNetConfig

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data')


def read_vars(name):
    out = {}
    with open(os.path.join(DATA, name)) as f:
        for line in f:
            key, shape = line.rstrip('\n').split('\t')
            out[key] = [int(d) for d in shape.split('x')] if shape else []
    return out


@pytest.mark.parametrize('preset, listing', [('large', 'pnasnet5_large_331.vars.tsv'),
                                             ('mobile', 'pnasnet5_mobile_224.vars.tsv')])
def test_variables_match_the_official_checkpoint(tf, preset, listing):
    expected = read_vars(listing)
    assert expected.pop('global_step') == []
    shapes = tf_reference.variable_shapes(getattr(PNASNetConfig, preset)())
    assert list(shapes.items()) == list(expected.items())


@pytest.mark.quick
def test_random_checkpoint_is_calibrated_to_unit_scale(small_checkpoint):
    ends = small_checkpoint['ends']
    assert 0.2 < abs(ends['logits']).max() < 5
    assert 0.2 < abs(ends['aux_logits']).max() < 5
    values = small_checkpoint['values']
    assert all(v.min() >= 0 for k, v in values.items() if k.endswith('moving_variance'))
