"""The same genotype-driven network in TensorFlow, with TF-Slim's variable names: the twin that
``convert.py`` and the tests check the PyTorch port against.

It is written on ``tf.compat.v1`` / ``tf.nn`` ops (tf-slim does not import on current TensorFlow)
and follows TF-Slim's ``pnasnet.py`` / ``nasnet_utils.py`` in its own way: NHWC, hidden states in
TF order (0 = previous cell), the previous-layer reduction decided from the tensors' shapes, 'SAME'
padding left to TensorFlow. Its variables are named and shaped as in the official checkpoints
(``data/pnasnet5_large_331.vars.tsv``), so it can restore them and write look-alikes with random
weights for tests.

    python tf_reference.py --make-checkpoint /tmp/rand/model.ckpt --preset large --filters 24
"""
import argparse
import os
import re
import sys
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

import genotypes as genotypes_mod
from model import PNASNetConfig, aux_kernel_size
from utils import import_tf, tf_startup_filtered

BN_EPS = 1e-3
# Every comparison of the port with TensorFlow (convert.py's check 2, the tests) allows
# max|port - TF| <= TF_REL_TOL * max|TF| on each compared tensor: logits, features, aux logits.
# The fp32 floor it rests on is TF against itself, TF_ENABLE_ONEDNN_OPTS=0 against =1 (another
# summation order), measured by `python convert.py --floor PREFIX`: up to 4.9e-5 of max|TF|
# (the features of a release-shaped PNASNet-5 Large); the bound is four times that. A wrong
# padding or a swapped tensor misses it by orders of magnitude (tests/test_convert.py).
# docs/conversion.md has the figures.
TF_REL_TOL = 2e-4


def tf_tolerance(scale: float) -> float:
    """The bound on max|port - TF| for a tensor whose largest magnitude in TF is ``scale``."""
    return TF_REL_TOL * max(float(scale), float(np.finfo(np.float32).tiny))
AUX_BN = re.compile(r'^aux_\d+/aux_logits/aux_bn[01]/')  # absent from the published checkpoints
TF_OP_NAMES = {  # TF-Slim's own names for the PNAS ops, used in variable scopes
    'sep_conv_3x3': 'separable_3x3', 'sep_conv_5x5': 'separable_5x5',
    'sep_conv_7x7': 'separable_7x7', 'dil_conv_3x3': 'dil_3x3', 'dil_conv_5x5': 'dil_5x5',
}


def _same_pads(n: int, k: int, s: int):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


class _Builder:
    """Builds the graph; in ``calibrate`` mode every BN normalizes with its batch moments and
    records them, so that a random checkpoint can be given statistics that keep activations
    near unit scale."""

    def __init__(self, tf, calibrate: bool = False):
        self.tf = tf
        self.v1 = tf.compat.v1
        self.calibrate = calibrate
        self.moments: Dict[str, object] = {}

    def var(self, name, shape):
        return self.v1.get_variable(name, shape, self.tf.float32,
                                    initializer=self.v1.zeros_initializer())

    def conv(self, x, filters, kernel, scope, stride=(1, 1), padding='SAME'):
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        with self.v1.variable_scope(scope):
            w = self.var('weights', [kh, kw, int(x.shape[-1]), filters])
        return self.tf.nn.conv2d(x, w, [1, sh, sw, 1], padding)

    def bn(self, x, scope):
        tf = self.tf
        c = int(x.shape[-1])
        with self.v1.variable_scope(scope):
            gamma, beta = self.var('gamma', [c]), self.var('beta', [c])
            mean, variance = self.var('moving_mean', [c]), self.var('moving_variance', [c])
        if self.calibrate:
            mean_b, var_b = tf.nn.moments(x, [0, 1, 2])
            self.moments[mean.op.name] = mean_b
            self.moments[variance.op.name] = var_b
            mean, variance = mean_b, var_b
        y, _, _ = self.v1.nn.fused_batch_norm(x, gamma, beta, mean, variance, epsilon=BN_EPS,
                                              is_training=False)
        return y

    def depthwise(self, x, k, stride, rate, scope_name):
        """Depthwise KxK 'SAME'; TF has no strided dilated kernel, so that case is computed as the
        stride-1 dilated conv on the stride's 'SAME' padding, subsampled."""
        tf = self.tf
        c = int(x.shape[-1])
        w = self.var(scope_name, [k, k, c, 1])
        if rate == 1 or stride == 1:
            return tf.nn.depthwise_conv2d(x, w, [1, stride, stride, 1], 'SAME',
                                          dilations=[rate, rate])
        keff = (k - 1) * rate + 1
        ph = _same_pads(int(x.shape[1]), keff, stride)
        pw = _same_pads(int(x.shape[2]), keff, stride)
        x = tf.pad(x, [[0, 0], list(ph), list(pw), [0, 0]])
        y = tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], 'VALID', dilations=[rate, rate])
        return y[:, ::stride, ::stride, :]

    # --- ops, in TF-Slim's nasnet_utils form ---------------------------------------------------
    def op(self, x, name, filters, stride):
        tf, v1 = self.tf, self.v1
        c_in = int(x.shape[-1])
        if name.startswith('sep_conv'):
            k = int(name[-1])
            base = TF_OP_NAMES[name]
            for rep in (1, 2):
                x = tf.nn.relu(x)
                with v1.variable_scope(f'{base}_{rep}'):
                    dw = self.var('depthwise_weights', [k, k, int(x.shape[-1]), 1])
                    pw = self.var('pointwise_weights', [1, 1, int(x.shape[-1]), filters])
                x = tf.nn.separable_conv2d(x, dw, pw, [1, stride, stride, 1], 'SAME')
                x = self.bn(x, f'bn_sep_{k}x{k}_{rep}')
                stride = 1
            return x
        if name in ('max_pool_3x3', 'avg_pool_3x3'):
            pool = tf.nn.max_pool2d if name.startswith('max') else tf.nn.avg_pool2d
            x = pool(x, 3, stride, 'SAME')
            if c_in != filters:
                x = self.bn(self.conv(x, filters, 1, '1x1'), 'bn_1')
            return x
        if name == 'skip_connect':  # TF-Slim's 'none'
            if stride > 1 or c_in != filters:
                x = self.bn(self.conv(tf.nn.relu(x), filters, 1, '1x1', stride), 'bn_1')
            return x
        if name == 'none':  # DARTS' zero op
            n = tf.shape(x)[0]
            h, w = -(-int(x.shape[1]) // stride), -(-int(x.shape[2]) // stride)
            return tf.zeros(tf.stack([n, h, w, filters]), x.dtype)
        if name.startswith('dil_conv'):
            k = int(name[-1])
            base = TF_OP_NAMES[name]
            x = tf.nn.relu(x)
            with v1.variable_scope(base):
                x = self.depthwise(x, k, stride, 2, 'depthwise_weights')
                pw = self.var('pointwise_weights', [1, 1, c_in, filters])
            x = tf.nn.conv2d(x, pw, [1, 1, 1, 1], 'VALID')
            return self.bn(x, 'bn_1')
        if name == 'conv_7x1_1x7':
            x = tf.nn.relu(x)
            x = self.conv(x, filters, (1, 7), 'conv_1x7', (1, stride))
            x = self.conv(x, filters, (7, 1), 'conv_7x1', (stride, 1))
            return self.bn(x, 'bn_1')
        raise ValueError(f'tf_reference: no TensorFlow form for op {name!r}')

    def factorized_reduction(self, x, filters):
        tf = self.tf
        half = int(filters / 2)
        path1 = self.conv(x[:, ::2, ::2, :], half, 1, 'path1_conv')
        path2 = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])[:, 1:, 1:, :]
        path2 = self.conv(path2[:, ::2, ::2, :], half, 1, 'path2_conv')
        return self.bn(tf.concat([path1, path2], axis=3), 'final_path_bn')

    def cell(self, net, prev_layer, genotype, filters, stride, reduction, scope):
        tf, v1 = self.tf, self.v1
        ops = genotype.reduce if reduction else genotype.normal
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        with v1.variable_scope(scope):
            if prev_layer is None:
                prev_layer = net
            elif int(prev_layer.shape[2]) != int(net.shape[2]):
                prev_layer = self.factorized_reduction(tf.nn.relu(prev_layer), filters)
            elif int(prev_layer.shape[-1]) != filters:
                prev_layer = self.bn(self.conv(tf.nn.relu(prev_layer), filters, 1, 'prev_1x1'),
                                     'prev_bn')
            net = self.bn(self.conv(tf.nn.relu(net), filters, 1, '1x1'), 'beginning_bn')
            hidden = [net, prev_layer]  # TF order: 0 is the previous cell
            for i in range(len(ops) // 2):
                with v1.variable_scope(f'comb_iter_{i}'):
                    outs = []
                    for side, (name, index) in zip(('left', 'right'), ops[2 * i:2 * i + 2]):
                        tf_index = {0: 1, 1: 0}.get(index, index)
                        s = stride if tf_index < 2 else 1
                        with v1.variable_scope(side):
                            outs.append(self.op(hidden[tf_index], name, filters, s))
                    hidden.append(outs[0] + outs[1])
            return tf.concat([hidden[c] for c in concat], axis=3)

    def aux_head(self, net, num_classes, scope):
        tf, v1 = self.tf, self.v1
        with v1.variable_scope(scope), v1.variable_scope('aux_logits'):
            x = tf.nn.avg_pool2d(tf.nn.relu(net), 5, 3, 'VALID')
            x = tf.nn.relu(self.bn(self.conv(x, 128, 1, 'proj'), 'aux_bn0'))
            x = self.conv(x, 768, (int(x.shape[1]), int(x.shape[2])), 'Conv', padding='VALID')
            x = tf.nn.relu(self.bn(x, 'aux_bn1'))
            x = tf.reshape(x, [-1, 768])
            return self.fc(x, num_classes, 'FC')

    def fc(self, x, num_classes, scope):
        with self.v1.variable_scope(scope):
            w = self.var('weights', [int(x.shape[-1]), num_classes])
            b = self.var('biases', [num_classes])
        return self.tf.matmul(x, w) + b

    def network(self, images, config: PNASNetConfig, aux: bool = False):
        """images: NHWC float32 of a static size. Returns the endpoints dict."""
        tf = self.tf
        genotype = genotypes_mod.get(config.genotype)
        ends = {}
        if config.stem == 'cifar':  # nasnet.py's _cifar_stem: 3x3 SAME, no stem cells
            net = self.bn(self.conv(images, config.stem_filters, 3, 'l1_stem_3x3'), 'l1_stem_bn')
        else:
            net = self.conv(images, config.stem_filters, 3, 'conv0', 2, 'VALID')
            net = self.bn(net, 'conv0_bn')
        outputs = [None, net]
        scaling = 1.0 / config.filter_scaling_rate ** 2
        for k in range(config.num_stem_cells):
            net = self.cell(net, outputs[-2], genotype, int(config.num_conv_filters * scaling), 2,
                            True, f'cell_stem_{k}')
            outputs.append(net)
            scaling *= config.filter_scaling_rate
        scaling = 1.0
        for i in range(config.num_cells):
            reduction = i in config.reduction_indices
            if reduction:
                scaling *= config.filter_scaling_rate
            net = self.cell(net, outputs[-2], genotype, int(config.num_conv_filters * scaling),
                            2 if reduction else 1, reduction, f'cell_{i}')
            outputs.append(net)
            if aux and i == config.aux_cell_index:
                ends['aux_logits'] = self.aux_head(net, config.num_classes, f'aux_{i}')
        with self.v1.variable_scope('final_layer'):
            pooled = tf.reduce_mean(tf.nn.relu(net), [1, 2])
            ends['global_pool'] = pooled
            ends['logits'] = self.fc(pooled, config.num_classes, 'FC')
        return ends


class _Session:
    """A tf.compat.v1.Session whose runs keep TensorFlow's start-up notices (the MLIR pass line of
    a first run, where TF_CPP_MIN_LOG_LEVEL lets INFO through) off the terminal."""

    def __init__(self, tf, graph, threads: int = 2):
        cfg = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                       inter_op_parallelism_threads=1)
        with tf_startup_filtered():
            self.sess = tf.compat.v1.Session(graph=graph, config=cfg)

    def run(self, *args, **kwargs):
        with tf_startup_filtered():
            return self.sess.run(*args, **kwargs)

    def close(self):
        self.sess.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def variable_shapes(config: PNASNetConfig, image_size: Optional[int] = None,
                    aux: bool = True) -> Dict[str, list]:
    """Name -> shape of every model variable of the TF graph, in creation order."""
    tf = import_tf()
    size = image_size or config.image_size
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3])
        _Builder(tf).network(images, config, aux=aux)
        return {v.op.name: v.shape.as_list() for v in tf.compat.v1.global_variables()}


def random_weights(shapes: Dict[str, list], seed: int = 0) -> Dict[str, np.ndarray]:
    """Random weights of sensible scale; BN statistics are set by calibration afterwards."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        leaf = name.rsplit('/', 1)[-1]
        if leaf in ('weights', 'pointwise_weights', 'depthwise_weights'):
            fan_in = int(np.prod(shape[:-1])) if leaf != 'depthwise_weights' else shape[0] * shape[1]
            value = rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)
            if name.endswith('FC/weights'):
                value *= 0.3  # logits of unit scale, like a trained network's
        elif leaf == 'gamma':
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf in ('beta', 'biases'):
            value = rng.normal(0.0, 0.1, shape)
        elif leaf == 'moving_mean':
            value = np.zeros(shape)
        elif leaf == 'moving_variance':
            value = np.ones(shape)
        else:
            raise ValueError(f'unexpected variable {name}')
        out[name] = value.astype(np.float32)
    return out


def calibration_images(size: int, n: int = 4, seed: int = 1) -> np.ndarray:
    """Smooth random images in [-1, 1], NHWC: like natural images, not white noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (n, 8, 8, 3))
    ys = np.linspace(0, 7, size)
    i0 = np.floor(ys).astype(int).clip(0, 6)
    f = (ys - i0)[None, :, None, None]
    rows = coarse[:, i0] * (1 - f) + coarse[:, i0 + 1] * f
    f = (ys - i0)[None, None, :, None]
    img = rows[:, :, i0] * (1 - f) + rows[:, :, i0 + 1] * f
    return (img + rng.normal(0, 0.1, img.shape)).clip(-1, 1).astype(np.float32)


CHECK_SEED = 2018  # the images of every check against TF: convert.py's, the floor's, the tests'


def check_images(size: int, n: int = 2, seed: int = CHECK_SEED):
    """The test batch of a comparison with TF: ``calibration_images`` as TF takes them (NHWC
    NumPy) and as the port takes them (an NCHW float32 tensor), the same numbers."""
    import torch
    images = calibration_images(size, n=n, seed=seed)
    return images, torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def make_random_checkpoint(prefix: str, config: PNASNetConfig, seed: int = 0, aux: bool = True,
                           image_size: Optional[int] = None,
                           eval_images: Sequence[np.ndarray] = (),
                           release: bool = False) -> Tuple[dict, list]:
    """Writes a TF checkpoint with TF-Slim's names, random weights and BN statistics calibrated on
    smooth random images (so activations and logits stay near unit scale), plus a
    ``global_step`` as the official files have. ``release``: shaped as the published files are,
    without the aux head's BatchNorms (``aux_*/aux_logits/aux_bn0|1/*``), which are then left
    out of the values returned too.

    ``eval_images`` (NHWC batches, of sizes whose aux head has the same kernel as
    ``image_size``'s) are run through the finished network in the same graph, which saves
    building it again. Returns (the values written, the endpoints of each eval batch).
    """
    tf = import_tf()
    v1 = tf.compat.v1
    size = image_size or config.image_size
    graph = tf.Graph()
    with graph.as_default():
        with v1.variable_scope(v1.get_variable_scope(), reuse=v1.AUTO_REUSE):
            images = v1.placeholder(tf.float32, [None, size, size, 3])
            builder = _Builder(tf, calibrate=True)
            builder.network(images, config, aux=aux)
            model_vars = v1.global_variables()
            towers = []
            for batch in eval_images:
                ph = v1.placeholder(tf.float32, [None] + list(batch.shape[1:]))
                aux_fits = aux and aux_kernel_size(config, batch.shape[1]) == aux_kernel_size(config, size)
                towers.append((ph, _Builder(tf).network(ph, config, aux=aux_fits)))
        if len(v1.global_variables()) != len(model_vars):
            raise ValueError('eval_images need sizes whose aux head matches image_size\'s')
        step = v1.train.get_or_create_global_step()
        values = random_weights({v.op.name: v.shape.as_list() for v in model_vars}, seed)
        with _Session(tf, graph) as sess:
            # one run per step: each new set of fetches costs TF a graph pruning
            sess.run([step.initializer] + [v.initializer for v in model_vars],
                     {v.initial_value: values[v.op.name] for v in model_vars})
            names = sorted(builder.moments)
            stats = sess.run([builder.moments[n] for n in names],
                             {images: calibration_images(size, seed=seed + 1)})
            values.update({n: s.astype(np.float32) for n, s in zip(names, stats)})
            stat_vars = [v for v in model_vars if v.op.name in builder.moments]
            sess.run([v.initializer for v in stat_vars],
                     {v.initial_value: values[v.op.name] for v in stat_vars})
            outputs = [sess.run(ends, {ph: batch}) for (ph, ends), batch in zip(towers, eval_images)]
            os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
            saved = [v for v in model_vars if not (release and AUX_BN.match(v.op.name))]
            v1.train.Saver(saved + [step]).save(sess.sess, prefix, write_meta_graph=False)
    if release:
        values = {name: value for name, value in values.items() if not AUX_BN.match(name)}
    return values, outputs


def write_checkpoint(prefix: str, values: Dict[str, np.ndarray]) -> None:
    """Writes ``values`` (TF name -> array) as a TF checkpoint, e.g. to make a broken one: the
    V2 format a ``tf.train.Saver`` writes, by the op that writes it, without building a graph."""
    tf = import_tf()
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    names = sorted(values)
    with tf_startup_filtered():
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[''] * len(names),
                          tensors=[tf.constant(np.asarray(values[n])) for n in names])


class TFModel:
    """The TF twin restored from a checkpoint, kept open for repeated runs (the benchmark's peer)."""

    def __init__(self, prefix: str, config: PNASNetConfig, height: int, width: int,
                 aux: bool = False, threads: int = 2):
        tf = import_tf()
        v1 = tf.compat.v1
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.images = v1.placeholder(tf.float32, [None, height, width, 3])
            self.ends = _Builder(tf).network(self.images, config, aux=aux)
            self.sess = _Session(tf, self.graph, threads)
            with tf_startup_filtered():  # restoring is the graph's first run
                v1.train.Saver(v1.global_variables()).restore(self.sess.sess, prefix)

    def __call__(self, images_nhwc: np.ndarray, fetch: Optional[str] = None):
        fetches = self.ends if fetch is None else self.ends[fetch]
        return self.sess.run(fetches, {self.images: images_nhwc})

    def close(self):
        self.sess.close()


def run_checkpoint(prefix: str, config: PNASNetConfig, images_nhwc: np.ndarray,
                   aux: bool = False) -> Dict[str, np.ndarray]:
    """Restores ``prefix`` into the TF graph and returns logits, global_pool (and aux_logits)."""
    net = TFModel(prefix, config, images_nhwc.shape[1], images_nhwc.shape[2], aux=aux)
    try:
        return net(images_nhwc)
    finally:
        net.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='More: docs/conversion.md')
    ap.add_argument('--make-checkpoint', metavar='PREFIX', required=True,
                      help='write a random-weight TF-Slim-style checkpoint here')
    ap.add_argument('--preset', choices=['large', 'mobile'], default='large')
    ap.add_argument('--filters', type=int, help='num_conv_filters (default: the preset\'s)')
    ap.add_argument('--cells', type=int, help='num_cells (default: the preset\'s)')
    ap.add_argument('--image-size', type=int, help='sets the aux head kernel (default: preset\'s)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--release', action='store_true',
                    help='leave out the aux head\'s BatchNorms, as the published checkpoints do')
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in (('num_conv_filters', args.filters), ('num_cells', args.cells),
                                   ('image_size', args.image_size)) if v is not None}
    config = getattr(PNASNetConfig, args.preset)(**overrides)
    values, _ = make_random_checkpoint(args.make_checkpoint, config, seed=args.seed,
                                       release=args.release)
    print(f'wrote {args.make_checkpoint} ({len(values)} variables, '
          f'{sum(v.size for v in values.values()):,} numbers)')
    return 0


if __name__ == '__main__':
    if '--floor' in sys.argv[1:]:
        # the floor moved to convert.py, beside the check whose bound it measures; the old
        # command still works (`--size N` is convert.py's `--image-size N`)
        import convert
        sys.exit(convert.main(['--image-size' if a == '--size' else a for a in sys.argv[1:]]))
    sys.exit(main())
