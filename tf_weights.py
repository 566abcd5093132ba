"""TF-Slim PNASNet-5 checkpoints onto the PyTorch network: fetching and unpacking the release,
reading a checkpoint, the name of every tensor on both sides, and the checked conversion.

The library behind ``convert.py`` (which adds writing its output, the timm formats and the
floor), ``pretrained.py``, ``benchmark.py`` and the tests. ``convert_checkpoint(prefix)`` is the
conversion with both of convert.py's checks; ``network_from_checkpoint(prefix)`` the first alone.
"""
import dataclasses
import glob
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from model import NetworkImageNet, PNASNetConfig, aux_kernel_size
from operations import (Conv7x1x1x7, DilConv, FactorizedReduce, Pool, ReLUConvBN, SepConv,
                        SkipConnect)
import utils
# AUX_BN: the aux head's BatchNorms, which the official release does not hold
# (docs/conversion.md): a checkpoint without all of them gets fresh ones
from tf_reference import AUX_BN, TF_REL_TOL, check_images, run_checkpoint, tf_tolerance
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


# layout -> the axes of the PyTorch tensor that give the TF variable's, in order
TF_AXES = {'conv': (2, 3, 1, 0),   # [out, in, kh, kw] <- [kh, kw, in, out]
           'dw': (2, 3, 0, 1),     # [in, 1, kh, kw] <- [kh, kw, in, 1]
           'fc': (1, 0),           # [out, in] <- [in, out]
           'vec': (0,)}


def tf_to_torch(value: np.ndarray, layout: str) -> np.ndarray:
    """A TF variable's value in the layout of its PyTorch tensor (TF_AXES, inverted)."""
    return value.transpose(np.argsort(TF_AXES[layout])) if value.ndim > 1 else value


def tf_shape(shape, layout: str) -> List[int]:
    """The TF variable's shape for a PyTorch tensor of ``shape`` (what tf_to_torch inverts)."""
    return [shape[i] for i in TF_AXES[layout]] if len(shape) > 1 else list(shape)


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


ARCHIVE_EXTENSIONS = ('.tar.gz', '.tgz', '.tar')


# --- fetching the official archive ----------------------------------------------------------------

def checkpoint_present(path: str) -> bool:
    """Whether ``path`` (prefix, folder or archive) already holds something to convert."""
    if path.endswith(ARCHIVE_EXTENSIONS):
        return os.path.isfile(path)
    if os.path.isdir(path):
        return bool(glob.glob(os.path.join(path, '**', '*.index'), recursive=True))
    return os.path.exists(path + '.index')


def download(url: str, dest: str, timeout: float = 60.0, manual: Optional[str] = None) -> None:
    """Downloads ``url`` (``http(s)://`` or ``file://``) to ``dest`` with a progress bar: into a
    temporary file beside it, renamed to ``dest`` only once every byte the server announced has
    arrived. On any failure nothing is left behind and the error names the URL and ``manual``,
    the step by hand (default: convert.py's)."""
    folder = os.path.dirname(os.path.abspath(dest))
    name = os.path.basename(dest)
    manual = manual or (f'download it by hand into {folder} and unpack it there (tar xzf {name}), '
                        f'or pass --checkpoint')
    made = []  # the folders this download creates, removed again if it fails
    parent = folder
    while not os.path.isdir(parent):
        made.append(parent)
        parent = os.path.dirname(parent)
    try:
        tmp = utils.temporary_beside(dest, suffix='.part')
    except OSError as e:
        raise ConvertError(f'cannot write the download of {url} to {folder} '
                           f'({e.strerror or e}); {manual}') from None
    try:
        from tqdm import tqdm
        with open(tmp, 'wb') as f:
            request = urllib.request.Request(url, headers={'User-Agent': 'pnasnet-convert'})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                length = response.headers.get('Content-Length', '')
                total = int(length) if length.isdigit() else None
                received = 0
                with tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, desc=name,
                          file=sys.stderr, dynamic_ncols=True) as bar:
                    while True:
                        chunk = response.read(1 << 20)
                        if not chunk:
                            break
                        f.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                if total is not None and received != total:
                    raise http.client.IncompleteRead(b'', total - received)
        utils.publish(tmp, dest)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        for path in made:
            try:
                os.rmdir(path)
            except OSError:
                pass
        if isinstance(e, urllib.error.HTTPError):
            reason = f'HTTP {e.code} {e.reason}'
        elif isinstance(e, urllib.error.URLError):
            reason = f'offline or unreachable: {e.reason}'
        elif isinstance(e, http.client.IncompleteRead):
            reason = f'the connection broke off {e.expected} bytes before the end'
        elif isinstance(e, (OSError, http.client.HTTPException, ValueError)):
            reason = str(e) or type(e).__name__
        else:  # KeyboardInterrupt and the like: the partial file is gone, the rest is Python's
            raise
        raise ConvertError(f'cannot download {url} ({reason}); {manual}') from None


def unpack_checkpoint(archive: str, folder: str, prefix: Optional[str] = None) -> str:
    """Unpacks the one checkpoint of ``archive`` into ``folder`` as ``prefix.index`` /
    ``prefix.data-*`` (default: the archive's own name), via a temporary folder there (members
    may only be plain files and folders inside it), never over a file that is already there.
    Returns the prefix."""
    tmp = tempfile.mkdtemp(prefix='.unpack-', dir=folder)
    try:
        source = resolve_checkpoint(archive, tmp)
        prefix = prefix or os.path.join(folder, os.path.basename(source))
        files = sorted(glob.glob(glob.escape(source) + '.data-*')) + [source + '.index']
        targets = [prefix + f[len(source):] for f in files]
        taken = [t for t in targets if os.path.exists(t)]
        if taken:
            raise ConvertError(f'{taken[0]} is already there without a complete checkpoint '
                               f'beside it; move it away, or pass --checkpoint')
        for f, t in zip(files, targets):  # the .index last: it is what says "a checkpoint"
            os.replace(f, t)
        return prefix
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_checkpoint(checkpoint: str, url: str, log=print) -> None:
    """Puts the archive at ``url`` where ``checkpoint`` expects a checkpoint: the archive itself
    when ``checkpoint`` names one, else the checkpoint unpacked into its folder (the archive is
    kept beside it, and a complete one already there is used instead of a new download)."""
    name = os.path.basename(urllib.parse.urlparse(url).path) or 'checkpoint.tar.gz'
    if checkpoint.endswith(ARCHIVE_EXTENSIONS):
        log(f'{checkpoint} is not there: downloading {url}')
        download(url, checkpoint)
        return
    if os.path.isdir(checkpoint):
        folder, prefix = checkpoint, None
    else:
        folder, prefix = os.path.dirname(checkpoint) or '.', checkpoint
    archive = os.path.join(folder, name)
    if os.path.isfile(archive):
        log(f'no checkpoint at {checkpoint}: unpacking {archive}, downloaded before')
    else:
        log(f'no checkpoint at {checkpoint}: downloading {url} into {folder}')
        download(url, archive)
    prefix = unpack_checkpoint(archive, folder, prefix)
    log(f'unpacked {archive} as {prefix}.index/.data-* (the archive is kept; delete it to save '
        f'{os.path.getsize(archive) / 2 ** 20:.0f} MiB)')


def resolve_checkpoint(path: str, workdir: str) -> str:
    """The checkpoint prefix for a prefix, a folder holding one checkpoint, or the official
    ``.tar.gz`` (unpacked into ``workdir``)."""
    if path.endswith(ARCHIVE_EXTENSIONS) and os.path.isfile(path):
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


# --- the checked conversion ------------------------------------------------------------------------

def convert_checkpoint(prefix: str, check: bool = True, image_size: Optional[int] = None,
                       log=print, tensors: Optional[Dict[str, np.ndarray]] = None
                       ) -> Tuple[NetworkImageNet, dict]:
    """The network of the checkpoint at ``prefix`` with its weights, after convert.py's checks:
    (1) every tensor used and every weight set (``load_tf_weights``); (2) with ``check``, the
    logits, features (and aux logits where TF has them) within the bound of the TF twin's at
    ``image_size`` (default: the network's). ``tensors``: the checkpoint's, where the caller has
    read them already. Returns (network, report); raises ConvertError."""
    tensors = read_checkpoint(prefix) if tensors is None else tensors
    config = infer_config(tensors)
    log(f'checkpoint {prefix}: {len(tensors)} tensors; stem {int(32 * config.stem_multiplier)}, '
        f'filters {config.num_conv_filters}, {config.num_cells} cells, '
        f'{config.num_classes} classes, aux head: {"yes" if config.auxiliary else "no"}')
    net = NetworkImageNet(config)
    report = load_tf_weights(net, tensors)
    log(f'check 1: all {len(report["used"])} model tensors used, all '
        f'{len(net.state_dict())} PyTorch tensors set; ignored bookkeeping: '
        f'{", ".join(report["bookkeeping"]) or "none"}')
    log(AUX_NOTES[report['aux_head']])
    n_params = sum(p.numel() for n, p in net.named_parameters()
                   if not n.startswith('auxiliary_head.'))
    report['parameters'] = n_params
    if check:
        size = image_size or config.image_size
        t0 = time.time()
        # aux logits only where TF can compute them: the whole aux head is in the checkpoint
        diffs = compare_with_tf(prefix, net, size,
                                report['aux_head'] == 'complete' and size == config.image_size)
        report['diffs'] = diffs
        # each endpoint against its own bound, scaled by its own magnitude
        bounds = {k: tf_tolerance(diffs[scale]) for k, scale in
                  (('logits', 'logit_scale'), ('features', 'feature_scale'),
                   ('aux_logits', 'aux_scale')) if k in diffs}
        report['bounds'] = bounds
        log(f'check 2 at {size}px ({time.time() - t0:.0f}s): max|logits - TF| = '
            f'{diffs["logits"]:.3g} (bound {bounds["logits"]:.3g}), features '
            f'{diffs["features"]:.3g} (bound {bounds["features"]:.3g})'
            + (f', aux logits {diffs["aux_logits"]:.3g} (bound {bounds["aux_logits"]:.3g})'
               if 'aux_logits' in diffs else
               ', aux logits not compared (no aux BatchNorm in the checkpoint)'
               if report['aux_head'] == 'release' else '')
            + f'; bounds: {TF_REL_TOL:g} x max|TF| of each')
        over = [k for k, bound in bounds.items() if not diffs[k] <= bound]
        if over:
            k = over[0]
            raise ConvertError(f'{prefix}: the converted model\'s {k} differ from TensorFlow by '
                               f'{diffs[k]:.3g} (> {bounds[k]:.3g}); nothing was written')
    return net, report


def weights_payload(net: NetworkImageNet, report: dict, prefix: str) -> dict:
    """What a convert.py output holds: the config, the weights, and where they came from."""
    return {'config': net.config.to_dict(), 'state_dict': net.state_dict(),
            'source': {'checkpoint': os.path.basename(prefix), 'parameters': report['parameters'],
                       'aux_head': AUX_NOTES[report['aux_head']]}}
