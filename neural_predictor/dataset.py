"""Architectures as the predictor's graphs, from the three tables it learns from.

- NAS-Bench-101 in the reproduction's HDF5 layout (``read_nb101``): ``hash``, ``num_vertices``
  int8 [N], ``trainable_parameters`` int32 [N], ``adjacency`` int8 [N, 7, 7], ``operations`` int8
  [N, 7] (input -1, output -2, conv3x3 0, conv1x1 1, maxpool3x3 2, padding 0) and ``metrics``
  float32 [N, 4, 3, 2, 4]: epochs 4/12/36/108, seeds 0-2, halfway/final, then training time and
  train/val/test accuracy. The label is the 108-epoch final val accuracy of seed 0; a run that
  blew up (below 0.2) falls back to the next seed, then to the mean.
- NAS-Bench-201 CIFAR-10 accuracies as the ``analog-nasbench`` package ships them
  (``read_nb201``), read with a restricted unpickler.
- This project's genotypes (``encode_genotype``) and JSON tables of ``(genotype, accuracy)``
  rows (``read_genotype_table``).
- Any space's table as JSON lines (``read_jsonl_table``): one architecture a line, its nodes
  (ops on the nodes, NAS-Bench-101's convention), its edges and its metrics.

Every source becomes a ``Graphs``: one-hot node types, adjacency, node counts and labels.
"""
import dataclasses
import io
import json
import math
import os
import pickle
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

MEAN, STD = 0.908192, 0.023961  # the reproduction's NAS-Bench-101 label normalisation
BLOWN = 0.2  # an accuracy below this is a training run that diverged
NB101_OPS = {-1: 'input', -2: 'output', 0: 'conv3x3-bn-relu', 1: 'conv1x1-bn-relu', 2: 'maxpool3x3'}
NB101_KEYS = {'hash': None, 'num_vertices': (1,), 'trainable_parameters': (1,), 'adjacency': (3, 7, 7),
              'operations': (2, 7), 'metrics': (5, 4, 3, 2, 4)}
NB201_OPS = ['none', 'skip_connect', 'nor_conv_1x1', 'nor_conv_3x3', 'avg_pool_3x3']
NB201_EDGES = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]  # (from, to) of the 6 cell edges


class DataError(RuntimeError):
    """A table that does not have the layout; the message names the file, the key and the fix."""


@dataclasses.dataclass
class Graphs:
    """A table of cells: ``ops`` float32 [N, V, F], ``adjacency`` float32 [N, V, V] (i -> j),
    ``num_vertices`` int64 [N] and ``labels`` float32 [N] (accuracy, a fraction)."""
    ops: np.ndarray
    adjacency: np.ndarray
    num_vertices: np.ndarray
    labels: np.ndarray
    names: Optional[List[str]] = None
    metrics: Optional[Dict[str, np.ndarray]] = None  # every metric of a JSONL table, NaN where a row lacks it

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> 'Graphs':
        index = np.asarray(index, dtype=np.int64)
        return Graphs(self.ops[index], self.adjacency[index], self.num_vertices[index], self.labels[index],
                      None if self.names is None else [self.names[i] for i in index],
                      None if self.metrics is None else {k: v[index] for k, v in self.metrics.items()})

    def tensors(self, device='cpu'):
        return (torch.from_numpy(self.ops).to(device), torch.from_numpy(self.adjacency).to(device),
                torch.from_numpy(self.num_vertices).to(device))


def normalize(acc):
    return (acc - MEAN) / STD


def denormalize(value):
    return value * STD + MEAN


# --- NAS-Bench-101 ------------------------------------------------------------------------------

def read_nb101_arrays(path: str) -> Dict[str, np.ndarray]:
    """Every key of the HDF5 file, checked for presence, rank and the fixed dimensions."""
    import h5py
    if not os.path.isfile(path):
        raise DataError(f'{path}: no such file; build it with tools/nasbench_tfrecord_converter.py '
                        f'from nasbench_full.tfrecord (see the README)')
    try:
        f = h5py.File(path, 'r')
    except OSError as e:
        raise DataError(f'{path}: not an HDF5 file ({e})') from None
    with f:
        out = {}
        for key, shape in NB101_KEYS.items():
            if key not in f:
                raise DataError(f'{path}: key {key!r} is missing; the file needs {sorted(NB101_KEYS)} '
                                f'(the neuralpredictor.pytorch layout)')
            value = f[key][()]
            if shape is not None and (value.ndim != shape[0] or tuple(value.shape[1:]) != shape[1:]):
                want = '[N' + ''.join(f', {d}' for d in shape[1:]) + ']'
                raise DataError(f'{path}: {key} has shape {list(value.shape)}, not {want}')
            out[key] = value
    n = len(out['hash'])
    for key, value in out.items():
        if len(value) != n:
            raise DataError(f'{path}: {key} has {len(value)} rows but hash has {n}')
    return out


def nb101_labels(metrics: np.ndarray, column: int = 2) -> np.ndarray:
    """The 108-epoch final accuracy (column 2: val, 3: test) of seed 0; where that run blew up
    (below 0.2), the first seed that did not; where all did, the normalisation mean."""
    runs = metrics[:, -1, :, -1, column].astype(np.float64)  # [N, 3 seeds]
    labels = np.full(len(runs), MEAN)
    for seed in range(runs.shape[1] - 1, -1, -1):  # seed 0 last: it wins where it is good
        good = runs[:, seed] >= BLOWN
        labels[good] = runs[good, seed]
    return labels.astype(np.float32)


def nb101_graphs(arrays: Dict[str, np.ndarray]) -> Graphs:
    ops = arrays['operations'].astype(np.int64)
    n = arrays['num_vertices'].astype(np.int64)
    # one-hot as the reproduction orders it: output, input, conv3x3, conv1x1, maxpool
    onehot = (ops[..., None] + 2 == np.arange(5)).astype(np.float32)
    onehot[np.arange(ops.shape[1])[None, :] >= n[:, None]] = 0.0
    return Graphs(onehot, arrays['adjacency'].astype(np.float32), n, nb101_labels(arrays['metrics']))


def read_nb101(path: str) -> Graphs:
    return nb101_graphs(read_nb101_arrays(path))


def read_splits(path: str, n_rows: int, data: str = 'the --data file') -> Dict[str, np.ndarray]:
    """The split tool's .npz, each index checked against the table's rows."""
    if not os.path.isfile(path):
        raise DataError(f'{path}: no such file; write it with tools/split_train_val.py')
    try:
        with np.load(path, allow_pickle=False) as f:
            splits = {k: f[k].astype(np.int64) for k in f.files}
    except (OSError, ValueError) as e:
        raise DataError(f'{path}: not a splits .npz ({e})') from None
    for name, index in splits.items():
        if index.ndim != 1:
            raise DataError(f'{path}: split {name!r} is not a 1-d index array')
        bad = index[(index < 0) | (index >= n_rows)]
        if len(bad):
            raise DataError(f'{path}: split {name!r} holds index {int(bad[0])}, out of range for a '
                            f'table of {n_rows} rows ({data}); make the splits from that file')
    return splits


def make_splits(metrics: np.ndarray, seed: int = 0) -> Dict[str, np.ndarray]:
    """The reproduction's splits: random samples of 172, 334 and 860 rows (one permutation each,
    drawn in turn from one RandomState(seed)), those of them whose seed-0 val accuracy is above
    0.91 (91-172, ...), all such rows (denoise-91), all rows above 0.8 (denoise-80)."""
    total = len(metrics)
    rng = np.random.RandomState(seed)
    seed0_val = metrics[:, -1, 0, -1, 2]
    valid91 = np.where(seed0_val > 0.91)[0]
    splits = {}
    for n in (172, 334, 860):
        splits[str(n)] = rng.permutation(total)[:n]
    for n in (172, 334, 860):
        splits[f'91-{n}'] = np.intersect1d(splits[str(n)], valid91)
    splits['denoise-91'] = valid91
    splits['denoise-80'] = np.where(seed0_val > 0.8)[0]
    return splits


def select(splits: Dict[str, np.ndarray], name: str, n_rows: int, flag: str) -> np.ndarray:
    if name == 'all':
        return np.arange(n_rows)
    if name not in splits:
        raise DataError(f'{flag} {name}: no such split; the file has {sorted(splits)} (and "all")')
    return splits[name]


# --- NAS-Bench-201 (analog-nasbench) ----------------------------------------------------------

class _Record:
    """Stands in for analog-nasbench's Architecture and DriftMeasurement: their attributes, no code."""

    def __setstate__(self, state):
        if isinstance(state, tuple):  # (dict, slots)
            state = state[0] or {}
        self.__dict__.update(state)


class _TableUnpickler(pickle.Unpickler):
    """Builds dicts, tuples, numbers and the two record classes of analog-nasbench (as plain
    attribute holders); every other global is refused, so a crafted file cannot run code."""

    RECORDS = {('analognasbench.data', 'Architecture'), ('analognasbench.data', 'DriftMeasurement')}
    SAFE = {('builtins', 'object'), ('copyreg', '_reconstructor'), ('copy_reg', '_reconstructor')}

    def find_class(self, module, name):
        if (module, name) in self.RECORDS:
            return _Record
        if (module, name) in self.SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'global {module}.{name} is not allowed')


def nb201_data_file() -> str:
    """data.anb of the installed analog-nasbench package, found without importing it."""
    import importlib.util
    spec = importlib.util.find_spec('analognasbench')
    if spec is None or not spec.submodule_search_locations:
        raise DataError('the analog-nasbench package is not installed: pip install analog-nasbench')
    return os.path.join(list(spec.submodule_search_locations)[0], 'data.anb')


def nb201_records(path: Optional[str] = None) -> dict:
    """analog-nasbench's table as it is stored: NB-201 cell (6 op indices) -> a record with its
    accuracies as attributes (``baseline_accuracy``, ``analog_accuracy``, ...; percent)."""
    path = path or nb201_data_file()
    try:
        with open(path, 'rb') as f:
            table = _TableUnpickler(io.BytesIO(f.read())).load()
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, TypeError) as e:
        raise DataError(f'{path}: cannot read the analog-nasbench table ({e})') from None
    if not isinstance(table, dict) or not table:
        raise DataError(f'{path}: not a table of architectures')
    for arch in table:
        if not (isinstance(arch, tuple) and len(arch) == 6 and all(isinstance(a, int) and 0 <= a < 5 for a in arch)):
            raise DataError(f'{path}: key {arch!r} is not an NB-201 cell (6 op indices 0-4)')
    return table


def read_nb201(path: Optional[str] = None, metric: str = 'baseline_accuracy') -> Graphs:
    """Every NAS-Bench-201 cell of analog-nasbench with its CIFAR-10 accuracy (percent in the
    file, a fraction here), encoded by ``encode_nb201``."""
    archs, accs = [], []
    for arch, record in nb201_records(path).items():
        value = getattr(record, metric, None)
        if value is None or not np.isfinite(float(value)):
            continue
        archs.append(arch)
        accs.append(float(value) / 100.0)
    graphs = [encode_nb201(a) for a in archs]
    return stack(graphs, np.array(accs, dtype=np.float32), names=[str(a) for a in archs])


def encode_nb201(arch: Sequence[int]):
    """(ops one-hot [8, 7], adjacency [8, 8]) of an NB-201 cell with its ops as nodes: input,
    one node per edge (its op), output. Edge k runs from cell node a to b (NB201_EDGES); its op
    node reads the op nodes of the edges into a (or the input) and feeds those out of b (or the
    output). Node types: input, output, then the five ops."""
    names = ['input', 'output'] + NB201_OPS
    v = 2 + len(NB201_EDGES)
    ops = np.zeros((v, len(names)), np.float32)
    ops[0, 0] = 1.0
    ops[v - 1, 1] = 1.0
    adj = np.zeros((v, v), np.float32)
    for k, (a, b) in enumerate(NB201_EDGES):
        ops[1 + k, 2 + int(arch[k])] = 1.0
        if a == 0:
            adj[0, 1 + k] = 1.0
        for m, (_, b2) in enumerate(NB201_EDGES):
            if b2 == a:
                adj[1 + m, 1 + k] = 1.0
        if b == 3:
            adj[1 + k, v - 1] = 1.0
    return ops, adj


# --- this project's genotypes ---------------------------------------------------------------------

GENOTYPE_OPS = ['max_pool_3x3', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3', 'sep_conv_5x5',
                'sep_conv_7x7', 'dil_conv_3x3', 'dil_conv_5x5', 'conv_7x1_1x7', 'none']


def _cell_graph(ops_list, concat, offset_types: int):
    """Nodes: two inputs, one per op, one add node per combination, one output. Types
    (one-hot): input, output, add, then GENOTYPE_OPS."""
    steps = len(ops_list) // 2
    v = 2 + 3 * steps + 1  # in order: the inputs, then (op, op, add) per combination, the output
    types = np.zeros(v, np.int64)
    adj = np.zeros((v, v), np.float32)
    out = v - 1
    types[out] = 1
    add_node = lambda i: 2 + 3 * i + 2  # noqa: E731
    state_node = lambda s: s if s < 2 else add_node(s - 2)  # noqa: E731
    for j, (name, index) in enumerate(ops_list):
        if name not in GENOTYPE_OPS:
            raise ValueError(f'op {name!r} is not one of {GENOTYPE_OPS}')
        node = 2 + 3 * (j // 2) + j % 2
        types[node] = offset_types + GENOTYPE_OPS.index(name)
        adj[state_node(index), node] = 1.0
        adj[node, add_node(j // 2)] = 1.0
    for i in range(steps):
        types[add_node(i)] = 2
    for c in concat:
        adj[state_node(c), out] = 1.0
    return types, adj


def encode_genotype(genotype):
    """(ops one-hot [V, F], adjacency [V, V]) of a genotype (``genotypes.Genotype`` or anything
    with ``normal``, ``normal_concat``, ``reduce``, ``reduce_concat``): the normal and the
    reduction cell side by side, ops as nodes (NASLib's DARTS encoding), each cell with its two
    inputs, an add node per combination and an output; the normal cell's output feeds the
    reduction cell's inputs. Node types: input, output, add, then the ops, normal and reduction
    cell alike. V is 2 * (2 + 3B + 1) for B combinations a cell."""
    f = 3 + len(GENOTYPE_OPS)
    t1, a1 = _cell_graph(list(genotype.normal), list(genotype.normal_concat), 3)
    t2, a2 = _cell_graph(list(genotype.reduce), list(genotype.reduce_concat), 3)
    v1, v2 = len(t1), len(t2)
    adj = np.zeros((v1 + v2, v1 + v2), np.float32)
    adj[:v1, :v1] = a1
    adj[v1:, v1:] = a2
    adj[v1 - 1, v1] = adj[v1 - 1, v1 + 1] = 1.0  # normal output -> reduction inputs
    ops = np.zeros((v1 + v2, f), np.float32)
    ops[np.arange(v1 + v2), np.concatenate([t1, t2])] = 1.0
    return ops, adj


def stack(graphs, labels: np.ndarray, names=None) -> Graphs:
    """A Graphs of (ops, adjacency) pairs, padded to the largest."""
    v = max(a.shape[0] for _, a in graphs)
    f = graphs[0][0].shape[1]
    ops = np.zeros((len(graphs), v, f), np.float32)
    adj = np.zeros((len(graphs), v, v), np.float32)
    n = np.zeros(len(graphs), np.int64)
    for i, (o, a) in enumerate(graphs):
        k = a.shape[0]
        ops[i, :k], adj[i, :k, :k], n[i] = o, a, k
    return Graphs(ops, adj, n, np.asarray(labels, np.float32), names)


def is_genotype_table(path: str) -> bool:
    """A JSON list (this project's genotype rows) rather than JSON lines."""
    try:
        with open(path, 'rb') as f:
            head = f.read(4096).lstrip()
    except OSError as e:
        raise DataError(f'{path}: cannot read the table ({e.strerror})') from None
    return head.startswith(b'[')


def read_genotype_table(path: str, load_genotype) -> Graphs:
    """A JSON list of ``{"genotype": NAME or genotypes.to_dict output, "accuracy": x}`` rows (a
    fraction, or a percentage when above 1), as a user collects them from train.py runs."""
    try:
        with open(path) as f:
            rows = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f'{path}: cannot read the table ({e})') from None
    if not isinstance(rows, list) or not rows:
        raise DataError(f'{path}: a non-empty JSON list of {{"genotype", "accuracy"}} rows is needed')
    graphs, labels, names = [], [], []
    for k, row in enumerate(rows):
        if not isinstance(row, dict) or 'genotype' not in row:
            raise DataError(f'{path}: row {k} has no "genotype"')
        try:
            g = load_genotype(row['genotype'])
            graphs.append(encode_genotype(g))
        except (ValueError, TypeError, KeyError) as e:
            raise DataError(f'{path}: row {k}: {e}') from None
        acc = float(row.get('accuracy', 'nan'))
        labels.append(acc / 100.0 if acc > 1.0 else acc)
        names.append(row['genotype'] if isinstance(row['genotype'], str) else f'row {k}')
    return stack(graphs, np.array(labels, np.float32), names)


# --- any space: JSON lines --------------------------------------------------------------------------

JSONL_EXAMPLE = ('{"id": "a17", "nodes": ["input", "conv3x3", "maxpool3x3", "output"], '
                 '"edges": [[0, 1], [1, 2], [0, 2], [2, 3]], "metrics": {"valid": 91.2, "test": 90.8}}')


def _parse_row(text: str, where: str) -> dict:
    """One JSONL row, checked: nodes (at least an input and an output), edges [from, to] with
    from < to inside the node list, each once, metrics numbers or null, id optional."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f'{where}: not JSON ({e.msg}); one object a line, like {JSONL_EXAMPLE}') from None
    if not isinstance(row, dict):
        raise DataError(f'{where}: a JSON object is needed, like {JSONL_EXAMPLE}')
    nodes, edges, metrics = row.get('nodes'), row.get('edges'), row.get('metrics')
    if not isinstance(nodes, list) or len(nodes) < 2 or not all(isinstance(n, str) and n for n in nodes):
        raise DataError(f'{where}: "nodes" must be a list of at least 2 op names (input first, output last)')
    if not isinstance(edges, list):
        raise DataError(f'{where}: "edges" must be a list of [from, to] pairs')
    pairs = set()
    for e in edges:
        if (not isinstance(e, list) or len(e) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in e)):
            raise DataError(f'{where}: edge {json.dumps(e)} is not a [from, to] pair of node numbers')
        a, b = e
        if not 0 <= a < b < len(nodes):
            raise DataError(f'{where}: edge {json.dumps(e)} must run from a lower to a higher node number, '
                            f'both below {len(nodes)} (the row has {len(nodes)} nodes)')
        if (a, b) in pairs:
            raise DataError(f'{where}: edge {json.dumps(e)} appears twice')
        pairs.add((a, b))
    if not isinstance(metrics, dict):
        raise DataError(f'{where}: "metrics" must be an object of numbers, like {{"valid": 91.2}}')
    values = {}
    for name, v in metrics.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise DataError(f'{where}: metric {name!r} is {json.dumps(v)}, not a finite number (or null)')
        values[name] = float(v)
    ident = row.get('id')
    if ident is not None and not isinstance(ident, (str, int)):
        raise DataError(f'{where}: "id" must be a string or a number')
    return {'nodes': nodes, 'edges': sorted(pairs), 'metrics': values, 'id': ident}


def parse_limit(text: str) -> Tuple[str, float]:
    """``NAME=VALUE`` of ``--max``."""
    name, sep, value = text.partition('=')
    try:
        if not sep or not name:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise DataError(f'--max {text}: give NAME=VALUE, for example --max params_m=1.5') from None


def read_jsonl_table(path: str, metric: Optional[str] = None,
                     limits: Sequence[Tuple[str, float]] = ()) -> Tuple[Graphs, str]:
    """A table of any space, one architecture a line (``JSONL_EXAMPLE``): ``nodes[0]`` the input,
    ``nodes[-1]`` the output, ops on the nodes; ``edges`` [from, to]; node counts may differ
    between rows. The labels are ``metric`` (default: the first metric of the first row), in the
    table's own units, higher is better; rows that lack it are left out, and so are rows over a
    ``limits`` bound (NAME, VALUE) or lacking that metric. Every metric stays in ``.metrics``.
    Returns the table and the metric's name."""
    rows = []
    try:
        with open(path, encoding='utf-8') as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    rows.append((number, _parse_row(line, f'{path}, line {number}')))
    except OSError as e:
        raise DataError(f'{path}: cannot read the table ({e.strerror})') from None
    except UnicodeDecodeError:
        raise DataError(f'{path}: not UTF-8 text; a table is JSON lines like {JSONL_EXAMPLE}') from None
    if not rows:
        raise DataError(f'{path}: no rows; one JSON object a line, like {JSONL_EXAMPLE}')
    names = list(dict.fromkeys(k for _, r in rows for k in r['metrics']))
    if metric is None:
        first = rows[0][1]['metrics']
        if not first:
            raise DataError(f'{path}, line {rows[0][0]}: the first row has no metric; give --metric NAME')
        metric = next(iter(first))
    for name in [metric] + [n for n, _ in limits]:
        if name not in names:
            raise DataError(f'{path}: no row has the metric {name!r}; the table has {names}')
    keep = [(n, r) for n, r in rows if metric in r['metrics']
            and all(lim in r['metrics'] and r['metrics'][lim] <= v for lim, v in limits)]
    if not keep:
        raise DataError(f'{path}: no row has {metric!r} within the --max bounds {dict(limits)}')
    vocab = sorted({op for _, r in keep for op in r['nodes']})
    vocab = [v for v in ('input', 'output') if v in vocab] + [v for v in vocab if v not in ('input', 'output')]
    column = {op: k for k, op in enumerate(vocab)}
    graphs = []
    for _, r in keep:
        v = len(r['nodes'])
        ops = np.zeros((v, len(vocab)), np.float32)
        ops[np.arange(v), [column[op] for op in r['nodes']]] = 1.0
        adj = np.zeros((v, v), np.float32)
        for a, b in r['edges']:
            adj[a, b] = 1.0
        graphs.append((ops, adj))
    table = stack(graphs, np.array([r['metrics'][metric] for _, r in keep], np.float32),
                  names=[str(r['id']) if r['id'] is not None else f'line {n}' for n, r in keep])
    table.metrics = {name: np.array([r['metrics'].get(name, np.nan) for _, r in keep], np.float64)
                     for name in names}
    return table, metric


def write_jsonl_rows(rows, path: str) -> None:
    """Rows (dicts of the JSONL format) as a table file, written atomically."""
    from neural_predictor.common import write_atomic
    text = ''.join(json.dumps(r, separators=(', ', ': ')) + '\n' for r in rows)
    write_atomic(path, lambda f: f.write(text.encode()))


def read_table(path: str, metric: Optional[str], limits: Sequence[Tuple[str, float]], load_genotype,
               report: Optional[str] = None) -> Tuple[Graphs, str]:
    """A table as ``--table`` takes it: this project's genotype rows (``is_genotype_table``, read
    with ``load_genotype``, genotypes.get) or JSON lines of any space (``read_jsonl_table``).
    ``report``, a second metric to report, must be in the table. A genotype table has one metric,
    accuracy, so any other ``metric``, a ``report`` or ``limits`` on one is an error."""
    if is_genotype_table(path):
        if limits or report or metric not in (None, 'accuracy'):
            raise DataError(f'{path}: a genotype table has one metric, accuracy; other metrics, '
                            f'--report and --max need a JSONL table')
        return read_genotype_table(path, load_genotype), 'accuracy'
    table, metric = read_jsonl_table(path, metric, limits)
    if report is not None and report not in table.metrics:
        raise DataError(f'--report {report}: no row has it; the table has {sorted(table.metrics)}')
    return table, metric
