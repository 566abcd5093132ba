"""Evaluates a converted PNASNet-5 on ImageNet val with TF-Slim's evaluation preprocessing.

    python main.py                                  # data/val with data/PNASNet-5_Large.pth
    python main.py --limit 500 --batch-size 32      # a quick look at the first 500 images
    torchrun --nproc_per_node=2 main.py ...         # the images split across processes
    python main.py --image cat.jpg dog.jpg          # top-5 classes of single images

The last line is the original port's: ``Test: [50000/50000]	Prec@1 0.829	Prec@5 0.962``.
"""
import argparse
import os
import sys
import time
from typing import List

import numpy as np
import torch
import torch.distributed as dist

import engine
import model as model_mod
import pretrained
import utils
from runtime import (UserError, autocast, end_processes, resolve_precision, setup_cuda,
                     start_processes)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='More: docs/evaluation.md')
    ap.add_argument('--valdir', default='data/val',
                    help='ImageNet val, one folder per wnid; for a train.py output, one folder '
                         'per class of its training data (labelled by the class names it carries)')
    ap.add_argument('--weights', default='data/PNASNet-5_Large.pth',
                    help='output of convert.py, or best.pth of train.py; or IMAGENET1K_TF '
                         '(PNASNet5_Mobile_Weights.IMAGENET1K_TF for Mobile): the official '
                         'weights, downloaded, converted and cached on first use (docs/interop.md)')
    ap.add_argument('--image-size', type=utils.int_at_least(model_mod.MIN_IMAGE_SIZE),
                    help='default: the checkpoint\'s (331 Large, 224 Mobile)')
    ap.add_argument('--batch-size', type=utils.int_at_least(1), default=32)
    ap.add_argument('--workers', type=utils.int_at_least(0), default=min(4, os.cpu_count() or 1),
                    help='DataLoader worker processes (0: load in the main process)')
    ap.add_argument('--device', choices=['auto', 'cuda', 'cpu'], default='auto')
    ap.add_argument('--precision', choices=['fp32', 'bf16', 'fp16'], default='fp32',
                    help='autocast precision; fp32 is the exact one. On a CPU without native '
                         'bfloat16 (AVX512_BF16 or AMX) bf16 is emulated and far slower than '
                         'fp32, and likewise fp16 without AVX512_FP16: main.py then says so and '
                         'runs fp32')
    ap.add_argument('--tf32', action='store_true',
                    help='CUDA only: let fp32 convolutions and matmuls use TF32 tensor cores. '
                         'Faster on Ampere and later GPUs, but TF32 rounds the inputs to 10 '
                         'mantissa bits and changes the logits, so it is off by default (exact fp32)')
    ap.add_argument('--preprocess', choices=['numpy', 'tf'], default='numpy',
                    help='numpy: the TF-exact reimplementation; tf: TensorFlow\'s own ops')
    ap.add_argument('--limit', type=utils.int_at_least(1),
                    help='evaluate only the first N images (in dataset order)')
    ap.add_argument('--skip-bad', action='store_true',
                    help='skip images that cannot be decoded (counted and reported) instead of stopping')
    ap.add_argument('--output', help='write results (accuracy, settings, per-image top-5) as JSON')
    ap.add_argument('--features', help='save the global-pool features, in dataset order, as .npy')
    ap.add_argument('--image', nargs='+', metavar='FILE', help='classify these images and exit')
    ap.add_argument('--plain', action='store_true',
                    help='run the model as converted, without the fused fast path (BN folding, '
                         'channels_last); for comparison')
    ap.add_argument('--compile', action='store_true',
                    help='torch.compile the fast path, with inductor freezing on the CPU; the '
                         'first batch waits for the compilation (see README)')
    ap.add_argument('--no-progress', action='store_true', help='no progress bar')
    return ap.parse_args(argv)


def load_model(weights: str, device: torch.device, plain: bool = False, compile: bool = False):
    """The network of ``weights`` on ``device``: as converted with ``plain``, else the fastest
    exact path (``engine.InferenceModel``, logits within 1e-4 of the plain model)."""
    if plain and compile:
        raise UserError('--compile compiles the fast path, which --plain turns off; drop one')
    try:
        net = model_mod.load_pretrained(pretrained.weights_file(weights))
    except (model_mod.CheckpointError, pretrained.ConvertError) as e:
        raise UserError(str(e)) from None
    net = net.to(device).eval()
    if plain:
        return net
    fast = engine.InferenceModel(net, channels_last=True, compile=compile)
    fast.class_names = net.class_names
    return fast


def class_logits(logits: torch.Tensor) -> torch.Tensor:
    """ImageNet class k is logit k + 1 of the 1001-way checkpoint (0 is background)."""
    return logits[:, 1:] if logits.shape[1] == 1001 else logits


def check_output_paths(args) -> None:
    for flag, path in (('--output', args.output), ('--features', args.features)):
        if path:
            folder = os.path.dirname(os.path.abspath(path)) or '.'
            if os.path.exists(folder) and not os.path.isdir(folder):
                raise UserError(f'{flag} {path}: {folder} is a file, not a folder')


# --- the evaluation --------------------------------------------------------------------------------

def progress_bar(total: int):
    from tqdm import tqdm
    return tqdm(total=total, unit='img', dynamic_ncols=True, file=sys.stderr)


def evaluate(net, samples, args, device, rank: int = 0, world: int = 1) -> dict:
    """Runs this process's share of ``samples``; returns its per-image records and features.

    The loop never waits on the device for the batch it has just queued: each batch's top-5 (and
    features) are copied to the host without blocking, and read only after the next batch has
    been queued, so a GPU always has work while the host does its bookkeeping.
    """
    mine = list(range(rank, len(samples), world))  # a strided split: no image twice, none missed
    dataset = utils.EvalDataset([samples[i] for i in mine], args.image_size, args.preprocess,
                                skip_bad=True)
    cuda = device.type == 'cuda'
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
        pin_memory=cuda, persistent_workers=False)
    memory_format = (net.memory_format if isinstance(net, engine.InferenceModel)
                     else torch.contiguous_format)
    records, feats, bad = [], [], []
    counts = {'c1': 0, 'c5': 0, 'seen': 0}
    bar = progress_bar(len(samples)) if rank == 0 and not args.no_progress else None
    start = time.perf_counter()

    def consume(batch) -> None:
        top5, f, label, local, ok, done = batch
        if done is not None:
            done.synchronize()  # the copies of this batch, queued one batch ago
        for j in range(len(label)):
            if ok[j]:
                records.append((mine[int(local[j])], int(label[j]), top5[j].tolist()))
        if args.features:
            feats.append((local[ok], f[ok]))
        c1, c5 = utils.topk_hits(top5[ok], label[ok])
        counts['c1'] += c1
        counts['c5'] += c5
        counts['seen'] += int(ok.sum())
        if bar is not None:
            seen = max(counts['seen'], 1)
            bar.update(len(label) * world)
            bar.set_postfix_str(f'Prec@1 {counts["c1"] / seen:.3f} Prec@5 {counts["c5"] / seen:.3f} '
                                f'{counts["seen"] * world / (time.perf_counter() - start):.1f} img/s')

    pending = None
    with torch.inference_mode():
        for x, label, local in loader:
            ok = label >= 0
            if not bool(ok.all()):  # label comes from the loader: a host tensor, no device wait
                for j in local[~ok].tolist():
                    path = samples[mine[j]][0]
                    if not args.skip_bad:
                        try:
                            utils.load_rgb(path)
                        except utils.BadImageError as e:
                            raise UserError(f'{e}; pass --skip-bad to skip such images') from None
                    bad.append(path)
            x = x.to(device, non_blocking=True)
            x = x.contiguous(memory_format=memory_format)
            with autocast(device, args.precision):
                f = net.extract_features(x)
                logits = net.forward_head(f)
            scores = class_logits(logits.float())
            top5 = scores.topk(min(5, scores.shape[1]), dim=1).indices.to('cpu', non_blocking=True)
            f = f.float().to('cpu', non_blocking=True) if args.features else None
            done = None
            if cuda:
                done = torch.cuda.Event()
                done.record()
            if pending is not None:
                consume(pending)
            pending = (top5, f, label, local, ok, done)
        if pending is not None:
            consume(pending)
    if bar is not None:
        bar.close()
    out = {'records': records, 'bad': bad, 'seconds': time.perf_counter() - start}
    if args.features:
        idx = torch.cat([i for i, _ in feats]).tolist() if feats else []
        out['features'] = (np.array([mine[i] for i in idx], dtype=np.int64),
                           torch.cat([f for _, f in feats]).numpy() if feats else np.zeros((0, 0), np.float32))
    return out


def gather(part: dict, world: int) -> List[dict]:
    if world == 1:
        return [part]
    parts = [None] * world
    dist.all_gather_object(parts, part)
    return parts


def summarize(parts: List[dict], samples, args, device, net) -> dict:
    records = sorted(r for p in parts for r in p['records'])
    bad = sorted(b for p in parts for b in p['bad'])
    n = len(records)
    c1 = sum(1 for _, label, top5 in records if top5[0] == label)
    c5 = sum(1 for _, label, top5 in records if label in top5)
    seconds = max(p['seconds'] for p in parts)
    return {
        'prec1': c1 / n if n else 0.0, 'prec5': c5 / n if n else 0.0,
        'correct1': c1, 'correct5': c5, 'images': n, 'skipped_bad': bad,
        'images_per_second': n / seconds if seconds > 0 else None,
        'settings': {'valdir': args.valdir, 'weights': args.weights, 'image_size': args.image_size,
                     'batch_size': args.batch_size, 'workers': args.workers, 'device': str(device),
                     'precision': args.precision, 'preprocess': args.preprocess,
                     'limit': args.limit, 'processes': len(parts),
                     'config': net.config.to_dict()},
        'per_image': [{'path': samples[i][0], 'label': label, 'top5': top5}
                      for i, label, top5 in records],
    }


def classify_images(net, paths, args, device) -> None:
    own = getattr(net, 'class_names', None)  # a train.py output's classes
    names = own or [name for _, name in utils.read_class_names()]
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f'{path}: no such image file')
        try:
            image = utils.load_rgb(path)
        except utils.BadImageError as e:
            raise UserError(str(e)) from None
        x = utils.preprocess_for_eval(image, args.image_size, args.image_size)
        x = torch.from_numpy(x.transpose(2, 0, 1).copy())[None].to(device)
        with torch.inference_mode(), autocast(device, args.precision):
            logits = net(x).float()
        probs = torch.softmax(logits, dim=1)[0].cpu()
        print(path)
        for p, k in zip(*probs.topk(min(5, probs.numel()))):
            k = int(k)
            if own:
                label = own[k]
            elif probs.numel() == 1001:
                label = 'background' if k == 0 else names[k - 1]
            else:
                label = names[k] if probs.numel() == 1000 else f'class {k}'
            print(f'  {float(p):.4f}  {label}')


def run(args) -> int:
    device, rank, world = start_processes(args.device)
    try:
        check_output_paths(args)
        if device.type == 'cpu':
            utils.tune_cpu_allocator()
        else:
            setup_cuda(args.tf32)
        args.precision = resolve_precision(device, args.precision,
                                           warn=None if rank == 0 else (lambda message: None))
        net = load_model(args.weights, device, args.plain, args.compile)
        if args.image_size is None:
            args.image_size = net.config.image_size
        if args.image:
            if rank == 0:
                classify_images(net, args.image, args, device)
            return 0
        try:
            samples, _, how = utils.find_images(args.valdir, getattr(net, 'class_names', None))
        except (FileNotFoundError, ValueError) as e:
            raise UserError(str(e)) from None
        if args.limit:
            samples = samples[:args.limit]
        part = evaluate(net, samples, args, device, rank, world)
        parts = gather(part, world)
        if rank != 0:
            return 0
        result = summarize(parts, samples, args, device, net)
        result['settings']['labels'] = how
        for path in result['skipped_bad']:
            print(f'skipped (cannot decode): {path}')
        if args.features:
            idx = np.concatenate([p['features'][0] for p in parts])
            feats = np.concatenate([p['features'][1] for p in parts if p['features'][1].size])
            ordered = feats[np.argsort(idx, kind='stable')]
            utils.write_atomic(args.features, lambda f: np.save(f, ordered))
        if args.output:
            utils.save_json(result, args.output)
        n = result['images']
        if result['skipped_bad']:
            print(f'{len(result["skipped_bad"])} image(s) skipped, {n} evaluated')
        print(f'Test: [{n}/{n}]\tPrec@1 {result["prec1"]:.3f}\tPrec@5 {result["prec5"]:.3f}')
        return 0
    finally:
        end_processes()


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f'main.py: error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
