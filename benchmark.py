"""Throughput of this port against TF-Slim (the tf_reference graph) and timm, in one process.

    python benchmark.py                      # batch 4, 331 px, 2 threads on CPU
    python benchmark.py --json bench.json    # also write the figures

All models get the same random PNASNet-5 Large weights where they can (this port and the TF graph
share one converted checkpoint; timm's has its own random weights), the same batch and size, and
are timed interleaved: one forward of each in turn, several rounds after a warm-up, so that the
load of a shared machine falls on all of them alike. What matters is the ratio column.
"""
import argparse
import copy
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

import model as model_mod
import utils


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def round_orders(n: int) -> list:
    """Orders of runners 0..n-1 for successive rounds, a balanced Latin square (Williams design):
    over one cycle every runner opens a round equally often and follows every other runner
    equally often, so that none always runs after the same one (whose caches, or whose framework's
    threads, it would inherit). The cycle is n rounds for even n, 2n for odd n."""
    first = [0]
    for j in range(1, n):
        first.append((j + 1) // 2 if j % 2 else n - j // 2)
    orders = [[(i + r) % n for i in first] for r in range(n)]
    if n % 2:
        orders += [order[::-1] for order in orders]
    return orders


def timed_rounds(runners: dict, rounds: int, batch: int) -> dict:
    """img/s of each runner per round, interleaved; the order changes from round to round as
    ``round_orders`` gives."""
    times = {name: [] for name in runners}
    names = list(runners)
    orders = round_orders(len(names))
    for r in range(rounds):
        for name in (names[i] for i in orders[r % len(orders)]):
            t0 = time.perf_counter()
            runners[name]()
            times[name].append(batch / (time.perf_counter() - t0))
    return times


def summary(values):
    return {'median': statistics.median(values), 'min': min(values), 'max': max(values)}


def per_round_ratios(times: dict, name: str, peer: str) -> dict:
    """Summary of ``name``'s img/s over ``peer``'s, round by round: each ratio compares two
    forwards of the same round, a few seconds apart, where the ratio of the medians may compare
    rounds that the shared machine ran at different speeds."""
    return summary([a / b for a, b in zip(times[name], times[peer])])


def preprocess_rates(n: int, rounds: int) -> dict:
    """Decode + preprocess per image: NumPy (this port) against TF's op called per image."""
    from PIL import Image
    rng = np.random.default_rng(0)
    folder = tempfile.mkdtemp(prefix='pnasnet_bench_')
    paths = []
    for i in range(n):
        img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(img).resize((500, 375), Image.BICUBIC))
        path = os.path.join(folder, f'{i}.JPEG')
        Image.fromarray(img).save(path, quality=90)
        paths.append(path)

    def numpy_run():
        for p in paths:
            utils.preprocess_for_eval(utils.load_rgb(p), 331, 331)

    def tf_run():
        for p in paths:
            utils.preprocess_for_eval_tf(utils.load_rgb(p), 331, 331)

    tf_run()  # warm up TF's eager kernels
    times = timed_rounds({'numpy': numpy_run, 'tf': tf_run}, rounds, n)
    for p in paths:
        os.remove(p)
    os.rmdir(folder)
    return {k: summary(v) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--batch', type=utils.int_at_least(1), default=4)
    ap.add_argument('--size', type=utils.int_at_least(model_mod.MIN_IMAGE_SIZE), default=331)
    ap.add_argument('--threads', type=utils.int_at_least(1), default=2, help='CPU threads for every framework')
    ap.add_argument('--rounds', type=utils.int_at_least(1), default=5)
    ap.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto')
    ap.add_argument('--compile', action='store_true', help='also time torch.compile of the fast path')
    ap.add_argument('--no-tf', action='store_true')
    ap.add_argument('--no-timm', action='store_true')
    ap.add_argument('--json', help='write the figures here')
    args = ap.parse_args(argv)

    device = torch.device('cuda' if args.device in ('auto', 'cuda') and torch.cuda.is_available() else 'cpu')
    torch.set_num_threads(args.threads)
    if device.type == 'cpu':
        utils.tune_cpu_allocator()  # as main.py does; it affects every model in the process alike
    timm = None
    if not args.no_timm:
        try:  # before TensorFlow: triton's native library (imported by timm) segfaults after TF's
            import timm
        except ImportError:
            pass
    import tf_reference
    tf = tf_reference.import_tf()
    tf.config.threading.set_intra_op_parallelism_threads(1)  # eager: the per-image preprocessing op
    tf.config.threading.set_inter_op_parallelism_threads(1)

    config = model_mod.PNASNetConfig.large(image_size=args.size)
    workdir = tempfile.mkdtemp(prefix='pnasnet_bench_')
    prefix = os.path.join(workdir, 'model.ckpt')
    print(f'making a random PNASNet-5 Large checkpoint ({config.num_conv_filters} filters) ...', flush=True)
    images = tf_reference.calibration_images(args.size, n=args.batch, seed=42)
    tf_reference.make_random_checkpoint(prefix, config, seed=1, image_size=args.size)
    import convert
    pth = os.path.join(workdir, 'large.pth')
    convert.convert(prefix, pth, check=False, log=lambda *a: None)

    plain = model_mod.load_pretrained(pth).to(device)
    fast = model_mod.optimize_for_inference(copy.deepcopy(plain))
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)

    def run(net, inp, dtype=None):
        def fn():
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                        enabled=dtype is not None):
                out = net(inp)[0]
            sync()
            return out
        return fn

    rss0 = rss_mb()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        logits_fp32 = run(fast, x_cl)().float().cpu().numpy()
        logits_plain = run(plain, x)().float().cpu().numpy()
    peak = {'fast_fp32_forward_rss_growth_mb': rss_mb() - rss0}
    if device.type == 'cuda':
        peak['cuda_max_allocated_mb'] = torch.cuda.max_memory_allocated() / 2 ** 20
    bf16 = torch.bfloat16
    logits_bf16 = run(fast, x_cl, bf16)().float().cpu().numpy()

    runners = {'fp32': run(fast, x_cl), 'bf16': run(fast, x_cl, bf16), 'plain_fp32': run(plain, x)}
    if device.type == 'cuda':
        runners['fp16'] = run(fast, x_cl, torch.float16)
    if args.compile:
        compiled = model_mod.compile_for_inference(fast, device)
        runners['compiled_fp32'] = run(compiled, x_cl)
    notes = []
    if timm is None and not args.no_timm:
        notes.append('timm is not installed: its rows are skipped (pip install timm)')
    if timm is not None:
        t_nchw = timm.create_model('pnasnet5large', pretrained=False).eval().to(device)
        t_cl = copy.deepcopy(t_nchw).to(memory_format=torch.channels_last)
        runners['timm_nchw'] = run(t_nchw, x)
        runners['timm_channels_last'] = run(t_cl, x_cl)
    tf_net = None
    if not args.no_tf:
        tf_net = tf_reference.TFModel(prefix, config, args.size, args.size, threads=args.threads)
        tf_logits = tf_net(images, 'logits')
        runners['tf_fp32'] = lambda: tf_net(images, 'logits')

    for fn in runners.values():  # warm-up (and compilation)
        fn()
    print(f'timing {len(runners)} models, {args.rounds} interleaved rounds, batch {args.batch}, '
          f'{args.size} px, {args.threads} threads, {device} ...', flush=True)
    times = timed_rounds(runners, args.rounds, args.batch)
    rates = {k: summary(v) for k, v in times.items()}
    pre = preprocess_rates(n=16, rounds=max(3, args.rounds))

    labels = {'fp32': 'this port, fp32 (engine, channels_last)',
              'bf16': 'this port, bf16 autocast', 'fp16': 'this port, fp16 autocast',
              'compiled_fp32': 'this port, fp32, torch.compile (freezing)',
              'plain_fp32': 'this port, fp32, unfused NCHW',
              'timm_nchw': 'timm pnasnet5large, NCHW', 'timm_channels_last': 'timm pnasnet5large, channels_last',
              'tf_fp32': 'TF-Slim graph (tf_reference), fp32 NHWC'}
    base = rates['fp32']['median']
    print(f'\n{"model":48s} {"img/s":>7s} {"min-max":>13s} {"this fp32 / it":>15s}')
    for k, r in rates.items():
        print(f'{labels[k]:48s} {r["median"]:7.2f} {r["min"]:6.2f}-{r["max"]:<6.2f} {base / r["median"]:15.2f}')
    timm_layout = max((k for k in ('timm_nchw', 'timm_channels_last') if k in rates),
                      key=lambda k: rates[k]['median'], default=None)
    timm_best = rates[timm_layout]['median'] if timm_layout else None
    paired = {peer: per_round_ratios(times, 'fp32', key) for peer, key in
              (('timm_best', timm_layout), ('tf', 'tf_fp32')) if key in rates}
    bf16_agrees = logits_bf16.argmax(1) == logits_fp32.argmax(1)
    result = {
        'fp32_img_s': base, 'bf16_img_s': rates['bf16']['median'],
        'plain_fp32_img_s': rates['plain_fp32']['median'],
        'tf_fp32_img_s': rates['tf_fp32']['median'] if 'tf_fp32' in rates else None,
        'timm_best_img_s': timm_best,
        'preprocess_img_s': pre['numpy']['median'], 'tf_preprocess_img_s': pre['tf']['median'],
        'max_abs_logit_diff_fast_vs_plain': float(np.abs(logits_fp32 - logits_plain).max()),
        'bf16_same_top1_as_fp32': bool(bf16_agrees.all()),
        'bf16_top1_agreements': int(bf16_agrees.sum()),
        'bf16_max_abs_logit_diff': float(np.abs(logits_bf16 - logits_fp32).max()),
        'fp32_top1_margins': [float(m) for m in top1_margins(logits_fp32)],
        'fp32_over_timm_best_per_round': paired.get('timm_best'),
        'fp32_over_tf_per_round': paired.get('tf'),
        'rates': rates, 'preprocess': pre, 'memory': peak,
        'settings': {'batch': args.batch, 'size': args.size, 'threads': args.threads,
                     'device': str(device), 'rounds': args.rounds, 'torch': torch.__version__,
                     'tensorflow': tf.__version__, 'machine': platform.machine(),
                     'processor': _cpu_name(), 'cpus': os.cpu_count()},
        'notes': notes,
    }
    if tf_net is not None:
        result['max_abs_logit_diff_vs_tf'] = float(np.abs(logits_fp32 - tf_logits).max())
        if 'compiled_fp32' in runners:
            compiled_logits = runners['compiled_fp32']().float().cpu().numpy()
            result['compiled_max_abs_logit_diff_vs_tf'] = float(np.abs(compiled_logits - tf_logits).max())
    if 'fp16' in rates:
        result['fp16_img_s'] = rates['fp16']['median']
    print()
    def per_round(peer):
        r = paired[peer]
        return f' (per round: median {r["median"]:.2f}x, {r["min"]:.2f}-{r["max"]:.2f})'
    if timm_best:
        print(f'fp32 / timm best layout: {base / timm_best:.2f}x' + per_round('timm_best'))
    if result['tf_fp32_img_s']:
        print(f'fp32 / TF graph: {base / result["tf_fp32_img_s"]:.2f}x' + per_round('tf')
              + f'; bf16 / TF graph fp32: {result["bf16_img_s"] / result["tf_fp32_img_s"]:.2f}x')
        print(f'max |logits - TF| (fp32 fast path): {result["max_abs_logit_diff_vs_tf"]:.3g}'
              + (f'; torch.compile: {result["compiled_max_abs_logit_diff_vs_tf"]:.3g}'
                 if 'compiled_max_abs_logit_diff_vs_tf' in result else ''))
    print(f'bf16 top-1 equals fp32 top-1 on {result["bf16_top1_agreements"]} of the {args.batch} '
          f'reference images; bf16 logits differ from fp32 by up to '
          f'{result["bf16_max_abs_logit_diff"]:.3g}, fp32 top-1 margins '
          + ', '.join(f'{m:.3g}' for m in result['fp32_top1_margins'])
          + ' (random weights: a margin below the bf16 difference can flip)')
    print(f'preprocessing (decode + preprocess_for_eval, 500x375 JPEG -> 331, one thread): '
          f'numpy {pre["numpy"]["median"]:.1f} img/s, TF op {pre["tf"]["median"]:.1f} img/s, '
          f'ratio {pre["numpy"]["median"] / pre["tf"]["median"]:.2f}')
    print(f'memory: the fast fp32 forward grew the process by {peak["fast_fp32_forward_rss_growth_mb"]:.0f} MiB; '
          f'process peak {rss_mb():.0f} MiB')
    for note in notes:
        print('note:', note)
    if args.json:
        utils.save_json(result, args.json)
    if tf_net is not None:
        tf_net.close()
    return 0


def top1_margins(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit of each row."""
    part = np.sort(logits, axis=1)
    return part[:, -1] - part[:, -2]


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == '__main__':
    sys.exit(main())
