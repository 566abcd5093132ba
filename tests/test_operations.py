"""Every padded op against TensorFlow at odd and even sizes, strides 1 and 2."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import tf_reference
import tf_weights
from operations import (OPS, AvgPool2dSame, Conv2dSame, FactorizedReduce, MaxPool2dSame,
                        same_padding)

SIZES = [11, 12, 41, 42]
rng = np.random.default_rng(0)


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.quick
def test_same_padding_puts_the_odd_pixel_after():
    assert same_padding(42, 3, 2) == (0, 1)
    assert same_padding(42, 5, 2) == (1, 2)
    assert same_padding(41, 5, 2) == (2, 2)
    assert same_padding(12, 3, 1) == (1, 1)
    assert same_padding(12, 3, 2, dilation=2) == (1, 2)
    assert same_padding(7, 1, 2) == (0, 0)


@pytest.mark.parametrize('k', [3, 5, 7])
def test_depthwise_conv_matches_tf(tf, k):
    for n in SIZES:
        for s in (1, 2):
            x = rng.standard_normal((2, n, n, 4)).astype(np.float32)
            w = rng.standard_normal((k, k, 4, 1)).astype(np.float32)
            ref = tf.nn.depthwise_conv2d(x, w, [1, s, s, 1], 'SAME').numpy()
            conv = Conv2dSame(4, 4, k, s, groups=4)
            conv.weight.data = torch.from_numpy(w.transpose(2, 3, 0, 1).copy())
            got = nhwc(conv(nchw(x)))
            assert got.shape == ref.shape, (n, s)
            assert np.abs(got - ref).max() < 1e-5, (n, k, s)


def test_full_conv_and_rectangular_kernels_match_tf(tf):
    for n in SIZES:
        for s in (1, 2):
            for kernel, stride in (((3, 3), (s, s)), ((1, 7), (1, s)), ((7, 1), (s, 1))):
                x = rng.standard_normal((1, n, n + 1, 3)).astype(np.float32)
                w = rng.standard_normal(kernel + (3, 5)).astype(np.float32)
                ref = tf.nn.conv2d(x, w, [1, *stride, 1], 'SAME').numpy()
                conv = Conv2dSame(3, 5, kernel, stride)
                conv.weight.data = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
                got = nhwc(conv(nchw(x)))
                assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-4, (n, kernel, stride)


def test_dilated_depthwise_matches_tf(tf):
    for n in SIZES:
        for k in (3, 5):
            x = rng.standard_normal((1, n, n, 4)).astype(np.float32)
            w = rng.standard_normal((k, k, 4, 1)).astype(np.float32)
            conv1 = Conv2dSame(4, 4, k, 1, dilation=2, groups=4)
            conv2 = Conv2dSame(4, 4, k, 2, dilation=2, groups=4)
            for c in (conv1, conv2):
                c.weight.data = torch.from_numpy(w.transpose(2, 3, 0, 1).copy())
            ref1 = tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], 'SAME', dilations=[2, 2]).numpy()
            assert np.abs(nhwc(conv1(nchw(x))) - ref1).max() < 1e-5
            # TF has no strided dilated kernel: the stride-1 one on stride 2's SAME padding, subsampled
            pads = same_padding(n, k, 2, 2)
            xp = np.pad(x, [(0, 0), pads, pads, (0, 0)])
            ref2 = tf.nn.depthwise_conv2d(xp, w, [1, 1, 1, 1], 'VALID', dilations=[2, 2]).numpy()
            ref2 = ref2[:, ::2, ::2]
            got2 = nhwc(conv2(nchw(x)))
            assert got2.shape == ref2.shape and np.abs(got2 - ref2).max() < 1e-5, (n, k)


@pytest.mark.quick
def test_pools_match_tf(tf):
    for n in SIZES:
        for s in (1, 2):
            x = rng.standard_normal((2, n, n, 3)).astype(np.float32)
            ref_max = tf.nn.max_pool2d(x, 3, s, 'SAME').numpy()
            ref_avg = tf.nn.avg_pool2d(x, 3, s, 'SAME').numpy()
            assert np.array_equal(nhwc(MaxPool2dSame(3, s)(nchw(x))), ref_max), (n, s)
            got_avg = nhwc(AvgPool2dSame(3, s)(nchw(x)))
            assert got_avg.shape == ref_avg.shape and np.abs(got_avg - ref_avg).max() < 1e-6, (n, s)


def test_symmetric_padding_differs_only_where_tf_pads_asymmetrically(tf):
    x = rng.standard_normal((1, 12, 12, 2)).astype(np.float32)
    for n, s, same in ((12, 1, True), (11, 2, True), (12, 2, False)):
        xi = x[:, :n, :n]
        ref = tf.nn.max_pool2d(xi, 3, s, 'SAME').numpy()
        got = nhwc(MaxPool2dSame(3, s, padding='symmetric')(nchw(xi)))
        assert np.array_equal(got, ref) == same, (n, s)


def _tf_op(tf, name, x, c_out, stride):
    """Runs the TF twin's form of op ``name`` on random weights; returns (output, weights)."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        ph = v1.placeholder(tf.float32, x.shape)
        with v1.variable_scope('op'):
            y = tf_reference._Builder(tf).op(ph, name, c_out, stride)
        variables = v1.global_variables()
        values = tf_reference.random_weights({v.op.name: v.shape.as_list() for v in variables})
        for k in values:
            if k.endswith('moving_variance'):
                values[k] = rng.uniform(0.5, 2.0, values[k].shape).astype(np.float32)
            if k.endswith('moving_mean'):
                values[k] = rng.normal(0, 0.5, values[k].shape).astype(np.float32)
        with v1.Session(graph=graph) as sess:
            sess.run([v.initializer for v in variables],
                     {v.initial_value: values[v.op.name] for v in variables})
            return sess.run(y, {ph: x}), values


@pytest.mark.parametrize('name', sorted(OPS))
def test_every_op_matches_the_tf_twin(tf, name):
    for n in (11, 12):
        for stride in (1, 2):
            for c_in, c_out in ((6, 6), (4, 6)):
                x = rng.standard_normal((2, n, n, c_in)).astype(np.float32)
                ref, values = _tf_op(tf, name, x, c_out, stride)
                holder = nn.Module()
                holder.op = OPS[name](c_in, c_out, stride, 'tf')
                state = holder.state_dict()
                for pt_key, tf_name, layout in tf_weights._op_entries(holder.op, 'op', 'op'):
                    state[pt_key].copy_(torch.from_numpy(
                        np.ascontiguousarray(tf_weights.tf_to_torch(values[tf_name], layout))))
                mapped = {e[1] for e in tf_weights._op_entries(holder.op, 'op', 'op')}
                assert mapped == set(values), name
                holder.eval()
                with torch.no_grad():
                    got = nhwc(holder.op(nchw(x)))
                assert got.shape == ref.shape, (name, n, stride, c_in)
                assert np.abs(got - ref).max() < 1e-4, (name, n, stride, c_in)


def test_factorized_reduce_matches_tf_at_odd_and_even_sizes(tf):
    for n in SIZES:
        for c_out in (8, 9):  # an odd width gives 2 * (c_out // 2) channels, as TF-Slim
            x = rng.standard_normal((1, n, n, 5)).astype(np.float32)
            half = c_out // 2
            w1 = rng.standard_normal((1, 1, 5, half)).astype(np.float32)
            w2 = rng.standard_normal((1, 1, 5, half)).astype(np.float32)
            relu = np.maximum(x, 0)
            p1 = tf.nn.conv2d(relu[:, ::2, ::2], w1, 1, 'VALID')
            p2 = np.pad(relu, [(0, 0), (0, 1), (0, 1), (0, 0)])[:, 1:, 1:][:, ::2, ::2]
            ref = tf.concat([p1, tf.nn.conv2d(p2, w2, 1, 'VALID')], axis=3).numpy()
            fr = FactorizedReduce(5, c_out).eval()
            fr.conv_1.weight.data = torch.from_numpy(w1.transpose(3, 2, 0, 1).copy())
            fr.conv_2.weight.data = torch.from_numpy(w2.transpose(3, 2, 0, 1).copy())
            fr.bn.running_var.fill_(1 - 1e-3)  # BN is then the identity
            with torch.no_grad():
                got = nhwc(fr(nchw(x)))
            assert got.shape == ref.shape == (1, -(-n // 2), -(-n // 2), 2 * half)
            assert np.abs(got - ref).max() < 1e-5, (n, c_out)


@pytest.mark.parametrize('shape', [(1, 1), (1, 6), (7, 1), (5, 8), (12, 9)])
def test_factorized_reduce_matches_tf_on_thin_and_rectangular_maps(tf, shape):
    h, w = shape
    x = rng.standard_normal((2, h, w, 6)).astype(np.float32)
    w1, w2 = (rng.standard_normal((1, 1, 6, 3)).astype(np.float32) for _ in range(2))
    relu = np.maximum(x, 0)
    p1 = tf.nn.conv2d(relu[:, ::2, ::2], w1, 1, 'VALID')
    p2 = np.pad(relu, [(0, 0), (0, 1), (0, 1), (0, 0)])[:, 1:, 1:][:, ::2, ::2]
    ref = tf.concat([p1, tf.nn.conv2d(p2, w2, 1, 'VALID')], axis=3).numpy()
    fr = FactorizedReduce(6, 6).eval()
    fr.conv_1.weight.data = torch.from_numpy(w1.transpose(3, 2, 0, 1).copy())
    fr.conv_2.weight.data = torch.from_numpy(w2.transpose(3, 2, 0, 1).copy())
    fr.bn.running_var.fill_(1 - 1e-3)
    with torch.no_grad():
        got = nhwc(fr(nchw(x)))
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-5
