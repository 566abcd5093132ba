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
import os
import shutil
import sys
import tempfile
from typing import Dict, Optional

import numpy as np
import torch

import tf_reference
import timm_weights
import utils
from model import MIN_IMAGE_SIZE, NetworkImageNet, PNASNetConfig, load_pretrained
from pretrained import OFFICIAL_URLS
from tf_reference import AUX_BN, check_images
from timm_weights import check_timm, network_from_timm, read_state_dict, timm_model, timm_name_map
from tf_weights import (ConvertError, aux_logits_as_tf, checkpoint_present, convert_checkpoint,
                        fetch_checkpoint, infer_config, network_from_checkpoint,
                        read_checkpoint, resolve_checkpoint, tf_to_torch, weights_payload)
from weights_io import write_safetensors, write_weights

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
            image_size: Optional[int] = None, log=print, url: Optional[str] = None) -> dict:
    """Converts ``checkpoint`` (prefix, folder or .tar.gz) to ``output``; returns a report.
    With ``url``, a checkpoint that is not there is first fetched from it (``fetch_checkpoint``)."""
    _check_output(output, force)
    if url and not checkpoint_present(checkpoint):
        fetch_checkpoint(checkpoint, url, log)
    workdir = tempfile.mkdtemp(prefix='pnasnet_convert_')
    try:
        prefix = resolve_checkpoint(checkpoint, workdir)
        net, report = convert_checkpoint(prefix, check=check, image_size=image_size, log=log)
        payload = weights_payload(net, report, prefix)
        utils.write_atomic(output, lambda f: write_weights(payload, output, f))
        log(f'wrote {output} ({report["parameters"]:,} parameters without the aux head)')
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

def from_timm(path: str, output: str, force: bool = False, check: bool = True,
              image_size: int = 331, log=print) -> dict:
    """timm ``pnasnet5large`` weights -> this port's weights file. Its 1000 classes stay 1000
    (class k is ImageNet class k, no background logit: timm dropped it, label_offset 1)."""
    _check_output(output, force)
    state = read_state_dict(path)
    net, report = network_from_timm(state, path, check=check, image_size=image_size, log=log)
    payload = timm_weights.weights_payload(net, report, os.path.basename(path))
    utils.write_atomic(output, lambda f: write_weights(payload, output, f))
    log(f'wrote {output} ({report["parameters"]:,} parameters, {net.num_classes} classes)')
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
    timm_net = timm_model(classes)
    missing, unexpected = timm_net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConvertError(f'the timm layout does not fit timm\'s pnasnet5large (missing '
                           f'{missing[:2]}, unexpected {unexpected[:2]}); nothing was written')
    log(f'check 1: all {len(state)} timm tensors set from {path}')
    report = {'diffs': check_timm(net, timm_net, image_size or net.config.image_size, log)
              if check else None}
    if output.endswith('.safetensors'):
        utils.write_atomic(output, lambda f: write_safetensors(state, f))
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
