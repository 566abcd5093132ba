"""neural_predictor/: the HDF5 reader and split tool, the tfrecord converter on records in the
official encoding, labels, the GCN by hand, padding, learning, genotype graphs, the NB-201 table's
restricted reading and every refused input."""
import base64
import contextlib
import io
import json
import os
import pickle
import struct
import sys
import types

import h5py
import numpy as np
import pytest
import torch

import genotypes
from conftest import assert_every_payload_refused
from neural_predictor import dataset
from neural_predictor import train as np_train
from neural_predictor.model import MLPPredictor, NeuralPredictor
from neural_predictor.tools import nasbench_tfrecord_converter as converter
from neural_predictor.tools import split_train_val

OPS5 = np.array([-1, 0, 1, 2, -2], np.int8)


def random_cell(rng):
    """A 5-to-7-vertex NB-101 cell: upper-triangular, input to output connected."""
    n = int(rng.integers(5, 8))
    adj = np.triu(rng.integers(0, 2, (n, n)), 1).astype(np.int8)
    adj[np.arange(n - 1), np.arange(1, n)] = 1  # a chain keeps every vertex connected
    ops = np.concatenate([[-1], rng.integers(0, 3, n - 2), [-2]]).astype(np.int8)
    return n, adj, ops


def write_hdf5(path, n=300, seed=0, label=None):
    """A small NAS-Bench-101 file in the reproduction's layout; the val accuracy is a function of
    the ops unless ``label`` is given."""
    rng = np.random.default_rng(seed)
    out = {'hash': np.array([f'{i:032x}'.encode() for i in range(n)], dtype='S32'),
           'num_vertices': np.zeros(n, np.int8), 'trainable_parameters': rng.integers(1e5, 1e7, n).astype(np.int32),
           'adjacency': np.zeros((n, 7, 7), np.int8), 'operations': np.zeros((n, 7), np.int8),
           'metrics': np.zeros((n, 4, 3, 2, 4), np.float32)}
    for i in range(n):
        v, adj, ops = random_cell(rng)
        out['num_vertices'][i] = v
        out['adjacency'][i, :v, :v] = adj
        out['operations'][i, :v] = ops
        acc = 0.85 + 0.02 * np.sum(ops == 0) - 0.01 * np.sum(ops == 2) + rng.normal(0, 0.002)
        out['metrics'][i, :, :, :, 2] = acc if label is None else label
        out['metrics'][i, :, :, :, 3] = acc - 0.005
    with h5py.File(path, 'w') as f:
        for k, v in out.items():
            f.create_dataset(k, data=v)
    return out


def run_main(fn, argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = fn([str(a) for a in argv])
    return status, err.getvalue()


@pytest.mark.quick
def test_hdf5_reader_and_split_tool_follow_the_reproduction(tmp_path):
    arrays = write_hdf5(tmp_path / 'nb.hdf5', n=300)
    status, err = run_main(split_train_val.main, ['--data', tmp_path / 'nb.hdf5', '--output', tmp_path / 's.npz'])
    assert status == 0, err
    splits = dict(np.load(tmp_path / 's.npz'))
    rng = np.random.RandomState(0)
    for n in (172, 334, 860):  # one permutation each, in turn, over the file's 300 rows
        assert np.array_equal(splits[str(n)], rng.permutation(300)[:n])
    val0 = arrays['metrics'][:, -1, 0, -1, 2]
    assert np.array_equal(splits['denoise-91'], np.where(val0 > 0.91)[0])
    assert np.array_equal(splits['denoise-80'], np.where(val0 > 0.8)[0])
    assert np.array_equal(splits['91-172'], np.intersect1d(splits['172'], np.where(val0 > 0.91)[0]))
    g = dataset.read_nb101(str(tmp_path / 'nb.hdf5'))
    assert g.ops.shape == (300, 7, 5) and g.adjacency.shape == (300, 7, 7)
    i = int(np.argmin(arrays['num_vertices']))
    v = arrays['num_vertices'][i]
    assert g.ops[i, v:].sum() == 0 and g.ops[i, :v].sum() == v  # padding rows are zero
    assert g.ops[i, 0].argmax() == 1 and g.ops[i, v - 1].argmax() == 0  # input, output
    np.testing.assert_allclose(g.labels, val0)


def test_labels_fall_back_on_blown_runs():
    m = np.zeros((3, 4, 3, 2, 4), np.float32)
    m[0, -1, :, -1, 2] = [0.93, 0.94, 0.95]
    m[1, -1, :, -1, 2] = [0.1, 0.92, 0.95]  # seed 0 blew up: seed 1
    m[2, -1, :, -1, 2] = [0.1, 0.05, 0.15]  # all did: the mean
    np.testing.assert_allclose(dataset.nb101_labels(m), [0.93, 0.92, dataset.MEAN], rtol=1e-6)
    m[1, -1, :, -1, 2] = [0.1, 0.1, 0.95]
    np.testing.assert_allclose(dataset.nb101_labels(m)[1], 0.95)


def _pb_double(field, value):
    return bytes([field << 3 | 1]) + struct.pack('<d', value)


def _pb_bytes(field, payload):
    n, length = len(payload), b''
    while True:
        length += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            break
    return bytes([field << 3 | 2]) + length + payload


def _pb_varint(field, value):
    out = bytes([field << 3 | 0])
    while True:
        out += bytes([(value & 0x7F) | (0x80 if value > 0x7F else 0)])
        value >>= 7
        if not value:
            return out


def official_record(h, epochs, adj, ops, params, evals):
    """One record as nasbench_full.tfrecord holds it: JSON with a base64 ModelMetrics protobuf."""
    metrics = b''.join(_pb_bytes(1, b''.join(_pb_double(k + 1, v) for k, v in enumerate(e)) + _pb_bytes(6, b'/ckpt'))
                       for e in evals) + _pb_varint(2, params) + _pb_double(3, 1234.5)
    names = {-1: 'input', -2: 'output', 0: 'conv3x3-bn-relu', 1: 'conv1x1-bn-relu', 2: 'maxpool3x3'}
    return json.dumps([h, epochs, ''.join(str(int(x)) for x in adj.flatten()), ','.join(names[o] for o in ops),
                       base64.b64encode(metrics).decode()]).encode()


@pytest.mark.quick
def test_tfrecord_converter_reads_the_official_encoding(tmp_path, tf):
    rng = np.random.default_rng(3)
    cells = [random_cell(rng) for _ in range(2)]
    path = str(tmp_path / 'nasbench_full.tfrecord')
    expect = np.zeros((2, 4, 3, 2, 4), np.float32)
    with tf.io.TFRecordWriter(path) as w:
        for b, epochs in enumerate([4, 12, 36, 108]):
            for run in range(3):
                for c, (n, adj, ops) in enumerate(cells):
                    evals = [(0.0, 0.0, 0.1, 0.1, 0.1)]
                    for slot in range(2):
                        e = (epochs * (slot + 1) / 2, 10.0 * b + run + slot, 0.5 + 0.01 * run,
                             0.6 + 0.01 * b + 0.001 * c, 0.7 + 0.001 * slot)
                        evals.append(e)
                        expect[c, b, run, slot] = e[1:]
                    w.write(official_record(f'hash{c}', epochs, adj, ops, 1000 + c, evals))
    out = tmp_path / 'nb.hdf5'
    status, err = run_main(converter.main, ['--input', path, '--output', out])
    assert status == 0, err
    arrays = dataset.read_nb101_arrays(str(out))
    assert arrays['hash'].tolist() == [b'hash0', b'hash1']
    assert arrays['trainable_parameters'].tolist() == [1000, 1001]
    for c, (n, adj, ops) in enumerate(cells):
        assert arrays['num_vertices'][c] == n
        assert np.array_equal(arrays['adjacency'][c, :n, :n], adj) and arrays['adjacency'][c, n:].sum() == 0
        assert np.array_equal(arrays['operations'][c, :n], ops)
    np.testing.assert_allclose(arrays['metrics'], expect, rtol=1e-6)
    # a broken record: one line, nothing written
    with tf.io.TFRecordWriter(str(tmp_path / 'bad.tfrecord')) as w:
        w.write(b'["h", 108, "011", "input", ""]')
    status, err = run_main(converter.main, ['--input', tmp_path / 'bad.tfrecord', '--output', tmp_path / 'bad.hdf5'])
    assert status == 1 and len(err.strip().splitlines()) == 1 and 'record 0' in err
    assert not (tmp_path / 'bad.hdf5').exists()


@pytest.mark.quick
def test_gcn_forward_equals_a_hand_computed_three_node_graph():
    torch.manual_seed(0)
    net = NeuralPredictor(in_features=2, hidden=3, layers=1, fc_hidden=2).eval()
    w1 = np.array([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0]], np.float32)
    w2 = np.array([[-0.5, 1.0, 1.0], [1.0, 0.0, 0.5]], np.float32)
    fc1 = np.array([[1.0, 0.5, -1.0], [0.0, 1.0, 1.0]], np.float32)
    fc2 = np.array([[2.0, -1.0]], np.float32)
    with torch.no_grad():
        net.gcn[0].weight_fwd.copy_(torch.from_numpy(w1))
        net.gcn[0].weight_bwd.copy_(torch.from_numpy(w2))
        net.fc1.weight.copy_(torch.from_numpy(fc1))
        net.fc2.weight.copy_(torch.from_numpy(fc2))
    x = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    a = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0]], np.float32)  # 0 -> 1, 0 -> 2, 1 -> 2
    ai = a + np.eye(3)
    norm = ai / ai.sum(1, keepdims=True)  # A + I row-normalised
    fwd = np.maximum(norm @ x @ w1, 0)
    back = norm.T / norm.T.sum(1, keepdims=True)  # the reproduction: that matrix transposed, rows normalised
    bwd = np.maximum(back @ x @ w2, 0)
    h = (fwd + bwd) / 2
    expect = (fc2 @ (fc1 @ h.mean(0)))[0]
    with torch.no_grad():
        out = net(torch.from_numpy(x)[None], torch.from_numpy(a)[None], torch.tensor([3]))
    assert float(out) == pytest.approx(float(expect), rel=1e-6)


def test_a_cell_padded_to_seven_nodes_predicts_the_same():
    torch.manual_seed(1)
    net = NeuralPredictor().eval()
    rng = np.random.default_rng(0)
    x = np.eye(5, dtype=np.float32)[[1, 2, 3, 4, 0]]
    a = np.triu(rng.integers(0, 2, (5, 5)), 1).astype(np.float32)
    xp, ap = np.zeros((7, 5), np.float32), np.zeros((7, 7), np.float32)
    xp[:5], ap[:5, :5] = x, a
    small = net(torch.from_numpy(x)[None], torch.from_numpy(a)[None], torch.tensor([5]))
    padded = net(torch.from_numpy(xp)[None], torch.from_numpy(ap)[None], torch.tensor([5]))
    assert torch.allclose(small, padded, atol=1e-6)


def test_a_learnable_table_is_learned(tmp_path):
    write_hdf5(tmp_path / 'nb.hdf5', n=400, seed=5)
    split_train_val.main(['--data', str(tmp_path / 'nb.hdf5'), '--output', str(tmp_path / 's.npz')])
    status, err = run_main(np_train.main, ['--data', tmp_path / 'nb.hdf5', '--splits', tmp_path / 's.npz',
                                           '--train-split', '172', '--eval-split', 'all', '--epochs', 60,
                                           '--lr', 1e-3, '--json', tmp_path / 'out.json'])
    assert status == 0, err
    out = json.loads((tmp_path / 'out.json').read_text())
    assert out['n_train'] == 172 and out['n_eval'] == 400
    assert out['kendall_tau'] > 0.8 and out['mse'] < 1.0
    assert out['settings']['epochs'] == 60 and os.path.getsize(tmp_path / 'out.png') > 1000


@pytest.mark.quick
def test_two_stage_and_folds_run_and_report_and_search_reads_the_hdf5(tmp_path):
    write_hdf5(tmp_path / 'nb.hdf5', n=300, seed=2)
    split_train_val.main(['--data', str(tmp_path / 'nb.hdf5'), '--output', str(tmp_path / 's.npz')])
    base = ['--data', tmp_path / 'nb.hdf5', '--splits', tmp_path / 's.npz', '--epochs', 10, '--lr', 1e-3]
    status, err = run_main(np_train.main, base + ['--two-stage', 0.88, '--folds', 3, '--json', tmp_path / 'a.json'])
    assert status == 0, err
    a = json.loads((tmp_path / 'a.json').read_text())
    assert len(a['cross_validation']['folds']) == 3 and 0 <= a['two_stage']['classifier_accuracy'] <= 1
    from neural_predictor import search  # selection against other searches: search.py's job
    status, err = run_main(search.main, ['--data', tmp_path / 'nb.hdf5', '--splits', tmp_path / 's.npz',
                                         '--budget', 60, '--seeds', 2, '--workers', 1, '--methods', 'random',
                                         'evolution', 'local', '--json', tmp_path / 'b.json'])
    assert status == 0, err
    b = json.loads((tmp_path / 'b.json').read_text())
    table = dataset.read_nb101(str(tmp_path / 'nb.hdf5'))
    assert b['rows'] == 300 and b['best_in_table'] == pytest.approx(float(table.labels.max()))
    assert set(b['methods']) == {'random', 'evolution', 'local'}


@pytest.mark.parametrize('name', sorted(genotypes.GENOTYPES))
def test_encode_genotype_for_every_genotype(name):
    g = genotypes.GENOTYPES[name]
    ops, adj = dataset.encode_genotype(g)
    b = len(g.normal) // 2
    assert ops.shape == (2 * (3 + 3 * b), 3 + len(dataset.GENOTYPE_OPS)) and adj.shape == (len(ops), len(ops))
    assert (ops.sum(1) == 1).all()  # every node has one type
    names = [e[0] for e in g.normal] + [e[0] for e in g.reduce]
    op_types = ops[:, 3:].sum(0)
    for k, op in enumerate(dataset.GENOTYPE_OPS):
        assert op_types[k] == names.count(op)
    assert np.allclose(np.tril(adj), 0)  # a DAG in node order
    v = len(ops) // 2
    assert adj[:, v - 1].sum() == len(g.normal_concat) and adj[:, -1].sum() == len(g.reduce_concat)


def test_genotype_table_trains_and_ranks(tmp_path):
    rows = [{'genotype': n, 'accuracy': 90 + k} for k, n in enumerate(sorted(genotypes.GENOTYPES))]
    (tmp_path / 't.json').write_text(json.dumps(rows))
    status, err = run_main(np_train.main, ['--table', tmp_path / 't.json', '--epochs', 5, '--rank', 'PNASNet',
                                           'DARTS_V2', '--json', tmp_path / 'r.json'])
    assert status == 0, err
    ranking = json.loads((tmp_path / 'r.json').read_text())['ranking']
    assert sorted(r['genotype'] for r in ranking) == ['DARTS_V2', 'PNASNet']


class _FakeArchitecture:
    pass


class _FakeDrift:
    pass


def write_analog_table(path, n=40, seed=0):
    """A pickle in analog-nasbench's format: {6-tuple: analognasbench.data.Architecture}."""
    module = types.ModuleType('analognasbench.data')
    _FakeArchitecture.__module__ = _FakeDrift.__module__ = 'analognasbench.data'
    _FakeArchitecture.__qualname__, _FakeDrift.__qualname__ = 'Architecture', 'DriftMeasurement'
    module.Architecture, module.DriftMeasurement = _FakeArchitecture, _FakeDrift
    sys.modules['analognasbench'] = types.ModuleType('analognasbench')
    sys.modules['analognasbench.data'] = module
    rng = np.random.default_rng(seed)
    table = {}
    try:
        for _ in range(n):
            arch = tuple(int(v) for v in rng.integers(0, 5, 6))
            a = _FakeArchitecture()
            a.architecture, a.baseline_accuracy = arch, 80.0 + 2.0 * arch.count(3)
            d = _FakeDrift()
            d.value, d.uncertainty = 1.0, 0.1
            a.baseline_drift_60 = d
            table[arch] = a
        with open(path, 'wb') as f:
            pickle.dump(table, f)
    finally:
        del sys.modules['analognasbench'], sys.modules['analognasbench.data']
    return table


def test_nb201_table_is_read_with_a_restricted_unpickler(tmp_path):
    table = write_analog_table(tmp_path / 'data.anb')
    g = dataset.read_nb201(str(tmp_path / 'data.anb'))
    assert len(g) == len(table) and g.ops.shape[1:] == (8, 7)
    first = next(iter(table))
    np.testing.assert_allclose(g.labels[0], table[first].baseline_accuracy / 100, rtol=1e-6)
    ops, adj = dataset.encode_nb201((3, 3, 3, 3, 3, 3))
    assert adj.sum() == 3 + 3 + 4 and ops[1:7, 5].sum() == 6  # input -> 3 edges, 3 -> output, 4 inner

    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned',))
    with open(tmp_path / 'evil.anb', 'wb') as f:
        pickle.dump({(0,) * 6: Evil()}, f)
    with pytest.raises(dataset.DataError, match='not allowed'):
        dataset.read_nb201(str(tmp_path / 'evil.anb'))


def test_mlp_takes_the_same_encoding():
    g = dataset.stack([dataset.encode_nb201((k, 1, 2, 3, 4, 0)) for k in range(5)], np.zeros(5))
    net = MLPPredictor(8, 7)
    assert net(*g.tensors()).shape == (5,)


@pytest.mark.quick
def test_bad_inputs_get_one_line_and_exit_1(tmp_path):
    write_hdf5(tmp_path / 'nb.hdf5', n=50)
    split_train_val.main(['--data', str(tmp_path / 'nb.hdf5'), '--output', str(tmp_path / 's.npz')])

    def bad(fn, argv, *words):
        status, err = run_main(fn, argv)
        lines = err.strip().splitlines()
        assert status == 1 and len(lines) == 1 and 'Traceback' not in err, err
        for w in words:
            assert w in lines[0], lines[0]
    with h5py.File(tmp_path / 'nb.hdf5', 'r') as f:
        arrays = {k: f[k][()] for k in f}
    for broken, word in (('missing', "'metrics' is missing"), ('shape', 'adjacency has shape [50, 6, 6]')):
        path = tmp_path / f'{broken}.hdf5'
        with h5py.File(path, 'w') as f:
            for k, v in arrays.items():
                if broken == 'missing' and k == 'metrics':
                    continue
                f.create_dataset(k, data=v[:, :6, :6] if broken == 'shape' and k == 'adjacency' else v)
        bad(split_train_val.main, ['--data', str(path), '--output', str(tmp_path / 'x.npz')], word)
        bad(np_train.main, ['--data', str(path), '--splits', str(tmp_path / 's.npz')], word)
    write_hdf5(tmp_path / 'small.hdf5', n=20)  # the splits of 50 rows do not fit 20
    bad(np_train.main, ['--data', str(tmp_path / 'small.hdf5'), '--splits', str(tmp_path / 's.npz')],
        'out of range', 'small.hdf5')
    bad(np_train.main, ['--data', str(tmp_path / 'nb.hdf5'), '--splits', str(tmp_path / 's.npz'),
                        '--train-split', 'nope'], '--train-split nope')
    bad(np_train.main, ['--data', str(tmp_path / 'none.hdf5'), '--splits', str(tmp_path / 's.npz')], 'no such file')


@pytest.mark.quick
def test_nb201_experiments_command_reports_gcn_and_mlp(tmp_path):
    from neural_predictor.tools import nb201_experiments
    write_analog_table(tmp_path / 'data.anb', n=300, seed=4)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = nb201_experiments.main(['--table', str(tmp_path / 'data.anb'), '--sizes', '20', '40',
                                         '--seeds', '0', '1', '--epochs', '20', '--json', str(tmp_path / 'r.json')])
    assert status == 0
    r = json.loads((tmp_path / 'r.json').read_text())
    assert [row['n_train'] for row in r['prediction']] == [20, 40]
    for row in r['prediction']:
        assert len(row['gcn']['kendall_tau']['values']) == 2 and 'mse' in row['mlp']
    assert 'selection' not in r  # comparisons of searches live in search.py
    assert 'GCN tau' in out.getvalue()
    # a learnable table: 40 cells rank the rest well
    assert r['prediction'][1]['gcn']['kendall_tau']['mean'] > 0.5


# --- search.py on this project's genotype tables ---------------------------------------------------

@pytest.mark.quick
def test_search_command_reads_a_genotype_table(tmp_path):
    from neural_predictor import search
    rows = [{'genotype': genotypes.to_dict(genotypes.get(name)), 'accuracy': acc}
            for name, acc in (('PNASNet', 0.9659), ('NASNet', 0.9735), ('AmoebaNet', 0.9666),
                              ('DARTS_V1', 0.97), ('DARTS_V2', 0.9724))]
    (tmp_path / 'runs.json').write_text(json.dumps(rows))
    status, err = run_main(search.main, ['--table', tmp_path / 'runs.json', '--budget', 5, '--seeds', 2,
                                         '--workers', 1, '--methods', 'random', 'evolution', 'local', 'predictor',
                                         '--json', tmp_path / 's.json', '--plot', tmp_path / 's.png'])
    assert status == 0, err
    out = json.loads((tmp_path / 's.json').read_text())
    assert out['budgets'] == [5] and out['best_in_table'] == pytest.approx(0.9735)
    for r in out['methods'].values():  # 5 look-ups: the whole table, so its best on every seed
        assert r['mean'] == [pytest.approx(0.9735)]
        assert all(1 <= k <= 5 for k in r['to_best'])
    assert os.path.getsize(tmp_path / 's.png') > 1000
    status, err = run_main(search.main, ['--table', tmp_path / 'runs.json', '--budget', 6, '--json', tmp_path / 'x.json'])
    assert status == 1 and 'the table has 5 rows' in err and '\n' not in err.strip()
    for extra in (['--report', 'test'], ['--metric', 'valid'], ['--max', 'params_m=1']):  # a genotype row has accuracy only
        status, err = run_main(search.main, ['--table', tmp_path / 'runs.json', '--budget', 5, '--workers', 1,
                                             '--json', tmp_path / 'y.json'] + extra)
        assert status == 1 and 'a genotype table has one metric, accuracy' in err and '\n' not in err.strip(), extra


def test_the_nb201_unpickler_refuses_every_kind_of_payload(tmp_path, evil_pickles):
    payloads, marker = evil_pickles
    assert_every_payload_refused(dataset.read_nb201, dataset.DataError, payloads, marker, tmp_path, '.anb')
