"""Throughput of this port against TF-Slim (the tf_reference graph) and timm, in one process.

    python benchmark.py                      # batch 4, 331 px, 2 threads on CPU
    python benchmark.py --json bench.json    # also write the figures

All models get the same random PNASNet-5 Large weights where they can (this port and the TF graph
share one converted checkpoint; timm's has its own random weights), the same batch and size, and
are timed interleaved: one forward of each in turn, several rounds after a warm-up, so that the
load of a shared machine falls on all of them alike. What matters is the ratio column.

After the rounds it splits one forward of this port's fp32 engine and of timm's faster layout into
1x1 convolutions, depthwise convolutions, other convolutions and the rest, and prints the most that
fp32 / timm could reach if everything but this port's 1x1 convolutions took no time. ``--bounds``
also times the engine with its depthwise convolutions skipped (its logits are wrong: it bounds
what any depthwise kernel could give).
"""
import argparse
import contextlib
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
import operations
import utils

CONV_KINDS = ('1x1', 'depthwise', 'other')
BREAKDOWN_REPEATS = 3  # instrumented forwards per model after the rounds


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


def conv_kind(conv: torch.nn.Conv2d) -> str:
    """'1x1', 'depthwise' (one filter per channel) or 'other'."""
    if conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels:
        return 'depthwise'
    return '1x1' if tuple(conv.kernel_size) == (1, 1) else 'other'


def _patch_conv_forward(fn):
    """Makes this port's engine call ``fn`` for every convolution (model.py and operations.py
    each hold the name); returns the original. Only for measuring: restore it when done."""
    original = operations.conv_forward
    operations.conv_forward = model_mod.conv_forward = fn
    return original


@contextlib.contextmanager
def conv_timer(net: torch.nn.Module):
    """Seconds spent in each kind of ``net``'s convolutions (``CONV_KINDS``) inside the block,
    and the number of calls. This port's engine calls ``operations.conv_forward`` (wrapped here
    for the block); other models, timm's among them, run a Conv2d's forward (hooked here, its
    padding included). Everything is put back when the block ends."""
    seconds = dict.fromkeys(CONV_KINDS, 0.0)
    calls = dict.fromkeys(CONV_KINDS, 0)
    started = {}

    def record(conv, t0):
        kind = conv_kind(conv)
        seconds[kind] += time.perf_counter() - t0
        calls[kind] += 1

    def timed_conv_forward(conv, x, *args, **kwargs):
        t0 = time.perf_counter()
        out = original(conv, x, *args, **kwargs)
        record(conv, t0)
        return out

    def before(conv, inputs):
        started[conv] = time.perf_counter()

    def after(conv, inputs, output):
        record(conv, started.pop(conv))

    handles = []
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            handles += [m.register_forward_pre_hook(before), m.register_forward_hook(after)]
    original = _patch_conv_forward(timed_conv_forward)
    try:
        yield seconds, calls
    finally:
        _patch_conv_forward(original)
        for h in handles:
            h.remove()


def time_breakdown(net: torch.nn.Module, fn, repeats: int = BREAKDOWN_REPEATS) -> dict:
    """Milliseconds of one ``fn()`` (a forward of ``net``) by where they go: each kind of
    convolution, the rest (pools, ReLUs, adds, copies, Python), and the total; means over
    ``repeats`` instrumented calls (the timers add a little to each)."""
    total = 0.0
    with conv_timer(net) as (seconds, calls):
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            total += time.perf_counter() - t0
    ms = {kind: 1e3 * seconds[kind] / repeats for kind in CONV_KINDS}
    ms['rest'] = 1e3 * total / repeats - sum(ms.values())
    ms['total'] = 1e3 * total / repeats
    ms['calls'] = {kind: calls[kind] // repeats for kind in CONV_KINDS}
    return ms


@contextlib.contextmanager
def depthwise_skipped():
    """Inside the block this port's engine skips its depthwise convolutions (each hands on its
    input, subsampled where it has a stride): not a model, its logits are wrong; it bounds what
    any depthwise kernel, however fast, could give the engine."""
    def conv_forward(conv, x, *args, **kwargs):
        if conv_kind(conv) != 'depthwise':
            return original(conv, x, *args, **kwargs)
        stride = kwargs.get('stride') or conv.stride[0]
        return x if stride == 1 else x[:, :, ::stride, ::stride]

    original = _patch_conv_forward(conv_forward)
    try:
        yield
    finally:
        _patch_conv_forward(original)


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
    ap.add_argument('--bounds', action='store_true',
                    help='also time the fp32 engine with its depthwise convolutions skipped (wrong '
                         'logits: an upper bound on what a faster depthwise kernel could give)')
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
    # the aux head is not timed; it stays in the checkpoint where it fits, so that the default
    # run's random weights (drawn in variable order) are the ones its figures were measured with
    aux = model_mod.aux_kernel_size(config, args.size) >= 1
    tf_reference.make_random_checkpoint(prefix, config, seed=1, aux=aux, image_size=args.size)
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
    notes = []
    runners = {'fp32': run(fast, x_cl), 'plain_fp32': run(plain, x)}
    logits_bf16 = None
    if device.type == 'cuda' or operations.cpu_has_native_bf16():
        runners['bf16'] = run(fast, x_cl, torch.bfloat16)
        logits_bf16 = runners['bf16']().float().cpu().numpy()
    else:
        notes.append('bf16 skipped: this CPU has no native bfloat16 (oneDNN finds neither '
                     'AVX512_BF16 nor AMX), where bf16 runs an order of magnitude slower than fp32')
    if device.type == 'cuda':
        runners['fp16'] = run(fast, x_cl, torch.float16)
    if args.compile:
        compiled = model_mod.compile_for_inference(fast, device)
        runners['compiled_fp32'] = run(compiled, x_cl)
    if args.bounds:
        fp32 = runners['fp32']

        def fp32_without_depthwise():
            with depthwise_skipped():
                return fp32()
        runners['fp32_no_depthwise'] = fp32_without_depthwise
    if timm is None and not args.no_timm:
        notes.append('timm is not installed: its rows are skipped (pip install timm)')
    timm_nets = {}
    if timm is not None:
        t_nchw = timm.create_model('pnasnet5large', pretrained=False).eval().to(device)
        timm_nets['timm_nchw'] = t_nchw
        timm_nets['timm_channels_last'] = copy.deepcopy(t_nchw).to(memory_format=torch.channels_last)
        runners['timm_nchw'] = run(t_nchw, x)
        runners['timm_channels_last'] = run(timm_nets['timm_channels_last'], x_cl)
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
    timm_layout = max((k for k in ('timm_nchw', 'timm_channels_last') if k in rates),
                      key=lambda k: rates[k]['median'], default=None)
    breakdown = {'fp32': time_breakdown(fast, runners['fp32'])}
    if timm_layout:
        breakdown[timm_layout] = time_breakdown(timm_nets[timm_layout], runners[timm_layout])
    pre = preprocess_rates(n=16, rounds=max(3, args.rounds))

    labels = {'fp32': 'this port, fp32 (engine, channels_last)',
              'bf16': 'this port, bf16 autocast', 'fp16': 'this port, fp16 autocast',
              'compiled_fp32': 'this port, fp32, torch.compile (freezing)',
              'fp32_no_depthwise': 'bound: fp32 engine, depthwise convs skipped',
              'plain_fp32': 'this port, fp32, unfused NCHW',
              'timm_nchw': 'timm pnasnet5large, NCHW', 'timm_channels_last': 'timm pnasnet5large, channels_last',
              'tf_fp32': 'TF-Slim graph (tf_reference), fp32 NHWC'}
    base = rates['fp32']['median']
    print(f'\n{"model":48s} {"img/s":>7s} {"min-max":>13s} {"this fp32 / it":>15s}')
    for k, r in rates.items():
        print(f'{labels[k]:48s} {r["median"]:7.2f} {r["min"]:6.2f}-{r["max"]:<6.2f} {base / r["median"]:15.2f}')
    timm_best = rates[timm_layout]['median'] if timm_layout else None
    paired = {peer: per_round_ratios(times, 'fp32', key) for peer, key in
              (('timm_best', timm_layout), ('tf', 'tf_fp32')) if key in rates}
    bf16_agrees = None if logits_bf16 is None else logits_bf16.argmax(1) == logits_fp32.argmax(1)
    result = {
        'fp32_img_s': base, 'bf16_img_s': rates['bf16']['median'] if 'bf16' in rates else None,
        'plain_fp32_img_s': rates['plain_fp32']['median'],
        'tf_fp32_img_s': rates['tf_fp32']['median'] if 'tf_fp32' in rates else None,
        'timm_best_img_s': timm_best,
        'preprocess_img_s': pre['numpy']['median'], 'tf_preprocess_img_s': pre['tf']['median'],
        'max_abs_logit_diff_fast_vs_plain': float(np.abs(logits_fp32 - logits_plain).max()),
        'bf16_same_top1_as_fp32': None if bf16_agrees is None else bool(bf16_agrees.all()),
        'bf16_top1_agreements': None if bf16_agrees is None else int(bf16_agrees.sum()),
        'bf16_max_abs_logit_diff': (None if logits_bf16 is None
                                    else float(np.abs(logits_bf16 - logits_fp32).max())),
        'fp32_top1_margins': [float(m) for m in top1_margins(logits_fp32)],
        'fp32_over_timm_best_per_round': paired.get('timm_best'),
        'fp32_over_tf_per_round': paired.get('tf'),
        'rates': rates, 'preprocess': pre, 'memory': peak, 'breakdown_ms': breakdown,
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
    if timm_best:
        result['fp32_1x1_floor_over_timm_best'] = 1e3 * args.batch / timm_best / breakdown['fp32']['1x1']
    if timm_best and 'fp32_no_depthwise' in rates:
        result['fp32_no_depthwise_over_timm_best'] = rates['fp32_no_depthwise']['median'] / timm_best
        result['fp32_no_depthwise_over_timm_best_per_round'] = per_round_ratios(
            times, 'fp32_no_depthwise', timm_layout)
    print()
    def per_round(peer):
        r = paired[peer]
        return f' (per round: median {r["median"]:.2f}x, {r["min"]:.2f}-{r["max"]:.2f})'
    if timm_best:
        print(f'fp32 / timm best layout: {base / timm_best:.2f}x' + per_round('timm_best'))
    if result['tf_fp32_img_s']:
        print(f'fp32 / TF graph: {base / result["tf_fp32_img_s"]:.2f}x' + per_round('tf')
              + (f'; bf16 / TF graph fp32: {result["bf16_img_s"] / result["tf_fp32_img_s"]:.2f}x'
                 if result['bf16_img_s'] else ''))
        print(f'max |logits - TF| (fp32 fast path): {result["max_abs_logit_diff_vs_tf"]:.3g}'
              + (f'; torch.compile: {result["compiled_max_abs_logit_diff_vs_tf"]:.3g}'
                 if 'compiled_max_abs_logit_diff_vs_tf' in result else ''))
    if bf16_agrees is not None:
        print(f'bf16 top-1 equals fp32 top-1 on {result["bf16_top1_agreements"]} of the '
              f'{args.batch} reference images; bf16 logits differ from fp32 by up to '
              f'{result["bf16_max_abs_logit_diff"]:.3g}, fp32 top-1 margins '
              + ', '.join(f'{m:.3g}' for m in result['fp32_top1_margins'])
              + ' (random weights: a margin below the bf16 difference can flip)')
    print_breakdown(breakdown, labels)
    if 'fp32_no_depthwise_over_timm_best' in result:
        r = result['fp32_no_depthwise_over_timm_best_per_round']
        print(f'bound, depthwise convs free: fp32 / timm best layout '
              f'{result["fp32_no_depthwise_over_timm_best"]:.2f}x (per round: median '
              f'{r["median"]:.2f}x, {r["min"]:.2f}-{r["max"]:.2f})')
    if timm_best:
        print(f'bound, everything but the 1x1 convs free: fp32 / timm best layout at most '
              f'{result["fp32_1x1_floor_over_timm_best"]:.2f}x (timm\'s median forward over the '
              f'time of this port\'s 1x1 convs alone)')
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


def print_breakdown(breakdown: dict, labels: dict) -> None:
    print(f'\nwhere one forward goes, ms (mean of {BREAKDOWN_REPEATS} instrumented forwards after the rounds):')
    print(f'{"model":48s} {"1x1 convs":>9s} {"depthwise":>9s} {"other conv":>10s} {"the rest":>8s} {"total":>7s}')
    for name, ms in breakdown.items():
        print(f'{labels[name]:48s} {ms["1x1"]:9.0f} {ms["depthwise"]:9.0f} {ms["other"]:10.0f} '
              f'{ms["rest"]:8.0f} {ms["total"]:7.0f}')


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
