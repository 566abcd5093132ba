"""Architecture search on a table of trained cells: which cells to train next, and how many
trainings a method needs for the same result.

    python neural_predictor/search.py --seeds 20 --budget 300 --json search.json --plot search.png

draws best accuracy found against look-ups (a look-up stands for one trained cell) for random
search, regularized evolution (Real et al.), the paper's one-shot predictor (train the GCN on 50
random cells, then look up its top predictions in order) and the predictor-guided loop of
``guided_search``: an ensemble of small networks on the cells looked up so far, an upper-confidence
acquisition (mean + 1.5 x spread) over candidates made by mutating the best cells found and
drawn at random, ten look-ups a round, retrained after each. The table is the NAS-Bench-201 one that analog-nasbench
ships unless ``--data``/``--splits`` (NAS-Bench-101 in the HDF5 layout) or ``--table`` (this
project's genotypes) say otherwise. Every method runs against a ``dataset.Graphs`` table through
one function that returns the cells it looked up, in order.
"""
import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from neural_predictor import dataset  # noqa: E402
from neural_predictor.common import fail, write_atomic, write_json  # noqa: E402

SCRIPT = 'neural_predictor/search.py'
METHODS = ('random', 'evolution', 'one_shot', 'predictor')


# --- the table's neighbourhoods -------------------------------------------------------------------

class Neighbours:
    """Mutations of a cell that the table holds: one position of its key (``Graphs.keys``: node
    types, then adjacency) changed to another value that position takes somewhere in the table."""

    def __init__(self, table: dataset.Graphs):
        self.keys = table.keys()
        self.where = {key: i for i, key in enumerate(self.keys)}
        self.values = [sorted({k[p] for k in self.keys}) for p in range(len(self.keys[0]))]
        self.mutable = [p for p, v in enumerate(self.values) if len(v) > 1]

    def of(self, i: int) -> List[int]:
        """Every cell of the table one mutation away from cell ``i``."""
        out, key = [], list(self.keys[i])
        for p in self.mutable:
            for v in self.values[p]:
                if v != key[p]:
                    j = self.where.get(tuple(key[:p] + [v] + key[p + 1:]))
                    if j is not None:
                        out.append(j)
        return out

    def random_mutant(self, i: int, rng: np.random.RandomState) -> Optional[int]:
        """One random mutation of cell ``i`` that the table holds (100 tries), else None."""
        for _ in range(100):
            key = list(self.keys[i])
            p = self.mutable[rng.randint(len(self.mutable))]
            others = [v for v in self.values[p] if v != key[p]]
            key[p] = others[rng.randint(len(others))]
            j = self.where.get(tuple(key))
            if j is not None:
                return j
        return None


# --- the baselines ----------------------------------------------------------------------------------

def random_trajectory(table: dataset.Graphs, budget: int, seed: int) -> List[int]:
    return [int(i) for i in np.random.RandomState(seed).permutation(len(table))[:budget]]


def evolution_trajectory(table: dataset.Graphs, budget: int, seed: int, population: int = 50,
                         sample: int = 10, neighbours: Optional[Neighbours] = None) -> List[int]:
    """Real et al.'s aging evolution over the table's cells: a population of random cells; each
    round the best of a random sample is mutated (``Neighbours.random_mutant``), looked up and
    added, and the oldest member dies; where no mutant is in the table, a random cell. Every
    look-up counts, the initial population's included."""
    rng = np.random.RandomState(seed)
    neighbours = neighbours or Neighbours(table)
    members = [int(i) for i in rng.permutation(len(table))[:min(population, budget)]]
    looked = list(members)
    while len(looked) < budget:
        contenders = rng.choice(len(members), size=min(sample, len(members)), replace=False)
        parent = max((members[c] for c in contenders), key=lambda i: table.labels[i])
        child = neighbours.random_mutant(parent, rng)
        if child is None:
            child = int(rng.randint(len(table)))
        looked.append(child)
        members.append(child)
        members.pop(0)
    return looked


def one_shot_trajectory(table: dataset.Graphs, budget: int, seed: int, n_train: int = 50,
                        epochs: int = 300) -> List[int]:
    """The paper's selection: the GCN (the reproduction's settings) trained on ``n_train``
    random cells, then the rest looked up in the order of its predictions."""
    from neural_predictor import train as np_train
    order = np.random.RandomState(seed).permutation(len(table))
    seen, rest = order[:n_train], order[n_train:]
    labels = table.labels[seen]
    norm = (float(labels.mean()), float(labels.std()) or 1.0)
    settings = np_train.Settings(epochs=epochs, seed=seed)
    pred = np_train.regress(table.subset(seen), table.subset(rest), settings, norm)
    top = rest[np.argsort(-pred, kind='stable')[:max(0, budget - n_train)]]
    return [int(i) for i in np.concatenate([seen, top])][:budget]


# --- the predictor-guided loop ------------------------------------------------------------------------

def features(table: dataset.Graphs) -> torch.Tensor:
    """Each cell as one flat vector: its node types one-hot and its adjacency."""
    n = len(table)
    return torch.from_numpy(np.concatenate([table.ops.reshape(n, -1), table.adjacency.reshape(n, -1)], 1))


def rank_targets(labels: np.ndarray) -> np.ndarray:
    """Labels as their rank among themselves, in [-1, 1] (ties share a rank): what the loop trains
    on. A cell that did not train (NAS-Bench-201's 341 cells at 10 %) is then the lowest rank, not
    an error of 80 points that would dominate a squared loss."""
    order = np.argsort(np.argsort(labels, kind='stable'), kind='stable').astype(np.float32)
    _, inverse = np.unique(labels, return_inverse=True)
    mean_rank = np.bincount(inverse, order) / np.bincount(inverse)
    return (2.0 * mean_rank[inverse] / max(1, len(labels) - 1) - 1.0).astype(np.float32)


class Ensemble(torch.nn.Module):
    """``members`` two-layer MLPs trained at once as one batched network: each sees a bootstrap
    resample of the cells (a weight per cell) from its own initialisation."""

    def __init__(self, members: int, inputs: int, hidden: int, generator: torch.Generator):
        super().__init__()
        scale1, scale2 = (2.0 / inputs) ** 0.5, (2.0 / hidden) ** 0.5
        self.w1 = torch.nn.Parameter(torch.randn(members, inputs, hidden, generator=generator) * scale1)
        self.b1 = torch.nn.Parameter(torch.zeros(members, 1, hidden))
        self.w2 = torch.nn.Parameter(torch.randn(members, hidden, hidden, generator=generator) * scale2)
        self.b2 = torch.nn.Parameter(torch.zeros(members, 1, hidden))
        self.w3 = torch.nn.Parameter(torch.randn(members, hidden, 1, generator=generator) * scale2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, F] -> [members, N]
        h = torch.relu(torch.einsum('nf,mfh->mnh', x, self.w1) + self.b1)
        h = torch.relu(torch.bmm(h, self.w2) + self.b2)
        return torch.bmm(h, self.w3).squeeze(-1)


def fit_ensemble(x: torch.Tensor, y: np.ndarray, seed: int, members: int = 5, hidden: int = 64,
                 steps: int = 300, lr: float = 3e-3) -> Ensemble:
    generator = torch.Generator().manual_seed(seed)
    net = Ensemble(members, x.shape[1], hidden, generator)
    counts = torch.stack([torch.bincount(torch.randint(len(y), (len(y),), generator=generator),
                                         minlength=len(y)) for _ in range(members)]).float()
    target = torch.from_numpy(y)[None]
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        loss = (counts * (net(x) - target) ** 2).sum() / counts.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def guided_search(table: dataset.Graphs, budget: int, seed: int, initial: int = 10, batch: int = 10,
                  parents: int = 10, random_candidates: int = 20000, explore: float = 1.5,
                  neighbours: Optional[Neighbours] = None, x: Optional[torch.Tensor] = None) -> List[int]:
    """The cells looked up, in order, by the predictor-guided loop: ``initial`` random cells,
    then rounds of ``batch``: an ensemble (``fit_ensemble``) trained on the rank of every cell
    looked up so far scores the candidates (every mutation of the ``parents`` best cells found,
    and ``random_candidates`` random cells not looked up: all of NAS-Bench-201) by mean +
    ``explore`` x spread, and the best ``batch`` of them are looked up. No cell is looked up
    twice; ``budget`` caps the look-ups. With less exploration (0.5) one seed in twenty stayed
    on a plateau of near-equal cells for the whole run on NAS-Bench-201."""
    rng = np.random.RandomState(seed)
    neighbours = neighbours or Neighbours(table)
    x = features(table) if x is None else x
    budget = min(budget, len(table))
    looked = [int(i) for i in rng.permutation(len(table))[:min(initial, budget)]]
    seen = set(looked)
    while len(looked) < budget:
        idx = np.array(looked)
        net = fit_ensemble(x[idx], rank_targets(table.labels[idx]), seed * 1000 + len(looked))
        best = idx[np.argsort(-table.labels[idx], kind='stable')[:parents]]
        cands = {j for i in best for j in neighbours.of(int(i)) if j not in seen}
        pool = rng.permutation(len(table))[:random_candidates + len(seen)]
        cands = np.array(sorted(cands | {int(j) for j in pool if int(j) not in seen}))
        if not len(cands):
            break
        with torch.no_grad():
            scores = net(x[cands])
        score = (scores.mean(0) + explore * scores.std(0)).numpy()
        take = cands[np.argsort(-score, kind='stable')[:min(batch, budget - len(looked))]]
        looked += [int(j) for j in take]
        seen.update(int(j) for j in take)
    return looked


# --- the comparison -----------------------------------------------------------------------------------

def best_curve(table: dataset.Graphs, looked: List[int], budgets: List[int]) -> List[float]:
    running = np.maximum.accumulate(table.labels[np.array(looked)])
    return [float(running[min(b, len(running)) - 1]) for b in budgets]


def to_top(table: dataset.Graphs, looked: List[int], top: int = 10) -> Optional[int]:
    """Look-ups until one of the table's ``top`` best cells (by accuracy; ties with the last
    count) is among them; None where it never is."""
    threshold = np.sort(table.labels)[::-1][min(top, len(table)) - 1]
    hits = np.nonzero(table.labels[np.array(looked)] >= threshold)[0]
    return int(hits[0]) + 1 if len(hits) else None


def run_method(method: str, table: dataset.Graphs, budget: int, seed: int) -> List[int]:
    if method == 'random':
        return random_trajectory(table, budget, seed)
    if method == 'evolution':
        return evolution_trajectory(table, budget, seed)
    if method == 'one_shot':
        return one_shot_trajectory(table, budget, seed)
    if method == 'predictor':
        return guided_search(table, budget, seed)
    raise ValueError(f'unknown method {method!r}')


_TABLE = None


def _init_worker(table):
    global _TABLE
    _TABLE = table
    torch.set_num_threads(1)


def _one_run(job):
    method, budget, seed = job
    return method, seed, run_method(method, _TABLE, budget, seed)


def compare(table: dataset.Graphs, seeds: int, budget: int, methods=METHODS, workers: int = 2,
            budgets: Optional[List[int]] = None) -> dict:
    """Every method on ``seeds`` seeds, up to ``budget`` look-ups, in ``workers`` processes:
    mean and std of the best accuracy found at each of ``budgets`` (default: 50, 75, ... up to
    ``budget``), and the median look-ups to one of the table's ten best cells."""
    budgets = budgets or [b for b in range(50, budget + 1, 25)] or [budget]
    jobs = [(m, budget, s) for s in range(seeds) for m in methods]
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(table,)) as pool:
            runs = list(pool.map(_one_run, jobs))
    else:
        _init_worker(table)
        runs = [_one_run(j) for j in jobs]
    out = {'budgets': budgets, 'seeds': seeds, 'methods': {},
           'best_in_table': float(table.labels.max()),
           'top10_threshold': float(np.sort(table.labels)[::-1][min(10, len(table)) - 1])}
    for m in methods:
        looked = [traj for method, _, traj in sorted(runs, key=lambda r: r[1]) if method == m]
        assert all(len(set(t)) == len(t) or m == 'evolution' for t in looked)
        curves = np.array([best_curve(table, t, budgets) for t in looked])
        reach = [to_top(table, t) for t in looked]
        finite = sorted(r for r in reach if r is not None)
        median = None
        if len(finite) * 2 > len(reach):  # more than half of the seeds got there
            median = float(np.median([r if r is not None else np.inf for r in reach]))
        out['methods'][m] = {'mean': curves.mean(0).tolist(), 'std': curves.std(0).tolist(),
                             'to_top10_median': median, 'to_top10': reach}
    return out


# --- how well each predictor ranks ---------------------------------------------------------------------

RANKERS = ('gcn', 'mlp', 'gbt', 'ensemble')


def rank_with(ranker: str, train: dataset.Graphs, rest: dataset.Graphs, seed: int) -> np.ndarray:
    """Scores of ``rest`` (higher: predicted better) by a predictor trained on ``train``: 'gcn'
    (the paper's, the reproduction's settings), 'mlp' (the same loss on the flat encoding), 'gbt'
    (scikit-learn's gradient-boosted trees on the flat encoding), 'ensemble' (the loop's:
    ``fit_ensemble`` on ranks, its mean)."""
    if ranker in ('gcn', 'mlp'):
        from neural_predictor import train as np_train
        settings = np_train.Settings(seed=seed, model=ranker, batch_size=min(10, len(train)))
        norm = (float(train.labels.mean()), float(train.labels.std()) or 1.0)
        return np_train.regress(train, rest, settings, norm)
    if ranker == 'gbt':
        from sklearn.ensemble import GradientBoostingRegressor
        gbt = GradientBoostingRegressor(random_state=seed).fit(features(train).numpy(), train.labels)
        return gbt.predict(features(rest).numpy())
    if ranker == 'ensemble':
        net = fit_ensemble(features(train), rank_targets(train.labels), seed)
        with torch.no_grad():
            return net(features(rest)).mean(0).numpy()
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


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    budgets = result['budgets']
    for name, r in result['methods'].items():
        mean, std = np.array(r['mean']) * 100, np.array(r['std']) * 100
        ax.plot(budgets, mean, marker='o', ms=3, label=name)
        ax.fill_between(budgets, mean - std, mean + std, alpha=0.15)
    ax.axhline(result['best_in_table'] * 100, color='k', ls='--', lw=0.8, label='best in table')
    ax.set_xlabel('look-ups (cells trained)')
    ax.set_ylabel('best accuracy found (%)')
    ax.set_title(f'mean +- std over {result["seeds"]} seeds')
    ax.grid(linestyle='--', alpha=0.5)
    ax.legend()
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format='png', dpi=100))
    plt.close(fig)


def load_table(args) -> dataset.Graphs:
    if args.table:
        import genotypes
        return dataset.read_genotype_table(args.table, genotypes.get)
    if args.data or args.splits:
        if not (args.data and args.splits):
            raise dataset.DataError('--data and --splits go together (NAS-Bench-101)')
        table = dataset.read_nb101(args.data)
        dataset.read_splits(args.splits, len(table), args.data)  # checked: the file belongs to the table
        return table
    return dataset.read_nb201()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='More: docs/neural-predictor.md')
    ap.add_argument('--seeds', type=int, default=20, help='runs of each method (default 20)')
    ap.add_argument('--budget', type=int, default=300, help='look-ups of each run (default 300)')
    ap.add_argument('--json', required=True, help='write the curves here')
    ap.add_argument('--plot', help='a PNG of the curves')
    ap.add_argument('--methods', nargs='+', choices=METHODS, default=list(METHODS))
    ap.add_argument('--workers', type=int, default=min(2, os.cpu_count() or 1),
                    help='processes, one run each (default: 2)')
    ap.add_argument('--data', help='NAS-Bench-101 in the HDF5 layout, instead of NAS-Bench-201')
    ap.add_argument('--splits', help='with --data: the .npz of tools/split_train_val.py')
    ap.add_argument('--table', help='instead: a JSON list of {"genotype", "accuracy"} rows of this project')
    ap.add_argument('--rankers', type=int, nargs='+', metavar='N',
                    help='instead of the search: how well each predictor ranks (Kendall tau on all '
                         'other cells and on the top 10 %%), trained on N random cells, --seeds splits')
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.budget < 1 or args.workers < 1:
        return fail(SCRIPT, '--seeds, --budget and --workers must be at least 1')
    try:
        table = load_table(args)
        if args.rankers:
            result = ranking_study(table, args.rankers, args.seeds, workers=args.workers)
            write_json(result, args.json)
            print(f'{"ranker":9s} ' + ' '.join(f'{"tau all / top10% @" + str(n):>24s}' for n in args.rankers))
            for r, rows in result['rankers'].items():
                print(f'{r:9s} ' + ' '.join(f'{row["tau_all"][0]:11.3f} / {row["tau_top10pct"][0]:6.3f}' for row in rows))
            return 0
        if args.budget > len(table):
            raise dataset.DataError(f'--budget {args.budget}: the table has {len(table)} cells')
        result = compare(table, args.seeds, args.budget, args.methods, args.workers,
                         budgets=[b for b in range(50, args.budget + 1, 25)] or [args.budget])
    except dataset.DataError as e:
        return fail(SCRIPT, str(e))
    write_json(result, args.json)
    if args.plot:
        plot(result, args.plot)
    print(f'{"method":10s} ' + ' '.join(f'{b:>6d}' for b in result['budgets']) + '  to top-10 (median)')
    for name, r in result['methods'].items():
        print(f'{name:10s} ' + ' '.join(f'{100 * v:6.2f}' for v in r['mean'])
              + f'  {r["to_top10_median"] if r["to_top10_median"] is not None else "not reached"}')
    print(f'best in table: {100 * result["best_in_table"]:.2f} %')
    return 0


if __name__ == '__main__':
    sys.exit(main())
