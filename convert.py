"""Converts the official TF-Slim PNASNet-5 checkpoint into a PyTorch weights file, and proves it.

    python convert.py                                   # data/model.ckpt -> data/PNASNet-5_Large.pth
    python convert.py --checkpoint pnasnet-5_mobile_2017_12_13.tar.gz --output data/PNASNet-5_Mobile.pth
    python convert.py --self-test                        # the whole path on random checkpoints, offline

When the checkpoint is not there, the official archive (``--url``; PNASNet-5 Large by default)
is downloaded into the checkpoint's folder and unpacked there first; ``--no-download`` turns
that off. The architecture (stem and cell widths, number of cells, classes, aux head) is read
from the checkpoint's shapes. The published checkpoints lack the aux head's BatchNorms: their
``proj``, ``Conv`` and ``FC`` are converted and those BNs initialised fresh. Every tensor is mapped with a shape assertion; then, as the original port did,
(1) every model tensor of the checkpoint must have been used (bookkeeping variables such as
``global_step`` are listed and ignored) and nothing of the PyTorch model left unset, and (2) the
logits of the PyTorch model and of ``tf_reference.py`` restored from the same checkpoint must agree
on a test image. Only then is the output written (atomically; an existing file is kept unless
``--force``). It holds ``{'config': ..., 'state_dict': ...}`` for ``model.load_pretrained``.
"""
import argparse
import glob
import http.client
import os
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

import tf_reference
import utils
from model import MIN_IMAGE_SIZE, NetworkImageNet, PNASNetConfig, load_pretrained
from pretrained import OFFICIAL_URLS
from tf_reference import AUX_BN, TF_REL_TOL, check_images, tf_tolerance
from tf_weights import (AUX_NOTES, ConvertError, aux_logits_as_tf, compare_with_tf, infer_config,
                        load_tf_weights, name_map, network_from_checkpoint, read_checkpoint,
                        tf_to_torch)

ARCHIVE_EXTENSIONS = ('.tar.gz', '.tgz', '.tar')


# --- fetching the official archive ----------------------------------------------------------------

def checkpoint_present(path: str) -> bool:
    """Whether ``path`` (prefix, folder or archive) already holds something to convert."""
    if path.endswith(ARCHIVE_EXTENSIONS):
        return os.path.isfile(path)
    if os.path.isdir(path):
        return bool(glob.glob(os.path.join(path, '**', '*.index'), recursive=True))
    return os.path.exists(path + '.index')


def download(url: str, dest: str, timeout: float = 60.0) -> None:
    """Downloads ``url`` to ``dest`` with a progress bar: into a temporary file beside it, renamed
    to ``dest`` only once every byte the server announced has arrived. On any failure nothing is
    left behind and the error names the URL and the manual step."""
    folder = os.path.dirname(os.path.abspath(dest))
    name = os.path.basename(dest)
    manual = (f'download it by hand into {folder} and unpack it there (tar xzf {name}), '
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


# --- reading the checkpoint -----------------------------------------------------------------------

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


def write_weights(payload: dict, output: str, f) -> None:
    """``payload`` as ``torch.save`` writes it, or for a ``.safetensors`` output the tensors with
    the config and source as JSON in the file's metadata (a format that cannot carry code)."""
    if not output.endswith('.safetensors'):
        torch.save(payload, f)
        return
    import json
    metadata = {'config': json.dumps(payload['config']), 'source': json.dumps(payload['source'])}
    _write_safetensors(payload['state_dict'], f, metadata)


def _write_safetensors(state: Dict[str, torch.Tensor], f, metadata: Optional[dict] = None) -> None:
    from safetensors.torch import save
    f.write(save({k: v.contiguous() for k, v in state.items()}, metadata=metadata))


def convert(checkpoint: str, output: str, force: bool = False, check: bool = True,
            image_size: Optional[int] = None, log=print, url: Optional[str] = None) -> dict:
    """Converts ``checkpoint`` (prefix, folder or .tar.gz) to ``output``; returns a report.
    With ``url``, a checkpoint that is not there is first fetched from it (``fetch_checkpoint``)."""
    _check_output(output, force)
    if url and not checkpoint_present(checkpoint):
        fetch_checkpoint(checkpoint, url, log)
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
        payload = {'config': config.to_dict(), 'state_dict': net.state_dict(),
                   'source': {'checkpoint': os.path.basename(prefix), 'parameters': n_params,
                              'aux_head': AUX_NOTES[report['aux_head']]}}
        utils.write_atomic(output, lambda f: write_weights(payload, output, f))
        log(f'wrote {output} ({n_params:,} parameters without the aux head)')
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def self_test(log=print) -> bool:
    """Random TF checkpoint -> convert -> compare, offline, for a small Large- and a small
    Mobile-shaped config (with an odd stem-cell width, as Mobile has), each both with its whole
    aux head and shaped as the release is (no aux BatchNorm): then the aux head must load for
    fine-tuning with its convs and FC from the checkpoint and fresh BNs."""
    ok = True
    cases = [(f'{name}{" release" if release else ""}', cfg, release)
             for name, cfg in (('large-shaped', PNASNetConfig.large(num_conv_filters=8)),
                               ('mobile-shaped', PNASNetConfig.mobile(num_conv_filters=10)))
             for release in (False, True)]
    with tempfile.TemporaryDirectory(prefix='pnasnet_selftest_') as tmp:
        for k, (name, cfg, release) in enumerate(cases):
            prefix = os.path.join(tmp, str(k), 'model.ckpt')
            if not release:
                values, _ = tf_reference.make_random_checkpoint(prefix, cfg, seed=7)
            else:  # the same weights, saved as the release is
                values = {n: v for n, v in values.items() if not AUX_BN.match(n)}
                tf_reference.write_checkpoint(prefix, {**values, 'global_step': np.int64(0)})
            out = os.path.join(tmp, f'{k}.pth')
            report = convert(prefix, out, log=lambda *a: None)
            d = report['diffs']
            ok_case = (all(d[k] <= bound for k, bound in report['bounds'].items())
                       and report['aux_head'] == ('release' if release else 'complete'))
            net = load_pretrained(out, auxiliary=True)
            ok_case &= net.config.num_conv_filters == cfg.num_conv_filters
            ok_case &= _aux_head_as_converted(net, values, release)
            ok &= ok_case
            aux = f'aux logits {d["aux_logits"]:.2e}' if 'aux_logits' in d else 'aux BN fresh'
            log(f'{name:22s} {cfg.image_size}px: max|d| logits {d["logits"]:.2e}, features '
                f'{d["features"]:.2e}, {aux} -> {"ok" if ok_case else "FAIL"}')
    log('self-test ' + ('passed' if ok else 'FAILED'))
    return ok


def _aux_head_as_converted(net: NetworkImageNet, values: Dict[str, np.ndarray], release: bool) -> bool:
    """The loaded aux head holds the checkpoint's proj/Conv/FC, fresh BNs where the release
    lacks them, and runs a training step's forward and backward."""
    head = net.auxiliary_head
    scope = f'aux_{net.aux_index - net.config.num_stem_cells}/aux_logits'
    ok = np.array_equal(head.proj.weight.detach().numpy(),
                        tf_to_torch(values[f'{scope}/proj/weights'], 'conv'))
    ok &= np.array_equal(head.classifier.bias.detach().numpy(), values[f'{scope}/FC/biases'])
    if release:
        for bn in (head.bn0, head.bn1):
            ok &= bool((bn.weight == 1).all() and (bn.bias == 0).all()
                       and (bn.running_mean == 0).all() and (bn.running_var == 1).all())
    net.train()
    _, x = check_images(net.config.image_size, seed=3)
    logits, logits_aux = net(x)
    (logits.sum() + 0.4 * logits_aux.sum()).backward()
    ok &= head.conv.weight.grad is not None and bool(torch.isfinite(logits_aux).all())
    net.eval()
    return bool(ok)


# --- timm's pnasnet5large, both ways ----------------------------------------------------------------

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


def _read_state_dict(path: str) -> Dict[str, torch.Tensor]:
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


def _timm_model(num_classes: int):
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


def _check_timm(net, timm_net, image_size: int, log) -> dict:
    diff, scale = _compare_with_timm(net, timm_net, image_size)
    tol = tf_tolerance(scale)  # the same fp32 floor: timm's model sums in other orders too
    log(f'check 2 at {image_size}px: max|logits - timm| = {diff:.3g} (bound {tol:.3g})')
    if not diff <= tol:
        raise ConvertError(f'the converted model differs from timm\'s by {diff:.3g} (> {tol:.3g}); '
                           f'nothing was written')
    return {'logits': diff}


def from_timm(path: str, output: str, force: bool = False, check: bool = True,
              image_size: int = 331, log=print) -> dict:
    """timm ``pnasnet5large`` weights -> this port's weights file. Its 1000 classes stay 1000
    (class k is ImageNet class k, no background logit: timm dropped it, label_offset 1)."""
    _check_output(output, force)
    state = _read_state_dict(path)
    if 'last_linear.weight' not in state or 'conv_0.conv.weight' not in state:
        raise ConvertError(f'{path}: not a timm pnasnet5large state dict (no conv_0.conv.weight '
                           f'or last_linear.weight)')
    num_classes = state['last_linear.weight'].shape[0]
    net = NetworkImageNet(PNASNetConfig.large(num_classes=num_classes))
    target = net.state_dict()
    pairs = timm_name_map(net)
    for pt_key, key in pairs:
        if key not in state:
            raise ConvertError(f'{path}: tensor {key} (for {pt_key}) is missing: not a timm '
                               f'pnasnet5large state dict')
        if tuple(state[key].shape) != tuple(target[pt_key].shape):
            raise ConvertError(f'{path}: tensor {key} has shape {list(state[key].shape)}, but '
                               f'{pt_key} needs {list(target[pt_key].shape)}')
        target[pt_key].copy_(state[key])
    unused = sorted(set(state) - {key for _, key in pairs})
    if unused:
        raise ConvertError(f'{path}: tensor {unused[0]} was not used ({len(unused)} in all): the '
                           f'file holds more than a timm pnasnet5large')
    unset = sorted(set(target) - {pt for pt, _ in pairs})
    if unset:
        raise ConvertError(f'the timm weights set no value for {unset[0]} ({len(unset)} in all)')
    log(f'check 1: all {len(state)} timm tensors used, all {len(target)} PyTorch tensors set')
    report = {'diffs': None}
    if check:
        timm_net = _timm_model(num_classes)
        timm_net.load_state_dict(state)
        report['diffs'] = _check_timm(net, timm_net, image_size, log)
    n_params = sum(p.numel() for p in net.parameters())
    payload = {'config': net.config.to_dict(), 'state_dict': net.state_dict(),
               'source': {'timm': os.path.basename(path), 'parameters': n_params,
                          'aux_head': 'aux head: none in timm\'s pnasnet5large, none converted'}}
    utils.write_atomic(output, lambda f: write_weights(payload, output, f))
    log(f'wrote {output} ({n_params:,} parameters, {num_classes} classes)')
    return report


def to_timm(path: str, output: str, force: bool = False, check: bool = True,
            image_size: Optional[int] = None, log=print) -> dict:
    """This port's weights file -> a timm ``pnasnet5large`` state dict (.pth or .safetensors).
    A 1001-class file loses its background logit (row 0), as timm's label_offset 1 has it; the
    aux head, which timm lacks, is left out."""
    _check_output(output, force)
    try:
        net = load_pretrained(path)
    except Exception as e:  # CheckpointError, with its one line
        raise ConvertError(str(e)) from None
    if not net.config.same_body(PNASNetConfig.large()):
        raise ConvertError(f'{path}: timm has only pnasnet5large (PNASNet genotype, 216 filters, '
                           f'12 cells, stem 96); this file is another network')
    source = net.state_dict()
    state = {key: source[pt_key].clone() for pt_key, key in timm_name_map(net)}
    classes = state['last_linear.weight'].shape[0]
    if classes == 1001:
        state['last_linear.weight'] = state['last_linear.weight'][1:].clone()
        state['last_linear.bias'] = state['last_linear.bias'][1:].clone()
        classes = 1000
    timm_net = _timm_model(classes)
    missing, unexpected = timm_net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConvertError(f'the timm layout does not fit timm\'s pnasnet5large (missing '
                           f'{missing[:2]}, unexpected {unexpected[:2]}); nothing was written')
    log(f'check 1: all {len(state)} timm tensors set from {path}')
    report = {'diffs': _check_timm(net, timm_net, image_size or net.config.image_size, log)
              if check else None}
    if output.endswith('.safetensors'):
        utils.write_atomic(output, lambda f: _write_safetensors(state, f))
    else:
        utils.write_atomic(output, lambda f: torch.save(state, f))
    log(f'wrote {output} (timm pnasnet5large, {classes} classes)')
    return report


# --- how far TensorFlow is from itself: the floor under check 2's bound ----------------------------

def tf_endpoints(prefix: str, size: int, out: str) -> None:
    """The twin restored from ``prefix`` (its config read from the checkpoint) on the check
    images at ``size``, its endpoints saved to ``out``: the body of one ``--tf-endpoints``
    process of ``floor``."""
    tensors = read_checkpoint(prefix)
    config = infer_config(tensors)
    aux = any(AUX_BN.match(n) for n in tensors)  # the published files lack the aux BatchNorms
    images, _ = check_images(size)
    ends = tf_reference.run_checkpoint(prefix, config, images, aux=aux and size == config.image_size)
    np.savez(out, **ends)


def floor(prefix: str, size: Optional[int] = None, log=print) -> Dict[str, dict]:
    """TensorFlow against itself (``TF_ENABLE_ONEDNN_OPTS=0`` against ``=1``, each in a process of
    its own, since TF reads the variable once) and the port against both, on one checkpoint and
    the check images of check 2. Returns, per endpoint, the largest magnitude and the max
    |difference| of each pair."""
    import subprocess
    net, _ = network_from_checkpoint(prefix, auxiliary=True)
    size = size or net.config.image_size
    with tempfile.TemporaryDirectory(prefix='pnasnet_floor_') as tmp:
        tf_out = {}
        for flag in ('0', '1'):
            out = os.path.join(tmp, f'tf{flag}.npz')
            env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=flag)
            subprocess.run([sys.executable, os.path.abspath(__file__), '--tf-endpoints', prefix,
                            '--image-size', str(size), '--out', out], env=env, check=True)
            tf_out[flag] = dict(np.load(out))
    _, x = check_images(size)
    with torch.no_grad():
        port = {'logits': net(x).numpy(), 'global_pool': net.extract_features(x).numpy()}
    if 'aux_logits' in tf_out['0']:
        port['aux_logits'] = aux_logits_as_tf(net, x).numpy()
    rows = {}
    for name, mine in port.items():
        a, b = tf_out['0'][name], tf_out['1'][name]
        rows[name] = {'scale': float(np.abs(a).max()), 'tf0_tf1': float(np.abs(a - b).max()),
                      'port_tf0': float(np.abs(mine - a).max()), 'port_tf1': float(np.abs(mine - b).max())}
        r = rows[name]
        log(f'{name:12s} max|TF| {r["scale"]:8.3g}   TF oneDNN off vs on {r["tf0_tf1"]:9.3g} '
            f'({r["tf0_tf1"] / r["scale"]:.2e} of max|TF|)   port vs off {r["port_tf0"]:9.3g} '
            f'({r["port_tf0"] / r["scale"]:.2e})   port vs on {r["port_tf1"]:9.3g} '
            f'({r["port_tf1"] / r["scale"]:.2e})')
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='More: docs/conversion.md')
    ap.add_argument('--checkpoint', default='data/model.ckpt',
                    help='TF checkpoint prefix, the folder holding it, or the official .tar.gz; '
                         'downloaded from --url when it is not there')
    ap.add_argument('--url', default=OFFICIAL_URLS['large'],
                    help='the archive to download when the checkpoint is not there (default: '
                         f'PNASNet-5 Large; Mobile\'s is {OFFICIAL_URLS["mobile"]})')
    ap.add_argument('--no-download', action='store_true',
                    help='never download: a missing checkpoint is an error')
    ap.add_argument('--from-timm', metavar='FILE',
                    help='convert a timm pnasnet5large state dict (.pth, .bin or .safetensors) '
                         'instead of a TF checkpoint; its 1000 classes stay 1000 (no background)')
    ap.add_argument('--to-timm', metavar='FILE',
                    help='write this port\'s weights FILE in timm\'s pnasnet5large layout to '
                         '--output (the background logit and the aux head dropped)')
    ap.add_argument('--output', default=None,
                    help='the weights file (default data/PNASNet-5_Large.pth): .pth, or '
                         '.safetensors (tensors only, the config in its metadata); '
                         'model.load_pretrained reads either')
    ap.add_argument('--force', action='store_true', help='replace an existing output file')
    ap.add_argument('--image-size', type=utils.int_at_least(MIN_IMAGE_SIZE),
                    help='size of the test image of check 2 (default: the network\'s own)')
    ap.add_argument('--self-test', action='store_true',
                    help='convert random checkpoints of small configs and compare with TF')
    ap.add_argument('--floor', metavar='PREFIX',
                    help='TensorFlow against itself (TF_ENABLE_ONEDNN_OPTS=0 against =1) and the '
                         'port against both, on this checkpoint at --image-size: the fp32 floor '
                         'under the bound of check 2 (docs/conversion.md); writes nothing')
    ap.add_argument('--tf-endpoints', metavar='PREFIX', help=argparse.SUPPRESS)
    ap.add_argument('--out', help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        if args.self_test:
            return 0 if self_test() else 1
        if args.tf_endpoints:
            tf_endpoints(args.tf_endpoints, args.image_size, args.out)
            return 0
        if args.floor:
            floor(args.floor, args.image_size)
            return 0
        if args.to_timm:
            if not args.output:
                raise ConvertError('--to-timm needs --output, the timm state dict to write')
            to_timm(args.to_timm, args.output, force=args.force, image_size=args.image_size)
            return 0
        output = args.output or 'data/PNASNet-5_Large.pth'
        if args.from_timm:
            from_timm(args.from_timm, output, force=args.force, image_size=args.image_size or 331)
            return 0
        convert(args.checkpoint, output, force=args.force, image_size=args.image_size,
                url=None if args.no_download else args.url)
        return 0
    except ConvertError as e:
        print(f'convert.py: error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
