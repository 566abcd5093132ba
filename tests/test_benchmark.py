"""benchmark.py's bookkeeping (its timings belong to the benchmark itself, not to tests)."""
import collections
import json

import pytest
import torch

import benchmark
import engine
import runtime


@pytest.mark.quick
def test_timed_rounds_times_every_runner_each_round_in_the_designed_orders():
    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in 'abcd'}
    times = benchmark.timed_rounds(runners, rounds=5, batch=2)
    assert calls == list('abdc' 'bcad' 'cdba' 'dacb' 'abdc')
    assert sorted(times) == list('abcd')
    assert all(len(v) == 5 and all(r > 0 for r in v) for v in times.values())


@pytest.mark.parametrize('n', [1, 2, 3, 4, 5, 6, 7, 8])
def test_round_orders_balance_who_opens_and_who_follows_whom(n):
    orders = benchmark.round_orders(n)
    assert len(orders) == (n if n % 2 == 0 else 2 * n)
    assert all(sorted(order) == list(range(n)) for order in orders)
    opens = collections.Counter(order[0] for order in orders)
    assert set(opens.values()) == {len(orders) // n}
    follows = collections.Counter((a, b) for order in orders for a, b in zip(order, order[1:]))
    if n > 1:  # every ordered pair of different runners, equally often
        assert len(follows) == n * (n - 1) and len(set(follows.values())) == 1


def test_summary_is_median_min_max():
    assert benchmark.summary([3.0, 1.0, 2.0, 10.0]) == {'median': 2.5, 'min': 1.0, 'max': 10.0}


def test_per_round_ratios_pair_each_round_with_itself():
    # "a" leads in two rounds of three; the machine's speed moved between the rounds, so the
    # ratio of the medians (4 / 5) says the opposite, while the per-round median says 1.25x
    times = {'a': [10.0, 4.0, 4.0], 'b': [8.0, 5.0, 3.2]}
    assert benchmark.summary(times['a'])['median'] / benchmark.summary(times['b'])['median'] == 0.8
    assert benchmark.per_round_ratios(times, 'a', 'b') == {'median': 1.25, 'min': 0.8, 'max': 1.25}


def _small_nets():
    import model
    torch.manual_seed(0)
    plain = model.NetworkImageNet(model.PNASNetConfig.mobile(num_conv_filters=8, num_cells=3)).eval()
    fast = engine.InferenceModel(plain)
    x = torch.randn(2, 3, 64, 64)
    return plain, fast, x, x.contiguous(memory_format=torch.channels_last)


def _conv_counts(net):
    return collections.Counter(benchmark.conv_kind(m) for m in net.modules()
                               if isinstance(m, torch.nn.Conv2d))


def test_conv_kind():
    conv = torch.nn.Conv2d
    assert benchmark.conv_kind(conv(8, 16, 1)) == '1x1'
    assert benchmark.conv_kind(conv(8, 8, 5, groups=8)) == 'depthwise'
    assert benchmark.conv_kind(conv(8, 8, 3)) == 'other'
    assert benchmark.conv_kind(conv(8, 16, 3, groups=8)) == 'other'  # depth multiplier 2
    assert benchmark.conv_kind(conv(8, 8, 3, groups=2)) == 'other'


@pytest.mark.quick
def test_time_breakdown_counts_each_conv_of_the_engine_and_of_a_plain_model_once_per_forward():
    plain, fast, x, x_cl = _small_nets()
    expected = _conv_counts(plain)
    assert expected['1x1'] > 0 and expected['depthwise'] > 0 and expected['other'] == 1  # conv0
    with torch.inference_mode():
        for net, inp in ((plain, x), (fast, x_cl)):
            ms = benchmark.time_breakdown(net, lambda: net(inp), repeats=2)
            assert ms['calls'] == dict(expected)
            assert all(ms[k] > 0 for k in benchmark.CONV_KINDS)
            # the convolutions are timed inside the forward: together they cannot exceed it
            assert 0 < sum(ms[k] for k in benchmark.CONV_KINDS) < ms['total'] and ms['rest'] > 0


def test_conv_timer_puts_everything_back():
    plain, fast, x, x_cl = _small_nets()
    with torch.inference_mode():
        want = fast(x_cl)
        for net in (plain, fast):
            with pytest.raises(RuntimeError, match='inside the block'):
                with benchmark.conv_timer(net):
                    raise RuntimeError('inside the block')
        assert fast.conv.observer is None
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in plain.modules())
        assert torch.equal(fast(x_cl), want)


def test_benchmark_skips_bf16_on_a_cpu_without_it_and_says_why(tmp_path):
    """One small run end to end (no TF, no timm); ONEDNN_MAX_CPU_ISA=AVX2 hides native bf16.
    With --no-tf it runs where TensorFlow cannot be imported at all, as on a GPU machine."""
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / 'bench.json'
    blocked = tmp_path / 'no_tf' / 'tensorflow'
    blocked.mkdir(parents=True)
    (blocked / '__init__.py').write_text("raise ImportError('TensorFlow is not installed here')\n")
    path = os.pathsep.join([str(blocked.parent)] + [p for p in [os.environ.get('PYTHONPATH')] if p])
    run = subprocess.run([sys.executable, 'benchmark.py', '--size', '64', '--batch', '1',
                          '--rounds', '1', '--no-tf', '--no-timm', '--device', 'cpu',
                          '--json', str(out)], cwd=root, capture_output=True, text=True,
                         env=dict(os.environ, ONEDNN_MAX_CPU_ISA='AVX2', PYTHONPATH=path), timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result['bf16_img_s'] is None and 'bf16' not in result['rates']
    assert result['settings']['tensorflow'] is None and 'tf' not in result['preprocess']
    assert 'max_abs_logit_diff_vs_tf' not in result
    # the full-width random network's logits are not of unit scale: a loose sanity bound
    assert result['fp32_img_s'] > 0 and result['max_abs_logit_diff_fast_vs_plain'] < 1e-3
    assert any(n.startswith('bf16 skipped: this CPU has no native bfloat16') for n in result['notes'])
    assert 'bf16 autocast' not in run.stdout and 'note: bf16 skipped' in run.stdout


def test_train_mode_times_train_py_step_and_checkpointing_saves_memory(tmp_path):
    """--train's wiring, small: the rows, the ratios and the two memory probes (subprocesses)."""
    out = tmp_path / 'train.json'
    assert benchmark.main(['--train', '--size', '64', '--rounds', '1', '--no-timm',
                           '--threads', str(torch.get_num_threads()),
                           '--json', str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {'ours_nchw_fp32', 'ours_channels_last_fp32'}
    if runtime.cpu_has_native_bf16():
        rows |= {'ours_nchw_bf16', 'ours_channels_last_bf16'}
    assert set(result['rates']) == rows
    assert result['settings']['batch'] == 2
    memory = result['peak_memory_mb']
    assert 0 < memory['checkpointing'] < memory['plain']
