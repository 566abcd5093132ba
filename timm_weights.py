"""timm's ``pnasnet5large`` weights and this port's, both ways: the name of every tensor in timm's
layout, reading a timm state dict, and the conversion checked against timm's own model. The
library behind ``convert.py --from-timm / --to-timm`` and ``pretrained.py``'s ``source='timm'``.
"""
import os
from typing import Dict, List, Optional, Tuple

import torch

from model import NetworkImageNet, PNASNetConfig
from tf_reference import check_images, tf_tolerance
from tf_weights import ConvertError, name_map

TIMM_BN = {'gamma': 'weight', 'beta': 'bias', 'moving_mean': 'running_mean',
           'moving_variance': 'running_var'}


def timm_key(tf_name: str) -> Optional[str]:
    """timm's ``pnasnet5large`` state-dict key of a TF-Slim variable (timm's names come from the
    same release), or None for what timm does not have (the aux head)."""
    parts = tf_name.split('/')
    leaf = parts[-1]
    param = TIMM_BN.get(leaf, 'weight' if leaf.endswith('weights') else 'bias' if leaf == 'biases' else None)
    if parts[0].startswith('aux_') or param is None:
        return None
    if parts[0] == 'conv0':
        return f'conv_0.conv.{param}'
    if parts[0] == 'conv0_bn':
        return f'conv_0.bn.{param}'
    if parts[0] == 'final_layer':
        return f'last_linear.{param}'
    cell, scope = parts[0], parts[1]
    simple = {'1x1': 'conv_1x1.conv', 'beginning_bn': 'conv_1x1.bn', 'prev_1x1': 'conv_prev_1x1.conv',
              'prev_bn': 'conv_prev_1x1.bn', 'path1_conv': 'conv_prev_1x1.path_1.conv',
              'path2_conv': 'conv_prev_1x1.path_2.conv', 'final_path_bn': 'conv_prev_1x1.final_path_bn'}
    if scope in simple:
        return f'{cell}.{simple[scope]}.{param}'
    branch = f'{cell}.{scope}_{parts[2]}'  # comb_iter_i / left|right
    op = parts[3]
    if op.startswith('separable_'):
        conv = 'depthwise_conv2d' if leaf == 'depthwise_weights' else 'pointwise_conv2d'
        return f'{branch}.separable_{op[-1]}.{conv}.{param}'
    if op.startswith('bn_sep_'):
        return f'{branch}.bn_sep_{op[-1]}.{param}'
    return f'{branch}.{"conv" if op == "1x1" else "bn"}.{param}'  # 1x1 / bn_1 of a projection


def timm_name_map(net: NetworkImageNet) -> List[Tuple[str, str]]:
    """(this port's key, timm's key) for every tensor both have, BN step counters included."""
    pairs = []
    for pt_key, tf_name, _ in name_map(net):
        key = timm_key(tf_name)
        if key is None:
            continue
        pairs.append((pt_key, key))
        if tf_name.endswith('/gamma'):
            pairs.append((pt_key.rsplit('.', 1)[0] + '.num_batches_tracked',
                          key.rsplit('.', 1)[0] + '.num_batches_tracked'))
    return pairs


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A state dict from .pth/.bin (``weights_only``) or .safetensors, unwrapped from a training
    checkpoint's ``state_dict`` / ``model`` entry."""
    if not os.path.isfile(path):
        raise ConvertError(f'{path}: no such file')
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            obj = load_file(path)
        else:
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pickle, zip, torch and safetensors errors alike
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(f'{path}: cannot read it as a state dict ({first})') from None
    for wrapper in ('state_dict', 'model', 'state_dict_ema'):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise ConvertError(f'{path}: holds no state dict of tensors')
    return obj


def timm_model(num_classes: int):
    try:
        import timm
    except ImportError:
        raise ConvertError('converting timm weights needs timm (pip install -r requirements.txt)') from None
    return timm.create_model('pnasnet5large', pretrained=False, num_classes=num_classes).eval()


def _compare_with_timm(net: NetworkImageNet, timm_net, image_size: int) -> Tuple[float, float]:
    """(max |logits - timm's|, max |timm's logits|) on two test images; this port's background
    logit, if it has one, is left out, as timm's label_offset does."""
    _, x = check_images(image_size)
    with torch.no_grad():
        ours, theirs = net.eval()(x), timm_net(x)
    if ours.shape[1] == theirs.shape[1] + 1:
        ours = ours[:, 1:]
    diff = float((ours - theirs).abs().max()) if ours.shape == theirs.shape else float('inf')
    return diff, float(theirs.abs().max())


def check_timm(net, timm_net, image_size: int, log) -> dict:
    diff, scale = _compare_with_timm(net, timm_net, image_size)
    tol = tf_tolerance(scale)  # the same fp32 floor: timm's model sums in other orders too
    log(f'check 2 at {image_size}px: max|logits - timm| = {diff:.3g} (bound {tol:.3g})')
    if not diff <= tol:
        raise ConvertError(f'the converted model differs from timm\'s by {diff:.3g} (> {tol:.3g}); '
                           f'nothing was written')
    return {'logits': diff}


def network_from_timm(state: Dict[str, torch.Tensor], source: str, check: bool = True,
                      image_size: int = 331, log=print) -> Tuple[NetworkImageNet, dict]:
    """This port's PNASNet-5 Large with timm's weights ``state`` (from ``source``, named in the
    errors): every tensor mapped with its shape, nothing left over on either side, and with
    ``check`` the logits within the bound of timm's own model's. timm's 1000 classes stay 1000
    (no background logit; timm dropped it, label_offset 1); timm has no aux head."""
    if 'last_linear.weight' not in state or 'conv_0.conv.weight' not in state:
        raise ConvertError(f'{source}: not a timm pnasnet5large state dict (no conv_0.conv.weight '
                           f'or last_linear.weight)')
    num_classes = state['last_linear.weight'].shape[0]
    net = NetworkImageNet(PNASNetConfig.large(num_classes=num_classes))
    target = net.state_dict()
    pairs = timm_name_map(net)
    for pt_key, key in pairs:
        if key not in state:
            raise ConvertError(f'{source}: tensor {key} (for {pt_key}) is missing: not a timm '
                               f'pnasnet5large state dict')
        if tuple(state[key].shape) != tuple(target[pt_key].shape):
            raise ConvertError(f'{source}: tensor {key} has shape {list(state[key].shape)}, but '
                               f'{pt_key} needs {list(target[pt_key].shape)}')
        target[pt_key].copy_(state[key])
    unused = sorted(set(state) - {key for _, key in pairs})
    if unused:
        raise ConvertError(f'{source}: tensor {unused[0]} was not used ({len(unused)} in all): the '
                           f'file holds more than a timm pnasnet5large')
    unset = sorted(set(target) - {pt for pt, _ in pairs})
    if unset:
        raise ConvertError(f'the timm weights set no value for {unset[0]} ({len(unset)} in all)')
    log(f'check 1: all {len(state)} timm tensors used, all {len(target)} PyTorch tensors set')
    report = {'diffs': None}
    if check:
        timm_net = timm_model(num_classes)
        timm_net.load_state_dict(state)
        report['diffs'] = check_timm(net, timm_net, image_size, log)
    report['parameters'] = sum(p.numel() for p in net.parameters())
    return net, report


def weights_payload(net: NetworkImageNet, report: dict, source: str) -> dict:
    """What a weights file made of timm's weights holds: the config, the weights, their source."""
    return {'config': net.config.to_dict(), 'state_dict': net.state_dict(),
            'source': {'timm': source, 'parameters': report['parameters'],
                       'aux_head': 'aux head: none in timm\'s pnasnet5large, none converted'}}
