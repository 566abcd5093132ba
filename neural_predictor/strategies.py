"""Search strategies over a table of trained architectures: which rows to look up next.

Each strategy is a function ``(table, budget, seed) -> [row, ...]``: the rows of a
``dataset.Graphs`` it looks up, in order, never one twice, at most ``budget`` of them. A look-up
stands for one training; a strategy sees a row's label only once it has looked it up.

- ``random_search``: rows in a random order.
- ``evolution``: Real et al.'s regularized (aging) evolution.
- ``local_search``: White et al.'s local search (hill climbing with random restarts).
- ``one_shot``: the Neural Predictor paper's selection (the GCN trained on random rows, then its
  top predictions).
- ``guided_search``: the predictor-guided loop (a local search whose steps and restarts an
  ensemble of small networks chooses).
- ``gp_search``: Bayesian optimisation over the whole table: a Gaussian process on the rows'
  encodings, each look-up the untried row with the highest draw from its posterior.

Neighbours of a row are the rows of the table nearest to it in its encoding (``Neighbours``), so
that mutations work in any space a table holds, whatever its graphs look like.
"""
import inspect
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from neural_predictor import dataset


# --- the table's neighbourhoods ---------------------------------------------------------------------

def features(table: dataset.Graphs) -> torch.Tensor:
    """Each row as one flat 0/1 vector: its node types one-hot (zero rows for padding), then its
    adjacency."""
    n = len(table)
    return torch.from_numpy(np.concatenate([table.ops.reshape(n, -1), table.adjacency.reshape(n, -1)], 1))


class Neighbours:
    """The rows nearest to a row: the fewest changed node types and edges (the Hamming distance of
    ``features``), whole distance shells until at least ``min_size`` rows. On NAS-Bench-201 that is
    exactly the 24 cells one op away; in a space whose valid graphs are rarely one edge apart
    (NAS-Bench-101, a lab's own runs) it is the nearest graphs that the table holds. Distances are
    integers computed exactly, so every CPU finds the same neighbours."""

    def __init__(self, table: dataset.Graphs, min_size: int = 10, bits: Optional[np.ndarray] = None):
        self.bits = features(table).numpy() if bits is None else bits
        self.ones = self.bits.sum(1)
        self.min_size = min(min_size, len(table) - 1)
        self._cache: Dict[int, np.ndarray] = {}

    def distances(self, rows, cols=None) -> np.ndarray:
        """The Hamming distances [len(rows), len(cols)] from ``rows`` to ``cols`` (default: every
        row), exact integers."""
        rows = np.asarray(rows, np.int64)
        cols = np.arange(len(self.bits)) if cols is None else np.asarray(cols, np.int64)
        return self.ones[rows][:, None] + self.ones[cols][None, :] - 2.0 * (self.bits[rows] @ self.bits[cols].T)

    def of(self, i: int) -> np.ndarray:
        """The neighbours of row ``i``, nearest first (ties by row number)."""
        i = int(i)
        if i not in self._cache:
            if self.min_size < 1:
                self._cache[i] = np.zeros(0, np.int64)
                return self._cache[i]
            distance = self.distances([i])[0]
            distance[i] = np.inf
            radius = np.partition(distance, self.min_size - 1)[self.min_size - 1]
            near = np.nonzero(distance <= radius)[0]
            self._cache[i] = near[np.lexsort((near, distance[near]))]
        return self._cache[i]


def random_unseen(n: int, seen, rng: np.random.RandomState) -> Optional[int]:
    """A uniformly drawn row not in ``seen``; None when every row is."""
    if len(seen) >= n:
        return None
    for _ in range(64):
        j = int(rng.randint(n))
        if j not in seen:
            return j
    rest = np.setdiff1d(np.arange(n), np.fromiter(seen, np.int64, len(seen)))
    return int(rest[rng.randint(len(rest))])


def best_of(table: dataset.Graphs, rows) -> int:
    """The row with the highest label (the first of equals)."""
    rows = list(rows)
    return rows[int(np.argmax(table.labels[np.asarray(rows, np.int64)]))]


# --- the baselines ------------------------------------------------------------------------------------

def random_search(table: dataset.Graphs, budget: int, seed: int) -> List[int]:
    return [int(i) for i in np.random.RandomState(seed).permutation(len(table))[:budget]]


def evolution(table: dataset.Graphs, budget: int, seed: int, population: int = 50, sample: int = 10,
              neighbours: Optional[Neighbours] = None) -> List[int]:
    """Real et al.'s aging evolution: a population of ``population`` random rows; each step the
    best of ``sample`` members drawn at random is the parent, one of its untried neighbours drawn
    at random is the child (a random untried row where it has none), looked up and added, and
    the oldest member dies. Every look-up counts, the first population's included."""
    rng = np.random.RandomState(seed)
    neighbours = neighbours or Neighbours(table)
    budget = min(budget, len(table))
    members = [int(i) for i in rng.permutation(len(table))[:min(population, budget)]]
    looked, seen = list(members), set(members)
    while len(looked) < budget:
        contenders = rng.choice(len(members), size=min(sample, len(members)), replace=False)
        parent = best_of(table, [members[c] for c in sorted(contenders)])
        options = [int(j) for j in neighbours.of(parent) if int(j) not in seen]
        child = options[rng.randint(len(options))] if options else random_unseen(len(table), seen, rng)
        looked.append(child)
        seen.add(child)
        members.append(child)
        members.pop(0)
    return looked


def local_search(table: dataset.Graphs, budget: int, seed: int, initial: int = 10,
                 neighbours: Optional[Neighbours] = None) -> List[int]:
    """White et al.'s local search: ``initial`` random rows, then from the best row so far its
    untried neighbours in a random order, moving to the first that is better; where none is (a
    local optimum), a restart from a random untried row, climbed the same way."""
    rng = np.random.RandomState(seed)
    neighbours = neighbours or Neighbours(table)
    budget = min(budget, len(table))
    looked = [int(i) for i in rng.permutation(len(table))[:min(initial, budget)]]
    seen = set(looked)
    current = best_of(table, looked)
    while len(looked) < budget:
        queue = [int(j) for j in neighbours.of(current) if int(j) not in seen]
        rng.shuffle(queue)
        moved = False
        for j in queue[:budget - len(looked)]:
            looked.append(j)
            seen.add(j)
            if table.labels[j] > table.labels[current]:
                current, moved = j, True
                break
        if not moved and len(looked) < budget:
            current = random_unseen(len(table), seen, rng)
            looked.append(current)
            seen.add(current)
    return looked


def one_shot(table: dataset.Graphs, budget: int, seed: int, n_train: int = 50, epochs: int = 300) -> List[int]:
    """The paper's selection: the GCN (the reproduction's settings) trained on ``n_train`` random
    rows, then the others looked up in the order of its predictions."""
    from neural_predictor import model
    order = np.random.RandomState(seed).permutation(len(table))
    n_train = min(n_train, budget, len(table))
    seen, rest = order[:n_train], order[n_train:]
    if budget <= n_train or not len(rest):
        return [int(i) for i in seen]
    labels = table.labels[seen]
    norm = (float(labels.mean()), float(labels.std()) or 1.0)
    settings = model.Settings(epochs=epochs, seed=seed, batch_size=min(10, n_train))
    pred = model.regress(table.subset(seen), table.subset(rest), settings, norm)
    top = rest[np.argsort(-pred, kind='stable')[:budget - n_train]]
    return [int(i) for i in np.concatenate([seen, top])]


# --- the predictor-guided loop ------------------------------------------------------------------------

def rank_targets(labels: np.ndarray) -> np.ndarray:
    """Labels as their rank among themselves, in [-1, 1] (ties share a rank): what the loop trains
    on. A row that did not train (NAS-Bench-201's cells at 10 %) is then the lowest rank, not an
    error of 80 points that would dominate a squared loss."""
    order = np.argsort(np.argsort(labels, kind='stable'), kind='stable').astype(np.float64)
    _, inverse = np.unique(labels, return_inverse=True)
    mean_rank = np.bincount(inverse, order) / np.bincount(inverse)
    return (2.0 * mean_rank[inverse] / max(1, len(labels) - 1) - 1.0).astype(np.float32)


class Ensemble(torch.nn.Module):
    """``members`` two-layer MLPs trained at once as one batched network: each sees a bootstrap
    resample of the rows (a weight per row) from its own initialisation."""

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


def ensemble(x_train: torch.Tensor, y: np.ndarray, seed: int) -> Callable[[torch.Tensor], np.ndarray]:
    """An ensemble (``fit_ensemble``) trained on (x_train, y), as a function of candidates that
    returns its [members, candidates] predictions."""
    net = fit_ensemble(x_train, y, seed)

    def predict(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return net(x).double().numpy()
    return predict


def ensemble_scores(x_train: torch.Tensor, y: np.ndarray, x_cands: torch.Tensor, seed: int) -> np.ndarray:
    """[members, candidates] predictions of an ensemble trained on (x_train, y)."""
    return ensemble(x_train, y, seed)(x_cands)


def guided_search(table: dataset.Graphs, budget: int, seed: int, initial: int = 10, refit: int = 10,
                  explore: float = 1.5, neighbours: Optional[Neighbours] = None,
                  surrogate: Callable = ensemble) -> List[int]:
    """The rows looked up, in order, by the predictor-guided loop: a local search whose every step
    the predictor chooses. After ``initial`` random rows, an ensemble (``fit_ensemble``,
    retrained on the rank of every row looked up so far after each ``refit`` look-ups) orders the
    untried neighbours of the current row, and the best-predicted one is looked up; the search
    moves there if it is better. Where the current row has no untried neighbour left (a local
    optimum), it restarts from the untried row the ensemble rates highest by mean + ``explore``
    x spread, not from a random one.

    It cannot settle: every look-up either climbs or, at a local optimum, moves on, and no row is
    looked up twice, so a seed whose ensemble is wrong about a region (the stalled seeds of the
    earlier loop, which chose whole batches by the ensemble alone) spends at most that region's
    neighbourhoods there, as local search would. Each move is checked against a real label, so
    where two CPUs' floats differ in the last bits and two candidates swap places, the path
    changes but that property does not."""
    rng = np.random.RandomState(seed)
    neighbours = neighbours or Neighbours(table)
    x = torch.from_numpy(neighbours.bits)  # the rows' features, as Neighbours measures them
    budget = min(budget, len(table))
    looked = [int(i) for i in rng.permutation(len(table))[:min(initial, budget)]]
    seen = set(looked)
    current = best_of(table, looked) if looked else None
    mean = ucb = None
    fitted = -1
    while len(looked) < budget:
        if mean is None or len(looked) - fitted >= refit:
            idx = np.array(looked)
            predict = surrogate(x[idx], rank_targets(table.labels[idx]), seed * 1000 + len(looked))
            scores = np.concatenate([predict(x[i:i + 65536]) for i in range(0, len(table), 65536)], 1)
            mean, ucb = scores.mean(0), scores.mean(0) + explore * scores.std(0)
            fitted = len(looked)
        queue = np.array([int(j) for j in neighbours.of(current) if int(j) not in seen], np.int64)
        if len(queue):
            j = int(queue[int(np.argmax(mean[queue]))])
        else:  # a local optimum: restart where the ensemble hopes most
            masked = ucb.copy()
            masked[np.fromiter(seen, np.int64, len(seen))] = -np.inf
            j = int(np.argmax(masked))
        looked.append(j)
        seen.add(j)
        if not len(queue) or table.labels[j] > table.labels[current]:
            current = j
    return looked


# --- Gaussian-process Bayesian optimisation -------------------------------------------------------------

LENGTH_SCALES = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
NOISES = (1e-3, 1e-2, 1e-1, 0.3)


def fit_gp(distance: torch.Tensor, y: torch.Tensor):
    """The length scale and noise (from ``LENGTH_SCALES`` x ``NOISES``) of the kernel
    exp(-distance / length scale) + noise x identity under which ``y`` is likeliest, its scale
    profiled out (set to yT K^-1 y / n)."""
    n, best = len(y), None
    eye = torch.eye(n, dtype=y.dtype)
    for length in LENGTH_SCALES:
        base = torch.exp(-distance / length)
        for noise in NOISES:
            chol = torch.linalg.cholesky(base + noise * eye)
            white = torch.linalg.solve_triangular(chol, y[:, None], upper=False)[:, 0]
            scale = max(float(white @ white) / n, 1e-300)
            likelihood = -0.5 * n * np.log(scale) - float(torch.log(torch.diagonal(chol)).sum())
            if best is None or likelihood > best[0]:
                best = (likelihood, length, noise)
    return best[1], best[2]


def gp_search(table: dataset.Graphs, budget: int, seed: int, initial: int = 10, refit: int = 10,
              neighbours: Optional[Neighbours] = None) -> List[int]:
    """Bayesian optimisation with a Gaussian process over the whole table. After ``initial``
    random rows, a GP with the kernel exp(-d / length scale) on the Hamming distance d of the
    rows' encodings (``Neighbours``'), fitted to the rank of every row looked up so far (length
    scale and noise re-chosen by marginal likelihood every ``refit`` look-ups), gives each
    untried row a posterior mean and spread; each untried row then draws a value from its own
    posterior (mean + spread x a standard normal draw, independently for each row: the marginals
    of a Thompson sample, not a joint one), and the row with the highest draw is looked up.

    There are no steps and no restarts: every untried row of the table stays a candidate at every
    look-up, with a chance that grows with its spread. Between refits the posterior is updated by
    one row at a time (its Cholesky factor grown by a row), so a look-up costs a pass over the
    table, not a refactorisation. In float64 throughout."""
    rng = np.random.RandomState(seed)
    neighbours = neighbours or Neighbours(table)
    n_rows = len(table)
    budget = min(budget, n_rows)
    looked = [int(i) for i in rng.permutation(n_rows)[:min(initial, budget)]]
    seen = np.zeros(n_rows, bool)
    seen[looked] = True

    def distance(rows, cols=None) -> torch.Tensor:
        return torch.from_numpy(neighbours.distances(rows, cols).astype(np.float64))

    hyper, fitted = None, -1
    chol = proj = None  # chol: the factor of K(looked) + noise; proj: chol^-1 K(looked, every row)
    while len(looked) < budget:
        y = torch.from_numpy(rank_targets(table.labels[np.array(looked)]).astype(np.float64))
        offset = float(y.mean())
        y = y - offset
        if hyper is None or len(looked) - fitted >= refit:
            new = fit_gp(distance(looked, looked), y)
            if new != hyper:
                chol = proj = None
            hyper, fitted = new, len(looked)
        length, noise = hyper
        if chol is None:
            k_all = torch.exp(-distance(looked) / length)
            chol = torch.linalg.cholesky(k_all[:, looked] + noise * torch.eye(len(looked), dtype=torch.float64))
            proj = torch.linalg.solve_triangular(chol, k_all, upper=False)
        elif len(chol) < len(looked):  # the newest look-up: one more row of the factor
            j = looked[-1]
            lead = proj[:, j]
            last = max(1.0 + noise - float(lead @ lead), 1e-12) ** 0.5
            row = torch.cat([lead, torch.tensor([last], dtype=torch.float64)])
            chol = torch.cat([torch.cat([chol, torch.zeros(len(chol), 1, dtype=torch.float64)], 1), row[None]])
            k_new = torch.exp(-distance([j]) / length)
            proj = torch.cat([proj, (k_new - lead[None] @ proj) / last])
        white = torch.linalg.solve_triangular(chol, y[:, None], upper=False)[:, 0]
        scale = float(white @ white) / len(y)
        mean = (white @ proj).numpy() + offset
        spread = np.sqrt(np.maximum(1.0 - (proj * proj).sum(0).numpy(), 1e-12) * scale)
        draw = mean + spread * rng.standard_normal(n_rows)
        draw[seen] = -np.inf
        j = int(np.argmax(draw))
        looked.append(j)
        seen[j] = True
    return looked


STRATEGIES = {'random': random_search, 'evolution': evolution, 'local': local_search,
              'one_shot': one_shot, 'predictor': guided_search, 'gp': gp_search}


def run(method: str, table: dataset.Graphs, budget: int, seed: int,
        neighbours: Optional[Neighbours] = None) -> List[int]:
    """``method``'s look-ups; ``neighbours`` (the table's) can be shared by many runs."""
    if method not in STRATEGIES:
        raise ValueError(f'unknown method {method!r}; one of {sorted(STRATEGIES)}')
    strategy = STRATEGIES[method]
    if 'neighbours' in inspect.signature(strategy).parameters:
        return strategy(table, budget, seed, neighbours=neighbours)
    return strategy(table, budget, seed)
