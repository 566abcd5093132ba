"""Architecture search on a table of trained architectures: which ones to train next, and how
many trainings a method needs for the same result.

    python neural_predictor/search.py --seeds 20 --budget 300 --json search.json --plot search.png
    python neural_predictor/search.py --table T.jsonl --metric valid --report test --methods random evolution local predictor --json out.json

draws the best metric found against look-ups (a look-up stands for one training) for the methods
of ``strategies.py``: random search, regularized evolution, local search, the paper's one-shot
predictor, the predictor-guided local search and Bayesian optimisation with a Gaussian process.
The table is NAS-Bench-201's (analog-nasbench) unless ``--data``/``--splits`` (NAS-Bench-101 in
the HDF5 layout) or ``--table`` (JSON lines of any space, or this project's genotype rows) say
otherwise.
"""
import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import List, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from neural_predictor import dataset, model, strategies  # noqa: E402
from neural_predictor.common import fail, write_atomic, write_json  # noqa: E402

SCRIPT = 'neural_predictor/search.py'
METHODS = ('random', 'evolution', 'one_shot', 'predictor')  # the default comparison
ALL_METHODS = ('random', 'evolution', 'local', 'one_shot', 'predictor', 'gp')


# --- the comparison -----------------------------------------------------------------------------------

def best_curve(table: dataset.Graphs, looked: List[int], budgets: List[int]) -> List[float]:
    running = np.maximum.accumulate(table.labels[np.array(looked)])
    return [float(running[min(b, len(running)) - 1]) for b in budgets]


def report_curve(table: dataset.Graphs, looked: List[int], budgets: List[int], report: str) -> List[float]:
    """At each budget, ``report`` of the best row by the searched metric among the first looked
    up (the first of equals): the benchmark protocol of searching on validation and reporting
    test. NaN where that row lacks it."""
    labels = table.labels[np.array(looked)]
    values = table.metrics[report][np.array(looked)] if table.metrics else labels
    out = []
    for b in budgets:
        head = labels[:min(b, len(labels))]
        out.append(float(values[int(np.argmax(head))]))
    return out


def to_top(table: dataset.Graphs, looked: List[int], top: int = 10) -> Optional[int]:
    """Look-ups until one of the table's ``top`` best rows (ties with the last count) is among
    them; None where it never is. ``top=1``: look-ups to the table's best."""
    threshold = np.sort(table.labels)[::-1][min(top, len(table)) - 1]
    hits = np.nonzero(table.labels[np.array(looked)] >= threshold)[0]
    return int(hits[0]) + 1 if len(hits) else None


def reach_stats(reach: List[Optional[int]]) -> dict:
    """Median and 90th percentile of the look-ups over the seeds (a seed that never got there
    counts as never: null where it decides the figure), and how many seeds got there."""
    values = np.array([np.inf if r is None else r for r in reach], np.float64)

    def at(q):
        v = float(np.percentile(values, q, method='higher'))
        return None if not np.isfinite(v) else v
    return {'median': at(50), 'p90': at(90), 'reached': int(np.isfinite(values).sum()), 'seeds': len(reach)}


_TABLE = _NEIGHBOURS = None


def _init_worker(table):
    global _TABLE, _NEIGHBOURS
    _TABLE, _NEIGHBOURS = table, strategies.Neighbours(table)  # its distance cache serves every run
    torch.set_num_threads(1)


def _one_run(job):
    method, budget, seed = job
    return method, seed, strategies.run(method, _TABLE, budget, seed, _NEIGHBOURS)


def compare(table: dataset.Graphs, seeds: int, budget: int, methods=METHODS, workers: int = 2,
            budgets: Optional[List[int]] = None, report: Optional[str] = None) -> dict:
    """Every method on ``seeds`` seeds, up to ``budget`` look-ups, in ``workers`` processes. Per
    method: mean and std of the best label found at each of ``budgets`` (default: 50, 75, ... up
    to ``budget``), ``report`` (a metric of the table) of the best-by-label row at each budget
    (mean over seeds), and per seed the look-ups to the table's best and to a top-10 row, with
    their median, 90th percentile and the seeds that got there."""
    budgets = budgets or [b for b in range(50, budget + 1, 25)] or [budget]
    jobs = [(m, budget, s) for s in range(seeds) for m in methods]
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(table,)) as pool:
            runs = list(pool.map(_one_run, jobs))
    else:
        _init_worker(table)
        runs = [_one_run(j) for j in jobs]
    out = {'budgets': budgets, 'seeds': seeds, 'methods': {}, 'rows': len(table),
           'best_in_table': float(table.labels.max()),
           'top10_threshold': float(np.sort(table.labels)[::-1][min(10, len(table)) - 1]),
           'report_metric': report}
    for m in methods:
        looked = [traj for method, _, traj in sorted(runs, key=lambda r: r[1]) if method == m]
        for t in looked:
            if len(set(t)) != len(t) or len(t) > budget:
                raise RuntimeError(f'{m}: a run looked a row up twice or went over the budget')
        curves = np.array([best_curve(table, t, budgets) for t in looked])
        to_best = [to_top(table, t, 1) for t in looked]
        to_top10 = [to_top(table, t, 10) for t in looked]
        row = {'mean': curves.mean(0).tolist(), 'std': curves.std(0).tolist(),
               'to_best': to_best, 'to_top10': to_top10,
               'to_best_stats': reach_stats(to_best), 'to_top10_stats': reach_stats(to_top10)}
        row['to_top10_median'] = row['to_top10_stats']['median']
        if report is not None:
            reports = np.array([report_curve(table, t, budgets, report) for t in looked])
            with np.errstate(all='ignore'):
                row['report'] = [None if np.isnan(v) else float(v) for v in np.nanmean(reports, 0)] \
                    if not np.isnan(reports).all() else [None] * len(budgets)
        out['methods'][m] = row
    return out


# --- how well each predictor ranks ---------------------------------------------------------------------

RANKERS = ('gcn', 'mlp', 'gbt', 'ensemble')


def rank_with(ranker: str, train: dataset.Graphs, rest: dataset.Graphs, seed: int) -> np.ndarray:
    """Scores of ``rest`` (higher: predicted better) by a predictor trained on ``train``: 'gcn'
    (the paper's, the reproduction's settings), 'mlp' (the same loss on the flat encoding), 'gbt'
    (scikit-learn's gradient-boosted trees on the flat encoding), 'ensemble' (the loop's:
    ``fit_ensemble`` on ranks, its mean)."""
    if ranker in ('gcn', 'mlp'):
        settings = model.Settings(seed=seed, model=ranker, batch_size=min(10, len(train)))
        norm = (float(train.labels.mean()), float(train.labels.std()) or 1.0)
        return model.regress(train, rest, settings, norm)
    if ranker == 'gbt':
        from sklearn.ensemble import GradientBoostingRegressor
        gbt = GradientBoostingRegressor(random_state=seed).fit(strategies.features(train).numpy(), train.labels)
        return gbt.predict(strategies.features(rest).numpy())
    if ranker == 'ensemble':
        x_train, x_rest = strategies.features(train), strategies.features(rest)
        return strategies.ensemble_scores(x_train, strategies.rank_targets(train.labels), x_rest, seed).mean(0)
    raise ValueError(f'unknown ranker {ranker!r}')


def _one_ranking(job):
    from neural_predictor.common import kendall_tau
    ranker, n, seed = job
    order = np.random.RandomState(seed).permutation(len(_TABLE))
    train, rest = _TABLE.subset(order[:n]), _TABLE.subset(order[n:])
    score = rank_with(ranker, train, rest, seed)
    top = rest.labels >= np.quantile(rest.labels, 0.9)
    return ranker, n, seed, kendall_tau(score, rest.labels), kendall_tau(score[top], rest.labels[top])


def ranking_study(table: dataset.Graphs, sizes: List[int], seeds: int, rankers=RANKERS,
                  workers: int = 2) -> dict:
    """Kendall tau of each ranker's scores against the true accuracies, on every cell outside
    its training sample and on the true top 10 % of them; the same random splits for every
    ranker (seed s draws the same cells), mean and std over the seeds."""
    jobs = [(r, n, s) for n in sizes for s in range(seeds) for r in rankers]
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(table,)) as pool:
        runs = list(pool.map(_one_ranking, jobs))
    out = {}
    for r in rankers:
        out[r] = []
        for n in sizes:
            rows = [(a, t) for rr, nn, _, a, t in runs if rr == r and nn == n]
            out[r].append({'n_train': n, 'tau_all': [float(np.mean([a for a, _ in rows])), float(np.std([a for a, _ in rows]))],
                           'tau_top10pct': [float(np.mean([t for _, t in rows])), float(np.std([t for _, t in rows]))]})
    return {'sizes': sizes, 'seeds': seeds, 'rankers': out}


def plot(result: dict, path: str, metric: str = 'accuracy', scale: float = 100.0) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    budgets = result['budgets']
    for name, r in result['methods'].items():
        mean, std = np.array(r['mean']) * scale, np.array(r['std']) * scale
        ax.plot(budgets, mean, marker='o', ms=3, label=name)
        ax.fill_between(budgets, mean - std, mean + std, alpha=0.15)
    ax.axhline(result['best_in_table'] * scale, color='k', ls='--', lw=0.8, label='best in table')
    ax.set_xlabel('look-ups (cells trained)')
    ax.set_ylabel(f'best {metric} found' + (' (%)' if scale == 100.0 else ''))
    ax.set_title(f'mean +- std over {result["seeds"]} seeds')
    ax.grid(linestyle='--', alpha=0.5)
    ax.legend()
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format='png', dpi=100))
    plt.close(fig)


def load_table(args):
    """The table and the name of what the search sees: --table (JSON lines of any space, or this
    project's JSON list of genotype rows), --data/--splits (NAS-Bench-101), else NAS-Bench-201."""
    if args.table:
        import genotypes
        limits = [dataset.parse_limit(text) for text in args.max or []]
        return dataset.read_table(args.table, args.metric, limits, genotypes.get, args.report)
    if args.metric or args.report or args.max:
        raise dataset.DataError('--metric, --report and --max need --table FILE.jsonl')
    if args.data or args.splits:
        if not (args.data and args.splits):
            raise dataset.DataError('--data and --splits go together (NAS-Bench-101)')
        table = dataset.read_nb101(args.data)
        dataset.read_splits(args.splits, len(table), args.data)  # checked: the file belongs to the table
        return table, 'accuracy'
    return dataset.read_nb201(), 'accuracy'


def print_result(result: dict, metric: str, scale: float) -> None:
    unit = ' %' if scale == 100.0 else ''
    print(f'mean best {metric} found{" (%)" if unit else ""} at each budget; look-ups to a top-10 row: '
          f'median, 90th percentile, seeds that got there')
    print(f'{"method":10s} ' + ' '.join(f'{b:>7d}' for b in result['budgets']) + '   median    p90  reached')
    for name, r in result['methods'].items():
        st = r['to_top10_stats']
        fmt = lambda v: 'never' if v is None else f'{v:g}'  # noqa: E731
        print(f'{name:10s} ' + ' '.join(f'{scale * v:7.2f}' for v in r['mean'])
              + f'  {fmt(st["median"]):>7s} {fmt(st["p90"]):>6s} {st["reached"]:>4d}/{st["seeds"]}')
        if result.get('report_metric'):
            print(f'{"  " + result["report_metric"]:10s} ' + ' '.join(
                '      -' if v is None else f'{scale * v:7.2f}' for v in r['report']))
    print(f'best in table: {scale * result["best_in_table"]:.2f}{unit}')


def add_space_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group('a search with real trainings (--space pnas): an Optuna study')
    g.add_argument('--space', choices=['pnas'],
                   help="pnas: PNAS's cell space, each trial a train.py --dataset cifar10 run of one "
                        'cell (the arguments after -- go to train.py), scored on images held out of '
                        'the training batches')
    g.add_argument('--method', choices=['predictor', 'pnas', 'evolution', 'random'], default='predictor',
                   help="the sampler: the predictor-guided loop (default), PNAS's progressive search, "
                        'regularized evolution or random search')
    g.add_argument('--storage', help='the study\'s store, an SQLAlchemy URL (default: '
                                     'sqlite:///RUNS/search.db); the same PostgreSQL or MySQL URL on '
                                     'several machines makes one search of their workers')
    g.add_argument('--study', default='search', help='the study\'s name (default: search)')
    g.add_argument('--runs', default='search_runs', help='trial folders go here (default: search_runs)')
    g.add_argument('--export', metavar='FILE', help='write the complete trials as {"genotype", '
                                                    '"accuracy"} rows, what --table reads')
    g.add_argument('--blocks', type=int, default=5, help='blocks of a cell (default 5, PNASNet-5)')
    g.add_argument('--beam', type=int, help='--method pnas: cells trained per size (default: '
                                            'the budget over the blocks, at least 2)')
    g.add_argument('--valid-size', type=int, help='images held out of the training batches to score a '
                                                  'trial on (default: 5,000 as PNAS, or a tenth of '
                                                  'smaller data)')
    g.add_argument('--seed', type=int, default=0, help="the sampler's seed (default 0)")
    g.add_argument('--heartbeat', type=int, default=60,
                   help='seconds between a running trial\'s heartbeats; a trial silent for three is '
                        'failed and retried once (default 60)')


def space_search(args, train_args: List[str]) -> int:
    """--space pnas: the study's trials trained until it holds --budget complete ones."""
    import cifar
    from neural_predictor import study as study_mod
    if not args.data:
        return fail(SCRIPT, '--space pnas needs --data DIR, the folder that holds cifar-10-batches-py/')
    if min(args.budget, args.workers, args.blocks, args.heartbeat) < 1:
        return fail(SCRIPT, '--budget, --workers, --blocks and --heartbeat must be at least 1')
    try:
        n_train = len(cifar.load(args.data)[2])
    except cifar.CifarError as e:
        return fail(SCRIPT, str(e))
    os.makedirs(args.runs, exist_ok=True)
    url = args.storage or f'sqlite:///{os.path.abspath(os.path.join(args.runs, "search.db"))}'
    settings = study_mod.Settings(
        data=os.path.abspath(args.data), runs=os.path.abspath(args.runs), budget=args.budget,
        method=args.method, blocks=args.blocks, beam=args.beam, workers=args.workers,
        valid_size=args.valid_size or min(5000, n_train // 10), seed=args.seed,
        heartbeat=args.heartbeat, train_args=list(train_args))
    try:
        study = study_mod.open_study(url, args.study, settings)
        done = len(study_mod.complete_trials(study))
        print(f'study {args.study} in {url}: {done} of {args.budget} trials complete '
              f'(optuna-dashboard {url} shows it)', flush=True)
        study_mod.Search(study, settings, say=lambda line: print(line, flush=True)).run()
    except study_mod.SearchError as e:
        return fail(SCRIPT, str(e))
    except KeyboardInterrupt:  # the running trials are failed by their stale heartbeat, and retried
        return fail(SCRIPT, 'interrupted; the same command goes on with the study')
    rows = study_mod.export_rows(study)
    if args.export:
        write_json(rows, args.export)
        print(f'{len(rows)} trials written to {args.export}')
    entry = study_mod.best_entry(study, args.blocks)
    if entry:
        print('the best cell, as a genotypes.py entry:\n' + entry)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='More: docs/neural-predictor.md')
    ap.add_argument('--seeds', type=int, default=20, help='runs of each method (default 20)')
    ap.add_argument('--budget', type=int, default=300, help='look-ups of each run (default 300)')
    ap.add_argument('--json', help='write the curves here (a table search needs it)')
    ap.add_argument('--plot', help='a PNG of the curves')
    ap.add_argument('--methods', nargs='+', choices=ALL_METHODS, default=list(METHODS),
                    help=f'default: {" ".join(METHODS)}')
    ap.add_argument('--workers', type=int, default=min(2, os.cpu_count() or 1),
                    help='processes, one run each (default: 2); with --space pnas, trainings at once, '
                         'one GPU each where there are GPUs')
    ap.add_argument('--data', help='NAS-Bench-101 in the HDF5 layout, instead of NAS-Bench-201; with '
                                   '--space pnas, the folder that holds cifar-10-batches-py/')
    ap.add_argument('--splits', help='with --data: the .npz of tools/split_train_val.py')
    ap.add_argument('--table', help='instead: a table of any space as JSON lines (one architecture a line: '
                                    'nodes, edges, metrics), or a JSON list of {"genotype", "accuracy"} rows '
                                    'of this project')
    ap.add_argument('--metric', help='with a JSONL --table: the metric the search sees, higher is better '
                                     '(default: the first metric of the first row)')
    ap.add_argument('--report', help='with a JSONL --table: the metric reported for each method\'s best '
                                     'row by --metric (search on validation, report test)')
    ap.add_argument('--max', action='append', metavar='NAME=VALUE',
                    help='with a JSONL --table: only rows with NAME at most VALUE (repeatable)')
    ap.add_argument('--rankers', type=int, nargs='+', metavar='N',
                    help='instead of the search: how well each predictor ranks (Kendall tau on all '
                         'other cells and on the top 10 %%), trained on N random cells, --seeds splits')
    add_space_args(ap)
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index('--') + 1:] if '--' in argv else []
    args = ap.parse_args(argv[:argv.index('--')] if '--' in argv else argv)
    if args.space == 'pnas':
        return space_search(args, train_args)
    if train_args:
        return fail(SCRIPT, 'arguments after -- go to train.py, in a search with --space pnas')
    if not args.json:
        return fail(SCRIPT, '--json FILE is needed: where the curves go')
    if args.seeds < 1 or args.budget < 1 or args.workers < 1:
        return fail(SCRIPT, '--seeds, --budget and --workers must be at least 1')
    try:
        table, metric = load_table(args)
        if args.rankers:
            result = ranking_study(table, args.rankers, args.seeds, workers=args.workers)
            write_json(result, args.json)
            print(f'{"ranker":9s} ' + ' '.join(f'{"tau all / top10% @" + str(n):>24s}' for n in args.rankers))
            for r, rows in result['rankers'].items():
                print(f'{r:9s} ' + ' '.join(f'{row["tau_all"][0]:11.3f} / {row["tau_top10pct"][0]:6.3f}' for row in rows))
            return 0
        if args.budget > len(table):
            raise dataset.DataError(f'--budget {args.budget}: the table has {len(table)} rows')
        result = compare(table, args.seeds, args.budget, args.methods, args.workers,
                         budgets=[b for b in range(50, args.budget + 1, 25)] or [args.budget],
                         report=args.report)
    except dataset.DataError as e:
        return fail(SCRIPT, str(e))
    result['metric'] = metric
    write_json(result, args.json)
    scale = 1.0 if table.metrics is not None else 100.0  # JSONL tables keep their units
    if args.plot:
        plot(result, args.plot, metric, scale)
    print_result(result, metric, scale)
    return 0


if __name__ == '__main__':
    sys.exit(main())
