"""benchmark.py's bookkeeping (its timings belong to the benchmark itself, not to tests)."""
import benchmark


def test_timed_rounds_rotates_the_order_and_times_every_runner_each_round():
    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in 'abc'}
    times = benchmark.timed_rounds(runners, rounds=4, batch=2)
    assert calls == list('abc' 'bca' 'cab' 'abc')
    assert sorted(times) == ['a', 'b', 'c']
    assert all(len(v) == 4 and all(r > 0 for r in v) for v in times.values())


def test_summary_is_median_min_max():
    assert benchmark.summary([3.0, 1.0, 2.0, 10.0]) == {'median': 2.5, 'min': 1.0, 'max': 10.0}
