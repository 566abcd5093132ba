"""neural_predictor/search.py and strategies.py: the JSONL table format (good and bad rows), every
method replayed step by step against its definition, budgets and no repeated look-ups, --max,
--report, a predictor that lies, and the command's JSON."""
import contextlib
import functools
import io
import itertools
import json
import os
import re

import numpy as np
import pytest

from neural_predictor import dataset, search, strategies

OPS = ['conv3x3', 'conv1x1', 'maxpool3x3']


def run_main(fn, argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = fn([str(a) for a in argv])
    return status, err.getvalue()


def dag_rows(n=400, seed=0):
    """Rows of a NAS-Bench-101-like space: DAGs of 4 to 7 nodes (input, ops, output), each
    distinct, with a learnable 'valid' (a function of ops and edges plus noise), 'test' = valid
    minus a row-specific offset, a size 'params_m', and 'latency' missing on every third row."""
    rng = np.random.default_rng(seed)
    rows, seen = [], set()
    while len(rows) < n:
        v = int(rng.integers(4, 8))
        nodes = ['input'] + [OPS[int(k)] for k in rng.integers(0, 3, v - 2)] + ['output']
        edges = {(i, i + 1) for i in range(v - 1)} | {
            (int(a), int(b)) for a, b in rng.integers(0, v, (3, 2)) if a < b}
        key = (tuple(nodes), tuple(sorted(edges)))
        if key in seen:
            continue
        seen.add(key)
        valid = 85.0 + 2.0 * nodes.count('conv3x3') - 1.5 * nodes.count('maxpool3x3') + 0.7 * len(edges) \
            + float(rng.normal(0, 0.3))
        metrics = {'valid': round(valid, 4), 'test': round(valid - 0.5 - 0.01 * len(rows), 4),
                   'params_m': round(0.2 * nodes.count('conv3x3') + 0.05 * len(edges), 3),
                   'latency': None if len(rows) % 3 == 0 else 1.0 + len(edges)}
        rows.append({'id': f'r{len(rows)}', 'nodes': nodes, 'edges': [list(e) for e in sorted(edges)],
                     'metrics': metrics})
    return rows


def write_rows(path, rows):
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return path


def grid_table(n_edges=5, n_ops=4, seed=0):
    """Every cell of a small NB-201-like space (ops as the nodes of a fixed graph), with a smooth
    label: a sum of per-position op weights and neighbouring pairs, plus noise."""
    rng = np.random.default_rng(seed)
    weights, pair = rng.normal(0, 1, (n_edges, n_ops)), rng.normal(0, 0.5, (n_edges, n_ops, n_ops))
    cells, accs = [], []
    for arch in itertools.product(range(n_ops), repeat=n_edges):
        ops = np.zeros((n_edges + 2, n_ops + 2), np.float32)
        ops[0, 0] = ops[-1, 1] = 1
        for k, o in enumerate(arch):
            ops[1 + k, 2 + o] = 1
        adj = np.zeros((n_edges + 2, n_edges + 2), np.float32)
        adj[0, 1:-1] = adj[1:-1, -1] = 1
        score = sum(weights[k, o] for k, o in enumerate(arch)) + sum(
            pair[k, arch[k], arch[(k + 1) % n_edges]] for k in range(n_edges))
        cells.append((ops, adj))
        accs.append(0.9 + 0.01 * score + rng.normal(0, 0.001))
    return dataset.stack(cells, np.array(accs, np.float32))


# --- the format ---------------------------------------------------------------------------------------

@pytest.mark.quick
def test_jsonl_table_reads_any_space_and_keeps_every_metric(tmp_path):
    rows = dag_rows(60)
    rows[5]['metrics']['valid'] = None  # lacks the searched metric: left out
    del rows[6]['id']
    path = write_rows(tmp_path / 't.jsonl', rows)
    table, metric = dataset.read_jsonl_table(str(path))
    assert metric == 'valid' and len(table) == 59
    kept = [r for k, r in enumerate(rows) if k != 5]
    assert table.labels.tolist() == pytest.approx([r['metrics']['valid'] for r in kept])
    assert table.names[5] == 'line 7' and table.names[0] == 'r0'
    assert np.isnan(table.metrics['latency'][0]) and table.metrics['latency'][1] == kept[1]['metrics']['latency']
    # the encoding: node k of row r is the op named there; edges are the adjacency
    vocab = ['input', 'output'] + sorted(OPS)
    for r, row in enumerate(kept[:10]):
        v = len(row['nodes'])
        assert table.num_vertices[r] == v
        assert [vocab[int(k)] for k in table.ops[r, :v].argmax(1)] == row['nodes']
        assert table.ops[r, v:].sum() == 0
        assert sorted(zip(*map(list, np.nonzero(table.adjacency[r])))) == [tuple(e) for e in row['edges']]
    test_table, metric = dataset.read_jsonl_table(str(path), 'test', [('params_m', 0.5)])
    assert metric == 'test'
    expected = [r['metrics']['test'] for r in rows if r['metrics']['params_m'] <= 0.5]
    assert test_table.labels.tolist() == pytest.approx(expected)


@pytest.mark.parametrize('line, words', [
    ('{"nodes": ["input", "output"], "edges": [[0, 1]], "metrics": {"valid": 1}', 'not JSON'),
    ('[1, 2]', 'JSON object'),
    ('{"nodes": ["input"], "edges": [], "metrics": {"valid": 1}}', '"nodes"'),
    ('{"nodes": ["input", "a", "output"], "edges": [[1, 0]], "metrics": {"valid": 1}}', 'edge [1, 0]'),
    ('{"nodes": ["input", "a", "output"], "edges": [[0, 3]], "metrics": {"valid": 1}}', 'edge [0, 3]'),
    ('{"nodes": ["input", "a", "output"], "edges": [[0, 1], [0, 1]], "metrics": {"valid": 1}}', 'twice'),
    ('{"nodes": ["input", "a", "output"], "edges": [[0, 1, 2]], "metrics": {"valid": 1}}', 'pair'),
    ('{"nodes": ["input", "a", "output"], "edges": [[0, 1]], "metrics": {"valid": "high"}}', "'valid'"),
    ('{"nodes": ["input", "a", "output"], "edges": [[0, 1]], "metrics": [1]}', '"metrics"'),
    ('{"nodes": ["input", "a", "output"], "edges": [[0, 1]]}', '"metrics"'),
])
def test_a_bad_row_is_one_line_naming_its_line_and_exit_1(tmp_path, line, words):
    rows = [json.dumps(r) for r in dag_rows(5)]
    rows.insert(3, line)
    path = tmp_path / 'bad.jsonl'
    path.write_text('\n'.join(rows) + '\n')
    status, err = run_main(search.main, ['--table', path, '--budget', 3, '--seeds', 1, '--workers', 1,
                                         '--json', tmp_path / 'o.json'])
    assert status == 1 and err.count('\n') == 1 and 'line 4' in err and words in err, err
    assert not (tmp_path / 'o.json').exists()


def test_unknown_metrics_and_bad_limits_are_one_line(tmp_path):
    path = write_rows(tmp_path / 't.jsonl', dag_rows(30))
    base = ['--table', path, '--budget', 5, '--seeds', 1, '--workers', 1, '--json', tmp_path / 'o.json']
    for extra, words in ((['--metric', 'nope'], "'nope'"), (['--report', 'nope'], '--report nope'),
                         (['--max', 'params_m'], '--max params_m'), (['--max', 'params_m=0'], 'within'),
                         (['--budget', 31], 'the table has 30 rows')):
        status, err = run_main(search.main, base + extra)
        assert status == 1 and err.count('\n') == 1 and words in err, (extra, err)


# --- every method against its definition ----------------------------------------------------------------

METHODS = ['random', 'evolution', 'local', 'one_shot', 'predictor', 'gp']


@pytest.fixture(scope='module')
def dag_table(tmp_path_factory):
    path = write_rows(tmp_path_factory.mktemp('t') / 't.jsonl', dag_rows(400))
    return dataset.read_jsonl_table(str(path))[0]


@pytest.mark.parametrize('method', METHODS)
def test_every_method_keeps_its_budget_and_never_repeats(dag_table, method):
    run = functools.partial(strategies.STRATEGIES[method], **({'epochs': 5} if method == 'one_shot' else {}))
    for budget in (1, 10, 57):
        looked = run(dag_table, budget, seed=2)
        assert len(looked) == budget == len(set(looked)) and all(0 <= i < len(dag_table) for i in looked)
    small = dag_table.subset(np.arange(30))
    assert sorted(run(small, 30, seed=1)) == list(range(30))  # the whole table, once
    assert run(dag_table, 70, seed=5) == run(dag_table, 70, seed=5)


def test_neighbours_are_the_nearest_rows_and_one_op_away_on_a_grid(dag_table):
    grid = grid_table(n_edges=3, n_ops=3)
    nb = strategies.Neighbours(grid, min_size=5)
    codes = grid.ops.argmax(-1)
    for i in range(len(grid)):
        assert sorted(nb.of(i).tolist()) == [j for j in range(len(grid)) if (codes[i] != codes[j]).sum() == 1]
    nb = strategies.Neighbours(dag_table)
    x = strategies.features(dag_table).numpy()
    for i in (0, 17, 399):
        d = np.abs(x - x[i]).sum(1)
        d[i] = np.inf
        near = nb.of(i)
        assert len(near) >= 10 and d[near].max() <= np.sort(d)[9]  # whole shells up to the 10th nearest
        assert set(near) == set(np.nonzero(d <= d[near].max())[0])


def replay_population(table, looked, population):
    """The aging population after each look-up of evolution's trajectory: the newest
    ``population`` rows (the oldest dies)."""
    for step in range(population, len(looked)):
        yield step, looked[step - population:step]


@pytest.mark.quick
def test_evolution_takes_the_best_of_its_sample_and_the_oldest_dies():
    table = grid_table(seed=3)
    nb = strategies.Neighbours(table)
    for seed in range(4):
        # sample = population: the parent is the best member, so every child is a neighbour of it
        looked = strategies.evolution(table, 120, seed, population=8, sample=8, neighbours=nb)
        assert looked[:8] == np.random.RandomState(seed).permutation(len(table))[:8].tolist()
        for step, members in replay_population(table, looked, 8):
            parent = max(members, key=lambda i: table.labels[i])
            untried = set(nb.of(parent).tolist()) - set(looked[:step])
            assert looked[step] in untried or not untried, (seed, step)
    # with a sample of 2 the parent is the better of two members: never the worst of the population
    looked = strategies.evolution(table, 200, 0, population=10, sample=2, neighbours=nb)
    for step, members in replay_population(table, looked, 10):
        worst = min(members, key=lambda i: table.labels[i])
        parents = [m for m in members if m != worst and looked[step] in nb.of(m)]
        assert parents or not (set(nb.of(worst).tolist()) - set(looked[:step])), step


def test_local_search_climbs_from_the_best_and_restarts_only_at_a_local_optimum():
    table = grid_table(seed=4)
    nb = strategies.Neighbours(table)
    for seed in range(4):
        looked = strategies.local_search(table, 200, seed, initial=10, neighbours=nb)
        assert looked[:10] == np.random.RandomState(seed).permutation(len(table))[:10].tolist()
        current, restarts = max(looked[:10], key=lambda i: table.labels[i]), 0
        for step in range(10, len(looked)):
            j, untried = looked[step], set(nb.of(current).tolist()) - set(looked[:step])
            if untried:
                assert j in untried, (seed, step)
                if table.labels[j] > table.labels[current]:
                    current = j
            else:  # no untried neighbour: a restart from a row that is no neighbour's
                current, restarts = j, restarts + 1
        assert max(table.labels[looked]) >= np.sort(table.labels)[-10]  # climbs to a top-10 cell


@pytest.mark.quick
def test_the_predictor_loop_steps_like_a_local_search_it_orders():
    table = grid_table(seed=5)
    nb = strategies.Neighbours(table)
    looked = strategies.guided_search(table, 80, 1, neighbours=nb)
    current = max(looked[:10], key=lambda i: table.labels[i])
    for step in range(10, len(looked)):
        j, untried = looked[step], set(nb.of(current).tolist()) - set(looked[:step])
        assert j in untried or not untried, step
        if table.labels[j] > table.labels[current] or not untried:
            current = j


def lying_surrogate(x_train, y, seed):
    """A predictor that ranks every candidate upside down: the order its training data says is
    worst first. It knows the labels of the grid (through a lookup by features) and negates them."""
    def predict(x):
        key = x.numpy() @ WEIGHTS
        return -np.stack([key, key])
    return predict


WEIGHTS = None


def test_a_seed_whose_predictor_is_wrong_still_reaches_the_top():
    """The stalled seed: a predictor that is wrong everywhere (it prefers the worst cells)
    cannot trap the loop, which keeps climbing and restarting; every seed reaches a top-10 cell
    within the budget, as local search does, while random search does not."""
    global WEIGHTS
    table = grid_table(seed=6)
    x = strategies.features(table).numpy()
    WEIGHTS = np.linalg.lstsq(x, table.labels, rcond=None)[0]  # the labels, nearly, from the features
    nb = strategies.Neighbours(table)
    for seed in range(6):
        looked = strategies.guided_search(table, 250, seed, neighbours=nb, surrogate=lying_surrogate)
        assert search.to_top(table, looked) is not None, seed


def test_the_searches_beat_random_search_on_a_learnable_table():
    table = grid_table(seed=7)
    curves = {m: np.mean([search.best_curve(table, strategies.run(m, table, 80, s), [40, 80]) for s in range(4)], 0)
              for m in ('random', 'evolution', 'local', 'predictor', 'gp')}
    for m in ('evolution', 'local', 'predictor', 'gp'):
        assert curves[m][1] > curves['random'][1], (m, curves)
    assert curves['predictor'][0] > curves['random'][0] and curves['gp'][0] > curves['random'][0]


def replay_gp(table, budget, seed, initial=10, refit=10):
    """``gp_search``'s look-ups worked out the textbook way, apart from it: at every look-up the
    whole kernel matrix solved afresh (no Cholesky factor grown by a row), the hyperparameters by
    the marginal likelihood written with log-determinant and solve, the posterior mean
    k*T K^-1 y and variance scale x (1 - k*T K^-1 k*)."""
    x = strategies.features(table).numpy().astype(np.float64)
    distance = np.abs(x[:, None, :] - x[None, :, :]).sum(-1)
    rng = np.random.RandomState(seed)
    looked = rng.permutation(len(table))[:initial].tolist()
    hyper, fitted = None, None
    while len(looked) < budget:
        idx = np.array(looked)
        y = strategies.rank_targets(table.labels[idx]).astype(np.float64)
        offset = y.mean()
        y = y - offset
        if hyper is None or len(looked) - fitted >= refit:
            scores = {}
            for length in strategies.LENGTH_SCALES:
                for noise in strategies.NOISES:
                    k = np.exp(-distance[np.ix_(idx, idx)] / length) + noise * np.eye(len(idx))
                    scale = y @ np.linalg.solve(k, y) / len(y)
                    scores[(length, noise)] = -0.5 * len(y) * np.log(scale) - 0.5 * np.linalg.slogdet(k)[1]
            hyper, fitted = max(scores, key=scores.get), len(looked)
        length, noise = hyper
        k = np.exp(-distance[np.ix_(idx, idx)] / length) + noise * np.eye(len(idx))
        k_star = np.exp(-distance[idx] / length)  # [looked, every row]
        scale = y @ np.linalg.solve(k, y) / len(y)
        mean = k_star.T @ np.linalg.solve(k, y) + offset
        var = scale * (1.0 - (k_star * np.linalg.solve(k, k_star)).sum(0))
        draw = mean + np.sqrt(np.maximum(var, 1e-12)) * rng.standard_normal(len(table))
        draw[idx] = -np.inf
        looked.append(int(np.argmax(draw)))
    return looked


@pytest.mark.parametrize('seed', [0, 3])
def test_gp_search_looks_up_the_highest_posterior_draw(seed):
    table = grid_table(n_edges=4, n_ops=4, seed=8)  # 256 cells: the hyperparameters change as it goes
    assert strategies.gp_search(table, 60, seed, refit=7) == replay_gp(table, 60, seed, refit=7)


# --- the command -------------------------------------------------------------------------------------

def test_search_command_on_a_jsonl_table_gives_the_contracts_json(tmp_path):
    rows = dag_rows(300, seed=3)
    path = write_rows(tmp_path / 'T.jsonl', rows)
    status, err = run_main(search.main, ['--table', path, '--metric', 'valid', '--report', 'test', '--seeds', 3,
                                         '--budget', 80, '--methods', 'random', 'evolution', 'local', 'predictor',
                                         '--max', 'params_m=0.9', '--workers', 1, '--json', tmp_path / 'out.json',
                                         '--plot', tmp_path / 'out.png'])
    assert status == 0, err
    out = json.loads((tmp_path / 'out.json').read_text())
    inside = [r for r in rows if r['metrics']['params_m'] <= 0.9]
    assert out['budgets'] == [50, 75] and out['rows'] == len(inside) < len(rows)
    assert out['best_in_table'] == pytest.approx(max(r['metrics']['valid'] for r in inside))
    by_valid = {r['metrics']['valid']: r['metrics']['test'] for r in inside}
    table, _ = dataset.read_jsonl_table(str(path), 'valid', [('params_m', 0.9)])
    for name, r in out['methods'].items():
        assert set(r) >= {'mean', 'std', 'to_best', 'to_top10', 'report'}
        assert len(r['to_best']) == len(r['to_top10']) == 3 and len(r['report']) == 2
        # each seed's trajectory, recomputed: the mean best, and the test value of the best by valid
        runs = [strategies.run(name, table, 80, s) for s in range(3)]
        best = [[max(table.labels[t[:b]]) for b in (50, 75)] for t in runs]
        assert r['mean'] == pytest.approx(np.mean(best, 0), abs=1e-4)
        assert r['report'] == pytest.approx([np.mean([by_valid[round(float(v), 4)] if round(float(v), 4) in by_valid
                                                      else np.nan for v in col]) for col in zip(*best)], abs=1e-3)
    assert os.path.getsize(tmp_path / 'out.png') > 1000


def test_reach_statistics_count_seeds_that_never_got_there():
    assert search.reach_stats([10, 20, None, 40]) == {'median': 40.0, 'p90': None, 'reached': 3, 'seeds': 4}
    assert search.reach_stats([5, 7, 9]) == {'median': 7.0, 'p90': 9.0, 'reached': 3, 'seeds': 3}
    table = grid_table(n_edges=3, n_ops=3)
    order = np.argsort(-table.labels)
    looked = [int(i) for i in order[20:25]] + [int(order[3]), int(order[0])]
    assert search.to_top(table, looked) == 6 and search.to_top(table, looked, 1) == 7


@pytest.mark.quick
def test_nb201_table_tool_writes_every_target_in_the_format(tmp_path):
    from tests.test_neural_predictor import write_analog_table
    from neural_predictor.tools import nb201_table
    raw = write_analog_table(tmp_path / 'data.anb', n=40, seed=1)
    status, err = run_main(nb201_table.main, ['--data', tmp_path / 'data.anb', '--output', tmp_path / 'nb.jsonl'])
    assert status == 0, err
    lines = (tmp_path / 'nb.jsonl').read_text().splitlines()
    assert len(lines) == len(raw)
    first = json.loads(lines[0])
    arch = next(iter(raw))
    assert first['id'] == nb201_table.arch_string(arch)
    assert first['nodes'][0] == 'input' and first['nodes'][-1] == 'output'
    assert first['nodes'][1:-1] == [dataset.NB201_OPS[a] for a in arch]
    assert first['metrics']['baseline'] == pytest.approx(raw[arch].baseline_accuracy)
    assert first['metrics']['baseline_drift_60'] == 1.0 and first['metrics']['analog'] is None
    table, metric = dataset.read_jsonl_table(str(tmp_path / 'nb.jsonl'))
    ref = dataset.read_nb201(str(tmp_path / 'data.anb'))
    assert metric == 'baseline' and table.labels.tolist() == pytest.approx((ref.labels * 100).tolist(), abs=1e-4)
    # the edges are NB-201's: edge (0,1)'s op node feeds the ops of the edges out of node 1
    assert [0, 1] in first['edges'] and [1, 3] in first['edges'] and [1, 5] in first['edges']


def landscape_rows(n_pos=4, n_ops=4, seed=0):
    """Every cell of a small NB-201-like space as JSONL rows (one node per position between
    input and output): a smooth label (per-position op weights) with the all-last-op cell
    raised far above everything (a needle), and a 'size' metric."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 1, (n_pos, n_ops))
    rows = []
    for arch in itertools.product(range(n_ops), repeat=n_pos):
        label = 90.0 + sum(weights[k, o] for k, o in enumerate(arch)) + (20.0 if set(arch) == {n_ops - 1} else 0.0)
        edges = [[0, 1 + k] for k in range(n_pos)] + [[1 + k, n_pos + 1] for k in range(n_pos)]
        nodes = ['input'] + [(OPS + ['avgpool3x3'])[o] for o in arch] + ['output']
        rows.append({'id': 'c' + ''.join(map(str, arch)), 'nodes': nodes, 'edges': edges,
                     'metrics': {'acc': round(label, 4), 'size': float(sum(arch))}})
    return rows


@pytest.mark.quick
def test_table_landscape_figures_match_a_count_over_one_op_neighbours(tmp_path):
    """The tool's figures against a direct count: on this space a row's neighbours are the 12
    cells one op away (the first distance shell already holds 10), so each figure can be
    counted from the ids alone."""
    from neural_predictor.tools import table_landscape
    rows = landscape_rows()
    path = write_rows(tmp_path / 'grid.jsonl', rows)
    status, err = run_main(table_landscape.main, ['--table', path, '--top', 5, '--json', tmp_path / 'out.json'])
    assert status == 0, err
    out = json.loads((tmp_path / 'out.json').read_text())
    acc = {r['id']: r['metrics']['acc'] for r in rows}
    near = {a: [b for b in acc if sum(x != y for x, y in zip(a[1:], b[1:])) == 1] for a in acc}
    assert all(len(v) == 12 for v in near.values())
    rank = {a: 1 + sum(v > acc[a] for v in acc.values()) for a in acc}
    assert out['rows'] == out['examined'] == 256 and out['metric'] == 'acc' and out['near_top'] == 5
    assert out['local_maxima'] == sum(all(acc[a] >= acc[b] for b in near[a]) for a in acc)
    own, around = list(acc.values()), [np.mean([acc[b] for b in near[a]]) for a in acc]
    assert out['neighbour_correlation'] == pytest.approx(np.corrcoef(own, around)[0, 1], abs=1e-6)
    best = sorted(acc, key=lambda a: -acc[a])[:5]
    assert [t['id'] for t in out['top']] == best and best[0] == 'c3333'
    for t in out['top']:
        a = t['id']
        assert t['rank'] == rank[a] and t['value'] == pytest.approx(acc[a], abs=1e-4)
        assert t['local_maximum'] == all(acc[a] >= acc[b] for b in near[a])
        assert t['best_neighbour_rank'] == min(rank[b] for b in near[a])
        assert t['neighbour_mean'] == pytest.approx(np.mean([acc[b] for b in near[a]]), abs=1e-4)
        assert t['neighbours_near_top'] == sum(rank[b] <= 5 for b in near[a])  # the best 1 % is 3 rows; at least --top
        mean = np.mean([acc[b] for b in near[a]])  # its place: 1 + the rows whose neighbours' mean is higher
        others = [m for b, m in zip(acc, around) if b != a]
        assert 1 + sum(m > mean + 1e-3 for m in others) <= t['neighbour_mean_place'] <= 1 + sum(m > mean - 1e-3 for m in others)
    assert out['top'][0]['local_maximum'] and out['top'][0]['neighbours_near_top'] < 12  # the needle
    assert out['first_top_by_neighbour_mean'] == min(t['neighbour_mean_place'] for t in out['top']) > 1
    # --max keeps rows within a budget; --sample draws the whole-table figures from fewer rows
    status, err = run_main(table_landscape.main, ['--table', path, '--max', 'size=6', '--sample', 50,
                                                  '--json', tmp_path / 'small.json'])
    small = json.loads((tmp_path / 'small.json').read_text())
    assert status == 0 and small['rows'] == sum(r['metrics']['size'] <= 6 for r in rows) and small['examined'] == 50
    assert 'c3333' not in [t['id'] for t in small['top']]
    assert all(1 <= t['neighbour_mean_place'] <= small['rows'] for t in small['top'])  # scaled up from the sample


def test_table_landscape_bad_rows_are_one_line(tmp_path):
    from neural_predictor.tools import table_landscape
    rows = landscape_rows()
    rows[7]['edges'] = [[2, 1]]
    path = write_rows(tmp_path / 'bad.jsonl', rows)
    status, err = run_main(table_landscape.main, ['--table', path])
    assert status == 1 and err.count('\n') == 1 and 'line 8' in err and 'table_landscape.py: error' in err
    status, err = run_main(table_landscape.main, ['--table', write_rows(tmp_path / 'ok.jsonl', landscape_rows()),
                                                  '--metric', 'valid'])
    assert status == 1 and err.count('\n') == 1 and "'valid'" in err
    # this project's genotype rows, as search.py reads them: five rows, each the others' neighbour
    runs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs', 'example_runs.json')
    status, err = run_main(table_landscape.main, ['--table', runs, '--json', tmp_path / 'runs.json'])
    out = json.loads((tmp_path / 'runs.json').read_text())
    assert status == 0 and out['metric'] == 'accuracy' and out['rows'] == 5
    assert [t['neighbours'] for t in out['top']] == [4] * 5 and out['local_maxima'] == 1
    status, err = run_main(table_landscape.main, ['--table', runs, '--metric', 'valid'])
    assert status == 1 and err.count('\n') == 1 and 'genotype table' in err


def test_the_predictors_scripts_do_not_import_each_other():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for script in ('train.py', 'search.py', 'tools/nb201_experiments.py', 'tools/nb201_table.py',
                   'tools/table_landscape.py'):
        text = open(os.path.join(root, 'neural_predictor', script)).read()
        imported = re.findall(r'^\s*(?:from neural_predictor(?:\.tools)? import ([\w, ]+)|import neural_predictor\.(\w+))',
                              text, re.M)
        names = {n.strip() for a, b in imported for n in (a or b).split(',')}
        assert not names & {'train', 'search', 'nb201_experiments', 'nb201_table', 'table_landscape'}, (script, names)
