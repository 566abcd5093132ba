"""TF-Slim PNASNet-5 checkpoints onto the PyTorch network: reading them, the name of every
tensor on both sides, and the check against the TensorFlow twin.

The library behind ``convert.py`` (which adds fetching, writing and the timm formats),
``benchmark.py`` and the tests. ``network_from_checkpoint(prefix)`` is the whole path in one call.
"""
import dataclasses
import os
import re
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn as nn

from model import NetworkImageNet, PNASNetConfig, aux_kernel_size
from operations import (Conv7x1x1x7, DilConv, FactorizedReduce, Pool, ReLUConvBN, SepConv,
                        SkipConnect)
# the aux head's BatchNorms, which the official release does not hold (docs/conversion.md): a
# checkpoint without all of them gets fresh ones
from tf_reference import AUX_BN, check_images, run_checkpoint
from utils import import_tf

# Variables that training leaves in a checkpoint but that are not part of the network.
BOOKKEEPING = re.compile(r'(^global_step$)|(/(Momentum|RMSProp(_1)?|Adam(_1)?|ExponentialMovingAverage)$)'
                         r'|(^beta[12]_power$)|(^learning_rate$)')


class ConvertError(RuntimeError):
    """A problem the user can fix; the message names the file or tensor and what to do."""


# --- reading the checkpoint -----------------------------------------------------------------------

def read_checkpoint(prefix: str) -> Dict[str, np.ndarray]:
    """All tensors of a TF checkpoint, read without building a graph."""
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
    if config.same_body(PNASNetConfig.mobile()):
        config.image_size = PNASNetConfig.mobile().image_size
    aux = [n for n in tensors if n.startswith('aux_') and n.endswith('/aux_logits/Conv/weights')]
    if aux:
        kernel = _shape(tensors, aux[0])[0]
        config.auxiliary = True
        config.image_size = _image_size_for_aux(config, kernel)
    return config


def _image_size_for_aux(config: PNASNetConfig, kernel: int) -> int:
    """The training size the aux head's kernel implies: the preset's if it fits, else the smallest."""
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

def cell_scopes(net: NetworkImageNet) -> List[str]:
    """TF-Slim's scope of each of ``net.cells``: cell_stem_0, cell_stem_1, cell_0, ..."""
    stem = net.config.num_stem_cells
    return [f'cell_stem_{k}' if k < stem else f'cell_{k - stem}' for k in range(len(net.cells))]


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
    if isinstance(op, (Pool, SkipConnect)):
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
    if net.config.stem == 'cifar':  # nasnet.py's _cifar_stem
        entries = _conv('conv0', 'l1_stem_3x3/weights') + _bn('conv0_bn', 'l1_stem_bn')
    else:
        entries = _conv('conv0', 'conv0/weights') + _bn('conv0_bn', 'conv0_bn')
    for k, (cell, scope) in enumerate(zip(net.cells, cell_scopes(net))):
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
        for j, op in enumerate(cell.ops):
            side = 'left' if j % 2 == 0 else 'right'
            entries += _op_entries(op, f'{pt}._ops.{j}', f'{scope}/comb_iter_{j // 2}/{side}')
    if net.auxiliary_head is not None:
        scope = f'aux_{net.aux_index - net.config.num_stem_cells}/aux_logits'
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


AUX_NOTES = {
    'complete': 'aux head: proj, aux_bn0, Conv, aux_bn1 and FC from the checkpoint',
    'release': 'aux head: proj, Conv and FC from the checkpoint; aux_bn0/aux_bn1 absent from it '
               '(as in the official release), initialised fresh (gamma 1, beta 0, mean 0, var 1)',
    'absent': 'aux head: none in the checkpoint, none converted',
}


def load_tf_weights(net: NetworkImageNet, tensors: Dict[str, np.ndarray]) -> Dict[str, list]:
    """Copies the checkpoint into ``net``, asserting every shape; returns what was ignored and
    what became of the aux head (``'complete'``, ``'release'``: without its BatchNorms, which
    then keep their fresh initialisation, or ``'absent'``)."""
    state = net.state_dict()
    entries = name_map(net)
    aux_bn = {tf_name for _, tf_name, _ in entries if AUX_BN.match(tf_name)}
    # all of the aux BNs missing is the release's shape; some of them missing is a broken file
    fresh = aux_bn if aux_bn and not aux_bn & set(tensors) else set()
    if fresh:
        for bn in (net.auxiliary_head.bn0, net.auxiliary_head.bn1):
            bn.reset_parameters()
    used, assigned = set(), set()
    for pt_key, tf_name, layout in entries:
        if tf_name in fresh:
            assigned.add(pt_key)
            continue
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
    aux = 'absent' if net.auxiliary_head is None else 'release' if fresh else 'complete'
    return {'used': sorted(used), 'bookkeeping': bookkeeping, 'aux_head': aux}


# --- check (2): logits against the TensorFlow twin --------------------------------------------------

def compare_with_tf(prefix: str, net: NetworkImageNet, image_size: int,
                    with_aux: bool) -> Dict[str, float]:
    """Max |difference| of logits, global-pool features (and aux logits) against tf_reference.py
    restored from the same checkpoint, on two smooth test images."""
    images, x = check_images(image_size)
    ref = run_checkpoint(prefix, net.config, images, aux=with_aux)
    net.eval()
    with torch.no_grad():
        logits = net(x).numpy()
        feats = net.extract_features(x).numpy()
    out = {'logits': float(np.abs(logits - ref['logits']).max()),
           'features': float(np.abs(feats - ref['global_pool']).max()),
           'logit_scale': float(np.abs(ref['logits']).max()),
           'feature_scale': float(np.abs(ref['global_pool']).max())}
    if with_aux:
        aux = aux_logits_as_tf(net, x).numpy()
        out['aux_logits'] = float(np.abs(aux - ref['aux_logits']).max())
        out['aux_scale'] = float(np.abs(ref['aux_logits']).max())
    return out


def aux_logits_as_tf(net: NetworkImageNet, x: torch.Tensor) -> torch.Tensor:
    """The aux logits as TF-Slim computes them: the training graph (the aux head exists only
    there), BatchNorm on its moving statistics, no dropout or drop path. ``net`` ends in eval mode."""
    net.train()
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.Dropout)):
            m.eval()
    saved, net.drop_path_prob = net.drop_path_prob, 0.0
    try:
        with torch.no_grad():
            return net(x)[1]
    finally:
        net.drop_path_prob = saved
        net.eval()


def network_from_checkpoint(prefix: str, auxiliary: bool = False) -> Tuple[NetworkImageNet, dict]:
    """The network a TF-Slim checkpoint describes, its weights loaded (checked as
    ``load_tf_weights`` checks them), in eval mode, and ``load_tf_weights``'s report. The aux
    head, where the checkpoint has one, is kept with ``auxiliary`` only, as
    ``model.load_pretrained`` does."""
    tensors = read_checkpoint(prefix)
    config = infer_config(tensors)
    net = NetworkImageNet(config)
    report = load_tf_weights(net, tensors)
    if config.auxiliary and not auxiliary:
        body = NetworkImageNet(dataclasses.replace(config, auxiliary=False))
        body.load_state_dict({k: v for k, v in net.state_dict().items()
                              if not k.startswith('auxiliary_head.')})
        net = body
    return net.eval(), report
