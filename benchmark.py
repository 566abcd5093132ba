"""Throughput of this port against TF-Slim (the tf_reference graph) and timm, in one process.

    python benchmark.py                      # batch 4, 331 px, 2 threads on CPU
    python benchmark.py --json bench.json    # also write the figures

All models get the same random PNASNet-5 Large weights where they can (this port and the TF graph
share one converted checkpoint; timm's has its own random weights), the same batch and size, and
are timed interleaved: one forward of each in turn, several rounds after a warm-up, so that the
load of a shared machine falls on all of them alike. What matters is the ratio column.

After the rounds it splits one forward of this port's fp32 engine and of timm's faster layout into
1x1 convolutions, depthwise convolutions, other convolutions and the rest, and prints the most that
fp32 / timm could reach if everything but this port's 1x1 convolutions took no time.

``main`` is thin: ``build`` makes the models and the runners, ``timed_rounds`` measures them,
``collect`` assembles the result dict (the ``--json`` keys), ``report`` prints it.
"""
import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

import engine
import model as model_mod
import runtime
import utils

CONV_KINDS = ('1x1', 'depthwise', 'other')
BREAKDOWN_REPEATS = 3  # instrumented forwards per model after the rounds


def rss_mb() -> float:
    """The process's peak RSS so far."""
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


@contextlib.contextmanager
def conv_timer(net: torch.nn.Module):
    """Seconds spent in each kind of ``net``'s convolutions (``CONV_KINDS``) inside the block,
    and the number of calls. An ``engine.InferenceModel`` reports its convolutions through its
    ConvRunner's observer; other models, timm's among them, run a Conv2d's forward (hooked here,
    its padding included). Everything is put back when the block ends."""
    seconds = dict.fromkeys(CONV_KINDS, 0.0)
    calls = dict.fromkeys(CONV_KINDS, 0)
    started = {}

    def record(conv, elapsed):
        kind = conv_kind(conv)
        seconds[kind] += elapsed
        calls[kind] += 1

    def before(conv, inputs):
        started[conv] = time.perf_counter()

    def after(conv, inputs, output):
        record(conv, time.perf_counter() - started.pop(conv))

    handles = []
    if isinstance(net, engine.InferenceModel):
        net.conv.observer = record
    else:
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                handles += [m.register_forward_pre_hook(before), m.register_forward_hook(after)]
    try:
        yield seconds, calls
    finally:
        if isinstance(net, engine.InferenceModel):
            net.conv.observer = None
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
    ms['total'] = 1e3 * total / repeats
    ms['rest'] = ms['total'] - sum(ms[kind] for kind in CONV_KINDS)
    ms['calls'] = {kind: calls[kind] // repeats for kind in CONV_KINDS}
    return ms


def preprocess_rates(n: int, rounds: int, with_tf: bool = True) -> dict:
    """Decode + preprocess per image: NumPy (this port) against TF's op called per image
    (``with_tf``; else NumPy alone)."""
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

    runs = {'numpy': numpy_run}
    if with_tf:
        tf_run()  # warm up TF's eager kernels
        runs['tf'] = tf_run
    times = timed_rounds(runs, rounds, n)
    for p in paths:
        os.remove(p)
    os.rmdir(folder)
    return {k: summary(v) for k, v in times.items()}


LABELS = {'fp32': 'this port, fp32 (engine, channels_last)',
          'bf16': 'this port, bf16 autocast', 'fp16': 'this port, fp16 autocast',
          'compiled_fp32': 'this port, fp32, torch.compile (freezing)',
          'plain_fp32': 'this port, fp32, unfused NCHW',
          'timm_nchw': 'timm pnasnet5large, NCHW', 'timm_channels_last': 'timm pnasnet5large, channels_last',
          'tf_fp32': 'TF-Slim graph (tf_reference), fp32 NHWC'}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='More: docs/performance.md')
    ap.add_argument('--batch', type=utils.int_at_least(1), default=4)
    ap.add_argument('--size', type=utils.int_at_least(model_mod.MIN_IMAGE_SIZE), default=331)
    ap.add_argument('--threads', type=utils.int_at_least(1), default=2, help='CPU threads for every framework')
    ap.add_argument('--rounds', type=utils.int_at_least(1), default=5)
    ap.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto')
    ap.add_argument('--compile', action='store_true',
                    help='also time torch.compile: of the fast path, or with --train of the training '
                         'step (train.py --compile); compiling takes minutes, more on a CPU')
    ap.add_argument('--no-tf', action='store_true',
                    help='no TensorFlow at all (a machine without it): no TF rows, and the random '
                         'network is drawn and calibrated in PyTorch instead of converted from a '
                         'TF checkpoint')
    ap.add_argument('--no-timm', action='store_true')
    ap.add_argument('--json', help='write the figures here')
    ap.add_argument('--train', action='store_true',
                    help="time one training step (forward, backward, optimizer) of train.py's model "
                         "against timm's pnasnet5large, and the peak memory with and without "
                         "--grad-checkpointing (batch 2 unless --batch is given)")
    ap.add_argument('--bf16-anyway', action='store_true',
                    help='with --train: time the bf16 rows even on a CPU without native bf16')
    ap.add_argument('--memory-probe', choices=['plain', 'checkpointing'], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.train and '--batch' not in (argv if argv is not None else sys.argv[1:]):
        args.batch = 2
    return args


@dataclasses.dataclass
class Bench:
    """What ``build`` makes: the runners (name -> one timed forward of the batch), the models
    that the breakdown splits, the reference logits, and the notes for the report."""
    runners: dict
    models: dict
    logits: dict
    notes: list
    memory: dict
    tf_net: object = None


def _forward(net, inp, device, dtype=None):
    def fn():
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            out = net(inp)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        return out
    return fn


def build(args, device, timm, workdir: str) -> Bench:
    """A random PNASNet-5 Large checkpoint, converted (with ``--no-tf``, random weights drawn
    and calibrated in PyTorch: no TensorFlow at all); this port's runners (fp32 engine, bf16
    where the device has it natively, plain NCHW, fp16 on CUDA, torch.compile if asked), timm's
    two layouts and the TF graph, each with its logits of the batch."""
    import tf_reference  # its random weights and check images need no TensorFlow
    import tf_weights
    config = model_mod.PNASNetConfig.large(image_size=args.size)
    prefix = os.path.join(workdir, 'model.ckpt')
    print(f'making a random PNASNet-5 Large ({config.num_conv_filters} filters) ...', flush=True)
    images, x = tf_reference.check_images(args.size, n=args.batch, seed=42)
    # the aux head is not timed; it stays in the checkpoint where it fits, so that the default
    # run's random weights (drawn in variable order) are the ones its figures were measured with
    aux = model_mod.aux_kernel_size(config, args.size) >= 1
    if args.no_tf:
        plain = random_network(config, args.size)
    else:
        tf_reference.make_random_checkpoint(prefix, config, seed=1, aux=aux, image_size=args.size)
        plain, _ = tf_weights.network_from_checkpoint(prefix)
    plain = plain.to(device)
    fast = engine.InferenceModel(plain)
    x = x.to(device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    runners = {'fp32': _forward(fast, x_cl, device), 'plain_fp32': _forward(plain, x, device)}
    rss0 = rss_mb()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    logits = {'fp32': runners['fp32']().float().cpu().numpy()}
    memory = {'fast_fp32_forward_rss_growth_mb': rss_mb() - rss0}
    if device.type == 'cuda':
        memory['cuda_max_allocated_mb'] = torch.cuda.max_memory_allocated() / 2 ** 20
    logits['plain_fp32'] = runners['plain_fp32']().float().cpu().numpy()
    notes = []
    if device.type == 'cuda' or runtime.cpu_has_native_bf16():
        runners['bf16'] = _forward(fast, x_cl, device, torch.bfloat16)
        logits['bf16'] = runners['bf16']().float().cpu().numpy()
    else:
        notes.append('bf16 skipped: this CPU has no native bfloat16 (oneDNN finds neither '
                     'AVX512_BF16 nor AMX), where bf16 runs an order of magnitude slower than fp32')
    if device.type == 'cuda':
        runners['fp16'] = _forward(fast, x_cl, device, torch.float16)
    models = {'fp32': fast}
    if args.compile:
        runners['compiled_fp32'] = _forward(engine.InferenceModel(plain, compile=True), x_cl, device)
    if timm is None and not args.no_timm:
        notes.append('timm is not installed: its rows are skipped (pip install timm)')
    if timm is not None:
        t_nchw = timm.create_model('pnasnet5large', pretrained=False).eval().to(device)
        models['timm_nchw'] = t_nchw
        models['timm_channels_last'] = copy.deepcopy(t_nchw).to(memory_format=torch.channels_last)
        runners['timm_nchw'] = _forward(t_nchw, x, device)
        runners['timm_channels_last'] = _forward(models['timm_channels_last'], x_cl, device)
    bench = Bench(runners, models, logits, notes, memory)
    if not args.no_tf:
        bench.tf_net = tf_reference.TFModel(prefix, config, args.size, args.size, threads=args.threads)
        logits['tf'] = bench.tf_net(images, 'logits')
        runners['tf_fp32'] = lambda: bench.tf_net(images, 'logits')
    return bench


def random_network(config: model_mod.PNASNetConfig, size: int, seed: int = 1) -> model_mod.NetworkImageNet:
    """PNASNet of ``config`` with tf_reference's random weights, drawn in PyTorch's tensor order,
    and BatchNorm statistics calibrated on smooth images as tf_reference calibrates them (each
    BN's statistics those of its input in a training-mode forward): what ``--no-tf`` times,
    where TensorFlow is not installed (a GPU machine). Eval mode, no aux head."""
    import tf_reference
    import tf_weights
    net = model_mod.NetworkImageNet(config)
    state = net.state_dict()
    shapes = {tf_name: tf_weights.tf_shape(state[key].shape, layout)
              for key, tf_name, layout in tf_weights.name_map(net)}
    tf_weights.load_tf_weights(net, tf_reference.random_weights(shapes, seed))
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: after one forward, that batch's statistics
    _, x = tf_reference.check_images(size, n=4, seed=seed + 1)
    net.train()
    with torch.no_grad():
        net.forward_features(x)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    return net.eval()


def collect(args, device, bench: Bench, times: dict, breakdown: dict, pre: dict, tf_version) -> dict:
    """The result dict: the figures, by the ``--json`` keys that scripts read."""
    rates = {k: summary(v) for k, v in times.items()}
    logits = bench.logits
    timm_layout = best_timm_layout(rates)
    base = rates['fp32']['median']
    timm_best = rates[timm_layout]['median'] if timm_layout else None
    bf16 = logits.get('bf16')
    agrees = None if bf16 is None else bf16.argmax(1) == logits['fp32'].argmax(1)
    result = {
        'fp32_img_s': base, 'bf16_img_s': rates['bf16']['median'] if 'bf16' in rates else None,
        'plain_fp32_img_s': rates['plain_fp32']['median'],
        'tf_fp32_img_s': rates['tf_fp32']['median'] if 'tf_fp32' in rates else None,
        'timm_best_img_s': timm_best,
        'preprocess_img_s': pre['numpy']['median'],
        'tf_preprocess_img_s': pre['tf']['median'] if 'tf' in pre else None,
        'max_abs_logit_diff_fast_vs_plain': float(np.abs(logits['fp32'] - logits['plain_fp32']).max()),
        'bf16_same_top1_as_fp32': None if agrees is None else bool(agrees.all()),
        'bf16_top1_agreements': None if agrees is None else int(agrees.sum()),
        'bf16_max_abs_logit_diff': None if bf16 is None else float(np.abs(bf16 - logits['fp32']).max()),
        'fp32_top1_margins': [float(m) for m in top1_margins(logits['fp32'])],
        'fp32_over_timm_best_per_round': per_round_ratios(times, 'fp32', timm_layout) if timm_layout else None,
        'fp32_over_tf_per_round': per_round_ratios(times, 'fp32', 'tf_fp32') if 'tf_fp32' in times else None,
        'rates': rates, 'preprocess': pre, 'memory': bench.memory, 'breakdown_ms': breakdown,
        'settings': {'batch': args.batch, 'size': args.size, 'threads': args.threads,
                     'device': str(device), 'rounds': args.rounds, 'torch': torch.__version__,
                     'tensorflow': tf_version, 'machine': platform.machine(),
                     'processor': _cpu_name(), 'cpus': os.cpu_count()},
        'notes': bench.notes,
    }
    if 'tf' in logits:
        result['max_abs_logit_diff_vs_tf'] = float(np.abs(logits['fp32'] - logits['tf']).max())
        if 'compiled_fp32' in logits:
            result['compiled_max_abs_logit_diff_vs_tf'] = float(np.abs(logits['compiled_fp32'] - logits['tf']).max())
    if 'fp16' in rates:
        result['fp16_img_s'] = rates['fp16']['median']
    if timm_best:
        result['fp32_1x1_floor_over_timm_best'] = 1e3 * args.batch / timm_best / breakdown['fp32']['1x1']
    return result


def best_timm_layout(rates: dict):
    return max((k for k in ('timm_nchw', 'timm_channels_last') if k in rates),
               key=lambda k: rates[k]['median'], default=None)


def report(result: dict) -> None:
    rates, base = result['rates'], result['fp32_img_s']
    print(f'\n{"model":48s} {"img/s":>7s} {"min-max":>13s} {"this fp32 / it":>15s}')
    for k, r in rates.items():
        print(f'{LABELS[k]:48s} {r["median"]:7.2f} {r["min"]:6.2f}-{r["max"]:<6.2f} {base / r["median"]:15.2f}')
    print()

    def per_round(r):
        return f' (per round: median {r["median"]:.2f}x, {r["min"]:.2f}-{r["max"]:.2f})'
    if result['timm_best_img_s']:
        print(f'fp32 / timm best layout: {base / result["timm_best_img_s"]:.2f}x'
              + per_round(result['fp32_over_timm_best_per_round']))
    if result['tf_fp32_img_s']:
        print(f'fp32 / TF graph: {base / result["tf_fp32_img_s"]:.2f}x' + per_round(result['fp32_over_tf_per_round'])
              + (f'; bf16 / TF graph fp32: {result["bf16_img_s"] / result["tf_fp32_img_s"]:.2f}x'
                 if result['bf16_img_s'] else ''))
        print(f'max |logits - TF| (fp32 fast path): {result["max_abs_logit_diff_vs_tf"]:.3g}'
              + (f'; torch.compile: {result["compiled_max_abs_logit_diff_vs_tf"]:.3g}'
                 if 'compiled_max_abs_logit_diff_vs_tf' in result else ''))
    if result['bf16_top1_agreements'] is not None:
        print(f'bf16 top-1 equals fp32 top-1 on {result["bf16_top1_agreements"]} of the '
              f'{result["settings"]["batch"]} reference images; bf16 logits differ from fp32 by up to '
              f'{result["bf16_max_abs_logit_diff"]:.3g}, fp32 top-1 margins '
              + ', '.join(f'{m:.3g}' for m in result['fp32_top1_margins'])
              + ' (random weights: a margin below the bf16 difference can flip)')
    print_breakdown(result['breakdown_ms'], LABELS)
    if result['timm_best_img_s']:
        print(f'bound, everything but the 1x1 convs free: fp32 / timm best layout at most '
              f'{result["fp32_1x1_floor_over_timm_best"]:.2f}x (timm\'s median forward over the '
              f'time of this port\'s 1x1 convs alone)')
    pre = result['preprocess']
    print(f'preprocessing (decode + preprocess_for_eval, 500x375 JPEG -> 331, one thread): '
          f'numpy {pre["numpy"]["median"]:.1f} img/s'
          + (f', TF op {pre["tf"]["median"]:.1f} img/s, ratio '
             f'{pre["numpy"]["median"] / pre["tf"]["median"]:.2f}' if 'tf' in pre else ''))
    print(f'memory: the fast fp32 forward grew the process by '
          f'{result["memory"]["fast_fp32_forward_rss_growth_mb"]:.0f} MiB; process peak {rss_mb():.0f} MiB')
    for note in result['notes']:
        print('note:', note)


TRAIN_LABELS = {'ours_channels_last': "train.py's model, channels_last",
                'ours_nchw': "train.py's model, NCHW",
                'ours_compiled': "train.py's model, channels_last, torch.compile",
                'timm_nchw': 'timm pnasnet5large, NCHW',
                'timm_channels_last': 'timm pnasnet5large, channels_last'}
TRAIN_DROP_PATH = 0.1  # a mid-run rate; timm's pnasnet has no drop path, so ours pays for it


def train_network(size: int, checkpointing: bool = False) -> model_mod.NetworkImageNet:
    """train.py's network for these timings: PNASNet-5 Large, random weights, aux head on where
    it fits, drop path on, training mode."""
    net = model_mod.NetworkImageNet(model_mod.PNASNetConfig.large(image_size=size)).train()
    net.drop_path_prob = TRAIN_DROP_PATH
    net.set_grad_checkpointing(checkpointing)
    return net


def _train_step(net, x, y, device, precision: str, compiled: bool = False):
    """One call of train.train_step with train.py's default recipe (RMSProp as TF has it, L2,
    clipping, smoothing, aux weight) on ``net``; ``compiled``: its forward and backward under
    torch.compile, as train.py --compile runs them."""
    import train
    targs = train.parse_args(['--data', '-'])
    train.fill_defaults(targs)
    targs.precision = precision
    optimizer = train.make_optimizer(train.param_groups(net, targs.weight_decay), targs)
    scaler = torch.amp.GradScaler(device.type, enabled=False)

    step_net = torch.compile(net) if compiled else net

    def fn():
        train.train_step(step_net, optimizer, scaler, x, y, targs)
        if device.type == 'cuda':
            torch.cuda.synchronize()
    return fn


def _proc_status_mb(field: str) -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f'/proc/self/status has no {field}')


def current_rss_mb() -> float:
    return _proc_status_mb('VmRSS')


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM); ru_maxrss would also count the parent's peak, which
    Linux carries across fork and exec."""
    return _proc_status_mb('VmHWM')


def memory_probe(args, device) -> int:
    """Run in a fresh process by train_memory: two steps, and the memory they needed above the
    built model (CPU: the peak RSS over the RSS after building; CUDA: peak allocated), printed
    as one JSON line. On the CPU the caller fixes glibc's mmap threshold, so that freed buffers
    go back to the OS and the RSS follows the live tensors."""
    net = train_network(args.size, args.memory_probe == 'checkpointing').to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.arange(args.batch, device=device) % 1000 + 1
    step = _train_step(net, x, y, device, 'fp32')
    base = current_rss_mb()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2 ** 20
    step()
    step()
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == 'cuda' else peak_rss_mb()
    print(json.dumps({'peak_mb': peak - base}))
    return 0


def train_memory(args, device) -> dict:
    """Peak memory of the fp32 step (NCHW) with and without --grad-checkpointing, each measured
    in a process of its own, since a process's peak RSS never goes down."""
    import subprocess
    out = {}
    for mode in ('plain', 'checkpointing'):
        cmd = [sys.executable, os.path.abspath(__file__), '--memory-probe', mode, '--size', str(args.size),
               '--batch', str(args.batch), '--threads', str(args.threads), '--device', device.type]
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='131072')
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            raise RuntimeError(f'memory probe ({mode}) failed: {p.stderr[-500:]}')
        out[mode] = json.loads(p.stdout.strip().splitlines()[-1])['peak_mb']
    return out


def train_main(args, device, timm) -> int:
    """benchmark.py --train: fp32 (and bf16 where native) steps of train.py's model and timm's,
    interleaved as the inference rows are, then the memory probes."""
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.arange(args.batch, device=device) % 1000 + 1
    x_cl = x.contiguous(memory_format=torch.channels_last)
    nets = {'ours_nchw': (train_network(args.size).to(device), x)}
    nets['ours_channels_last'] = (copy.deepcopy(nets['ours_nchw'][0]).to(memory_format=torch.channels_last), x_cl)
    notes = []
    if timm is not None:
        t = timm.create_model('pnasnet5large', pretrained=False, num_classes=1001).train().to(device)
        nets['timm_nchw'] = (t, x)
        nets['timm_channels_last'] = (copy.deepcopy(t).to(memory_format=torch.channels_last), x_cl)
    else:
        notes.append('timm is not installed: its rows are skipped (pip install timm)')
    precisions = ['fp32']
    if device.type == 'cuda' or runtime.cpu_has_native_bf16() or args.bf16_anyway:
        precisions.append('bf16')
    else:
        notes.append('bf16 skipped: this CPU has no native bfloat16, where a bf16 step runs about '
                     'ten times slower than fp32 (--bf16-anyway times it all the same)')
    runners = {f'{name}_{p}': _train_step(net, inp, y, device, p)
               for p in precisions for name, (net, inp) in nets.items()}
    if args.compile:
        compiled = copy.deepcopy(nets['ours_channels_last'][0])
        for p in precisions:
            runners[f'ours_compiled_{p}'] = _train_step(compiled, x_cl, y, device, p, compiled=True)
    warmup = {}
    for k, fn in runners.items():  # warm-up: optimizer state, oneDNN primitives, compilation
        start = time.perf_counter()
        fn()
        warmup[k] = time.perf_counter() - start
    for k in runners:
        if k.startswith('ours_compiled_'):
            notes.append(f'torch.compile ({k.rsplit("_", 1)[1]}): the first step took '
                         f'{warmup[k]:.0f} s (compiling)')
    print(f'timing {len(runners)} training steps, {args.rounds} interleaved rounds, batch {args.batch}, '
          f'{args.size} px, {args.threads} threads, {device} ...', flush=True)
    times = timed_rounds(runners, args.rounds, args.batch)
    rates = {k: summary(v) for k, v in times.items()}
    result = {'train': True, 'rates': rates, 'notes': notes, 'ratios': {},
              'settings': {'batch': args.batch, 'size': args.size, 'threads': args.threads,
                           'device': str(device), 'rounds': args.rounds, 'torch': torch.__version__,
                           'drop_path': TRAIN_DROP_PATH, 'processor': _cpu_name(), 'cpus': os.cpu_count()}}
    print(f'\n{"training step":44s} {"prec":>5s} {"s/step":>7s} {"img/s":>7s} {"min-max img/s":>14s}')
    for k, r in rates.items():
        name, prec = k.rsplit('_', 1)
        print(f'{TRAIN_LABELS[name]:44s} {prec:>5s} {args.batch / r["median"]:7.2f} {r["median"]:7.2f} '
              f'{r["min"]:6.2f}-{r["max"]:<6.2f}')
    print()
    for p in precisions:
        timm_rows = [k for k in (f'timm_nchw_{p}', f'timm_channels_last_{p}') if k in rates]
        if not timm_rows:
            continue
        peer = max(timm_rows, key=lambda k: rates[k]['median'])
        for ours in (f'ours_channels_last_{p}', f'ours_nchw_{p}', f'ours_compiled_{p}'):
            if ours not in times:
                continue
            r = per_round_ratios(times, ours, peer)
            result['ratios'][f'{ours}_over_{peer}'] = r
            print(f'{p}: {TRAIN_LABELS[ours.rsplit("_", 1)[0]]} / timm\'s faster layout '
                  f'({peer.rsplit("_", 1)[0][5:]}): {rates[ours]["median"] / rates[peer]["median"]:.2f}x '
                  f'(per round: median {r["median"]:.2f}x, {r["min"]:.2f}-{r["max"]:.2f})')
    del runners, nets
    memory = train_memory(args, device)
    result['peak_memory_mb'] = memory
    kind = 'peak allocated on the GPU' if device.type == 'cuda' else 'peak RSS growth'
    print(f'memory of two fp32 steps above the built model ({kind}), NCHW: {memory["plain"]:.0f} MiB; '
          f'with --grad-checkpointing: {memory["checkpointing"]:.0f} MiB '
          f'({memory["checkpointing"] / memory["plain"]:.2f}x)')
    for note in notes:
        print('note:', note)
    if args.json:
        utils.save_json(result, args.json)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device('cuda' if args.device in ('auto', 'cuda') and torch.cuda.is_available() else 'cpu')
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        return memory_probe(args, device)
    if device.type == 'cpu':
        utils.tune_cpu_allocator()  # as main.py does; it affects every model in the process alike
    timm = None
    if not args.no_timm:
        try:  # before TensorFlow: triton's native library (imported by timm) segfaults after TF's
            import timm
        except ImportError:
            pass
    if args.train:
        return train_main(args, device, timm)
    tf = None
    if not args.no_tf:
        tf = utils.import_tf()
        tf.config.threading.set_intra_op_parallelism_threads(1)  # eager: the per-image preprocessing op
        tf.config.threading.set_inter_op_parallelism_threads(1)
    with tempfile.TemporaryDirectory(prefix='pnasnet_bench_') as workdir:
        bench = build(args, device, timm, workdir)
        for fn in bench.runners.values():  # warm-up (and compilation)
            fn()
        if 'compiled_fp32' in bench.runners:
            bench.logits['compiled_fp32'] = bench.runners['compiled_fp32']().float().cpu().numpy()
        print(f'timing {len(bench.runners)} models, {args.rounds} interleaved rounds, batch {args.batch}, '
              f'{args.size} px, {args.threads} threads, {device} ...', flush=True)
        times = timed_rounds(bench.runners, args.rounds, args.batch)
        breakdown = {'fp32': time_breakdown(bench.models['fp32'], bench.runners['fp32'])}
        timm_layout = best_timm_layout({k: summary(v) for k, v in times.items()})
        if timm_layout:
            breakdown[timm_layout] = time_breakdown(bench.models[timm_layout], bench.runners[timm_layout])
        pre = preprocess_rates(n=16, rounds=max(3, args.rounds), with_tf=tf is not None)
        result = collect(args, device, bench, times, breakdown, pre, tf.__version__ if tf else None)
        if bench.tf_net is not None:
            bench.tf_net.close()
    report(result)
    if args.json:
        utils.save_json(result, args.json)
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
