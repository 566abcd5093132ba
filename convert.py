"""Converts the official TF-Slim PNASNet-5 checkpoint into a PyTorch weights file, and proves it.

    python convert.py                                   # data/model.ckpt -> data/PNASNet-5_Large.pth
    python convert.py --checkpoint pnasnet-5_mobile_2017_12_13.tar.gz --output data/PNASNet-5_Mobile.pth
    python convert.py --self-test                        # the whole path on random checkpoints, offline

The architecture (stem and cell widths, number of cells, classes, aux head) is read from the
checkpoint's shapes. Every tensor is mapped with a shape assertion; then, as the original port did,
(1) every model tensor of the checkpoint must have been used (bookkeeping variables such as
``global_step`` are listed and ignored) and nothing of the PyTorch model left unset, and (2) the
logits of the PyTorch model and of ``tf_reference.py`` restored from the same checkpoint must agree
on a test image. Only then is the output written (atomically; an existing file is kept unless
``--force``). It holds ``{'config': ..., 'state_dict': ...}`` for ``model.load_pretrained``.
"""
import argparse
import dataclasses
import glob
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

import utils
from model import MIN_IMAGE_SIZE, NetworkImageNet, PNASNetConfig, load_pretrained
from operations import (Conv7x1x1x7, DilConv, FactorizedReduce, Identity, Pool, ReLUConvBN,
                        SepConv)

LOGIT_TOL = 1e-4  # absolute, on logits of unit scale; scaled by max|logit| when they are larger
# Variables that training leaves in a checkpoint but that are not part of the network.
BOOKKEEPING = re.compile(r'(^global_step$)|(/(Momentum|RMSProp(_1)?|Adam(_1)?|ExponentialMovingAverage)$)'
                         r'|(^beta[12]_power$)|(^learning_rate$)')


class ConvertError(RuntimeError):
    """A problem the user can fix; the message names the file or tensor and what to do."""


# --- reading the checkpoint -----------------------------------------------------------------------

def resolve_checkpoint(path: str, workdir: str) -> str:
    """The checkpoint prefix for a prefix, a folder holding one checkpoint, or the official
    ``.tar.gz`` (unpacked into ``workdir``)."""
    if path.endswith(('.tar.gz', '.tgz', '.tar')) and os.path.isfile(path):
        try:
            with tarfile.open(path) as tar:
                tar.extractall(workdir, filter='data')
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ConvertError(f'{path}: cannot unpack the archive ({e}); download it again') from None
        path = workdir
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, '**', '*.index'), recursive=True))
        if len(found) != 1:
            what = 'no checkpoint (*.index)' if not found else f'{len(found)} checkpoints'
            raise ConvertError(f'{path}: holds {what}; pass --checkpoint PREFIX, e.g. '
                               f'{os.path.join(path, "model.ckpt")}')
        return found[0][:-len('.index')]
    if not os.path.exists(path + '.index'):
        raise ConvertError(f'{path}: no checkpoint there (looked for {path}.index); download and '
                           f'unpack pnasnet-5_large_2017_12_13.tar.gz into data/ (see README.md) '
                           f'or pass --checkpoint')
    return path


def read_checkpoint(prefix: str) -> Dict[str, np.ndarray]:
    """All tensors of a TF checkpoint, read without building a graph."""
    from tf_reference import import_tf
    tf = import_tf()
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = reader.get_variable_to_shape_map()
        return {name: np.asarray(reader.get_tensor(name)) for name in names}
    except Exception as e:  # TF raises several types for truncated or foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(f'{prefix}: cannot read the TF checkpoint ({first}); check that both '
                           f'{os.path.basename(prefix)}.index and .data-* are complete') from None


def _shape(tensors, name) -> Tuple[int, ...]:
    if name not in tensors:
        raise ConvertError(f'tensor {name} is missing: this is not a PNASNet-5 TF-Slim checkpoint')
    return tuple(tensors[name].shape)


def infer_config(tensors: Dict[str, np.ndarray]) -> PNASNetConfig:
    """The PNASNet config that the checkpoint's shapes describe."""
    c_stem = _shape(tensors, 'conv0/weights')[3]
    filters = _shape(tensors, 'cell_0/1x1/weights')[3]
    num_cells = 0
    while f'cell_{num_cells}/1x1/weights' in tensors:
        num_cells += 1
    num_classes = _shape(tensors, 'final_layer/FC/biases')[0]
    config = PNASNetConfig(stem_multiplier=c_stem / 32, num_conv_filters=filters,
                           num_cells=num_cells, num_classes=num_classes)
    if (c_stem, filters, num_cells) == (32, 54, 9):
        config.image_size = 224
    aux = [n for n in tensors if n.startswith('aux_') and n.endswith('/aux_logits/Conv/weights')]
    if aux:
        kernel = _shape(tensors, aux[0])[0]
        config.auxiliary = True
        config.image_size = _image_size_for_aux(config, kernel)
    return config


def _image_size_for_aux(config: PNASNetConfig, kernel: int) -> int:
    """The training size the aux head's kernel implies: the preset's if it fits, else the smallest."""
    from model import aux_kernel_size

    def fits(size):
        return aux_kernel_size(config, size) == kernel
    for size in [config.image_size, 331, 224, 299, 323]:
        if fits(size):
            return size
    for size in range(32, 2048):
        if fits(size):
            return size
    raise ConvertError(f'no input size gives the aux head kernel {kernel}x{kernel} of this checkpoint')


# --- the name map ----------------------------------------------------------------------------------

def _conv(pt: str, tf: str, kind: str = 'conv') -> List[Tuple[str, str, str]]:
    return [(pt + '.weight', tf, kind)]


def _bn(pt: str, scope: str) -> List[Tuple[str, str, str]]:
    return [(f'{pt}.weight', f'{scope}/gamma', 'vec'), (f'{pt}.bias', f'{scope}/beta', 'vec'),
            (f'{pt}.running_mean', f'{scope}/moving_mean', 'vec'),
            (f'{pt}.running_var', f'{scope}/moving_variance', 'vec')]


def _op_entries(op: nn.Module, pt: str, scope: str) -> List[Tuple[str, str, str]]:
    if isinstance(op, SepConv):
        k = op.kernel_size
        out = []
        for rep in (1, 2):
            out += _conv(f'{pt}.depthwise{rep}', f'{scope}/separable_{k}x{k}_{rep}/depthwise_weights', 'dw')
            out += _conv(f'{pt}.pointwise{rep}', f'{scope}/separable_{k}x{k}_{rep}/pointwise_weights')
            out += _bn(f'{pt}.bn{rep}', f'{scope}/bn_sep_{k}x{k}_{rep}')
        return out
    if isinstance(op, (Pool, Identity)):
        if not op.project:
            return []
        return _conv(f'{pt}.conv', f'{scope}/1x1/weights') + _bn(f'{pt}.bn', f'{scope}/bn_1')
    if isinstance(op, DilConv):
        k = op.kernel_size
        return (_conv(f'{pt}.depthwise', f'{scope}/dil_{k}x{k}/depthwise_weights', 'dw')
                + _conv(f'{pt}.pointwise', f'{scope}/dil_{k}x{k}/pointwise_weights')
                + _bn(f'{pt}.bn', f'{scope}/bn_1'))
    if isinstance(op, Conv7x1x1x7):
        return (_conv(f'{pt}.conv_1x7', f'{scope}/conv_1x7/weights')
                + _conv(f'{pt}.conv_7x1', f'{scope}/conv_7x1/weights') + _bn(f'{pt}.bn', f'{scope}/bn_1'))
    if list(op.parameters()):
        raise ConvertError(f'no TF-Slim names known for op {type(op).__name__} at {pt}')
    return []


def name_map(net: NetworkImageNet) -> List[Tuple[str, str, str]]:
    """(PyTorch state-dict key, TF variable name, layout) for every tensor of ``net``."""
    entries = _conv('conv0', 'conv0/weights') + _bn('conv0_bn', 'conv0_bn')
    for k, cell in enumerate(net.cells):
        scope = f'cell_stem_{k}' if k < 2 else f'cell_{k - 2}'
        pt = f'cells.{k}'
        p0 = cell.preprocess0
        if isinstance(p0, FactorizedReduce):
            entries += (_conv(f'{pt}.preprocess0.conv_1', f'{scope}/path1_conv/weights')
                        + _conv(f'{pt}.preprocess0.conv_2', f'{scope}/path2_conv/weights')
                        + _bn(f'{pt}.preprocess0.bn', f'{scope}/final_path_bn'))
        elif isinstance(p0, ReLUConvBN):
            entries += (_conv(f'{pt}.preprocess0.conv', f'{scope}/prev_1x1/weights')
                        + _bn(f'{pt}.preprocess0.bn', f'{scope}/prev_bn'))
        entries += (_conv(f'{pt}.preprocess1.conv', f'{scope}/1x1/weights')
                    + _bn(f'{pt}.preprocess1.bn', f'{scope}/beginning_bn'))
        for j, op in enumerate(cell._ops):
            side = 'left' if j % 2 == 0 else 'right'
            entries += _op_entries(op, f'{pt}._ops.{j}', f'{scope}/comb_iter_{j // 2}/{side}')
    if net.auxiliary_head is not None:
        scope = f'aux_{net.aux_index - 2}/aux_logits'
        entries += (_conv('auxiliary_head.proj', f'{scope}/proj/weights')
                    + _bn('auxiliary_head.bn0', f'{scope}/aux_bn0')
                    + _conv('auxiliary_head.conv', f'{scope}/Conv/weights')
                    + _bn('auxiliary_head.bn1', f'{scope}/aux_bn1')
                    + [('auxiliary_head.classifier.weight', f'{scope}/FC/weights', 'fc'),
                       ('auxiliary_head.classifier.bias', f'{scope}/FC/biases', 'vec')])
    entries += [('classifier.weight', 'final_layer/FC/weights', 'fc'),
                ('classifier.bias', 'final_layer/FC/biases', 'vec')]
    return entries


def tf_to_torch(value: np.ndarray, layout: str) -> np.ndarray:
    if layout == 'conv':   # [kh, kw, in, out] -> [out, in, kh, kw]
        return value.transpose(3, 2, 0, 1)
    if layout == 'dw':     # [kh, kw, in, 1] -> [in, 1, kh, kw]
        return value.transpose(2, 3, 0, 1)
    if layout == 'fc':     # [in, out] -> [out, in]
        return value.T
    return value


def load_tf_weights(net: NetworkImageNet, tensors: Dict[str, np.ndarray]) -> Dict[str, list]:
    """Copies the checkpoint into ``net``, asserting every shape; returns what was ignored."""
    state = net.state_dict()
    used, assigned = set(), set()
    for pt_key, tf_name, layout in name_map(net):
        if tf_name not in tensors:
            raise ConvertError(f'tensor {tf_name} (for {pt_key}) is missing from the checkpoint: '
                               f'it is not a PNASNet-5 checkpoint of the shape its other tensors '
                               f'suggest')
        value = tf_to_torch(tensors[tf_name], layout)
        if tuple(value.shape) != tuple(state[pt_key].shape):
            raise ConvertError(f'tensor {tf_name} has shape {list(tensors[tf_name].shape)}, but '
                               f'{pt_key} needs {list(state[pt_key].shape)} after the transpose: '
                               f'the checkpoint is of another network')
        state[pt_key].copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))
        used.add(tf_name)
        assigned.add(pt_key)
    # check (1): nothing left over on either side
    unset = [k for k in state if k not in assigned and not k.endswith('num_batches_tracked')]
    if unset:
        raise ConvertError(f'the checkpoint set no value for {unset[0]} ({len(unset)} in all)')
    leftover = sorted(set(tensors) - used)
    bookkeeping = [n for n in leftover if BOOKKEEPING.search(n)]
    unknown = [n for n in leftover if n not in bookkeeping]
    if unknown:
        raise ConvertError(f'checkpoint tensor {unknown[0]} {list(tensors[unknown[0]].shape)} was '
                           f'not used ({len(unknown)} in all): the checkpoint holds more than a '
                           f'PNASNet-5 of this shape')
    return {'used': sorted(used), 'bookkeeping': bookkeeping}


# --- check (2): logits against the TensorFlow twin --------------------------------------------------

def compare_with_tf(prefix: str, net: NetworkImageNet, image_size: int,
                    with_aux: bool) -> Dict[str, float]:
    """Max |difference| of logits, global-pool features (and aux logits) against tf_reference.py
    restored from the same checkpoint, on two smooth test images."""
    import tf_reference
    images = tf_reference.calibration_images(image_size, n=2, seed=2018)
    ref = tf_reference.run_checkpoint(prefix, net.config, images, aux=with_aux)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    net.eval()
    with torch.no_grad():
        logits = net(x)[0].numpy()
        feats = net.extract_features(x).numpy()
    out = {'logits': float(np.abs(logits - ref['logits']).max()),
           'features': float(np.abs(feats - ref['global_pool']).max()),
           'logit_scale': float(np.abs(ref['logits']).max())}
    if with_aux:
        net.train()  # the aux head runs in training mode; BN on its moving statistics
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.Dropout)):
                m.eval()
        saved, net.drop_path_prob = net.drop_path_prob, 0.0
        with torch.no_grad():
            aux = net(x)[1].numpy()
        net.drop_path_prob = saved
        net.eval()
        out['aux_logits'] = float(np.abs(aux - ref['aux_logits']).max())
    return out


# --- the conversion --------------------------------------------------------------------------------

def _check_output(output: str, force: bool) -> None:
    if os.path.exists(output) and not force:
        raise ConvertError(f'{output} exists; pass --force to replace it (it is kept as it is)')
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise ConvertError(f'cannot create the output folder {folder}: {e.strerror}') from None
    if not os.access(folder, os.W_OK):
        raise ConvertError(f'cannot write to the output folder {folder}; choose another --output')


def convert(checkpoint: str, output: str, force: bool = False, check: bool = True,
            image_size: Optional[int] = None, log=print) -> dict:
    """Converts ``checkpoint`` (prefix, folder or .tar.gz) to ``output``; returns a report."""
    _check_output(output, force)
    workdir = tempfile.mkdtemp(prefix='pnasnet_convert_')
    try:
        prefix = resolve_checkpoint(checkpoint, workdir)
        tensors = read_checkpoint(prefix)
        config = infer_config(tensors)
        log(f'checkpoint {prefix}: {len(tensors)} tensors; stem {int(32 * config.stem_multiplier)}, '
            f'filters {config.num_conv_filters}, {config.num_cells} cells, '
            f'{config.num_classes} classes, aux head: {"yes" if config.auxiliary else "no"}')
        net = NetworkImageNet(config)
        report = load_tf_weights(net, tensors)
        log(f'check 1: all {len(report["used"])} model tensors used, all '
            f'{len(net.state_dict())} PyTorch tensors set; ignored bookkeeping: '
            f'{", ".join(report["bookkeeping"]) or "none"}')
        n_params = sum(p.numel() for n, p in net.named_parameters()
                       if not n.startswith('auxiliary_head.'))
        report['parameters'] = n_params
        if check:
            size = image_size or config.image_size
            t0 = time.time()
            diffs = compare_with_tf(prefix, net, size, config.auxiliary and size == config.image_size)
            tol = LOGIT_TOL * max(1.0, diffs['logit_scale'])
            report['diffs'] = diffs
            log(f'check 2 at {size}px ({time.time() - t0:.0f}s): max|logits - TF| = '
                f'{diffs["logits"]:.3g}, features {diffs["features"]:.3g}'
                + (f', aux logits {diffs["aux_logits"]:.3g}' if 'aux_logits' in diffs else '')
                + f' (tolerance {tol:.3g})')
            worst = max(v for k, v in diffs.items() if k != 'logit_scale')
            if not worst <= tol:
                raise ConvertError(f'{prefix}: the converted model differs from TensorFlow by '
                                   f'{worst:.3g} (> {tol:.3g}); nothing was written')
        payload = {'config': config.to_dict(), 'state_dict': net.state_dict(),
                   'source': {'checkpoint': os.path.basename(prefix), 'parameters': n_params}}
        utils.write_atomic(output, lambda f: torch.save(payload, f))
        log(f'wrote {output} ({n_params:,} parameters without the aux head)')
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def self_test(log=print) -> bool:
    """Random TF checkpoint -> convert -> compare, for a small Large- and a small Mobile-shaped
    config (with an odd stem-cell width, as Mobile has), offline."""
    import tf_reference
    ok = True
    cases = [('large-shaped', PNASNetConfig.large(num_conv_filters=8)),
             ('mobile-shaped', PNASNetConfig.mobile(num_conv_filters=10))]
    with tempfile.TemporaryDirectory(prefix='pnasnet_selftest_') as tmp:
        for name, cfg in cases:
            prefix = os.path.join(tmp, name, 'model.ckpt')
            tf_reference.make_random_checkpoint(prefix, cfg, seed=7)
            out = os.path.join(tmp, name + '.pth')
            report = convert(prefix, out, log=lambda *a: None)
            d = report['diffs']
            net = load_pretrained(out)
            ok_case = max(d['logits'], d['features'], d['aux_logits']) <= LOGIT_TOL
            ok_case &= dataclasses.asdict(net.config)['num_conv_filters'] == cfg.num_conv_filters
            ok &= ok_case
            log(f'{name:14s} {cfg.image_size}px: max|d| logits {d["logits"]:.2e}, features '
                f'{d["features"]:.2e}, aux logits {d["aux_logits"]:.2e} '
                f'-> {"ok" if ok_case else "FAIL"}')
    log('self-test ' + ('passed' if ok else 'FAILED'))
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--checkpoint', default='data/model.ckpt',
                    help='TF checkpoint prefix, the folder holding it, or the official .tar.gz')
    ap.add_argument('--output', default='data/PNASNet-5_Large.pth')
    ap.add_argument('--force', action='store_true', help='replace an existing output file')
    ap.add_argument('--image-size', type=utils.int_at_least(MIN_IMAGE_SIZE),
                    help='size of the test image of check 2 (default: the network\'s own)')
    ap.add_argument('--self-test', action='store_true',
                    help='convert random checkpoints of small configs and compare with TF')
    args = ap.parse_args(argv)
    try:
        if args.self_test:
            return 0 if self_test() else 1
        convert(args.checkpoint, args.output, force=args.force, image_size=args.image_size)
        return 0
    except ConvertError as e:
        print(f'convert.py: error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
