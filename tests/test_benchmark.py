"""benchmark.py's bookkeeping (its timings belong to the benchmark itself, not to tests)."""
import collections

import pytest

import benchmark


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
