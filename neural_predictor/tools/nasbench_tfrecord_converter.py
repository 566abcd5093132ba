"""Builds the predictor's NAS-Bench-101 HDF5 file from the official nasbench_full.tfrecord.

    python neural_predictor/tools/nasbench_tfrecord_converter.py --input nasbench_full.tfrecord \\
        --output nasbench.hdf5

Each record of the official file is a JSON list [module hash, epochs, adjacency as a string of
0/1 of n*n, operations comma-separated, metrics as a base64 ModelMetrics protobuf]. The records
are read with TF2's own TFRecord reader and the protobuf is decoded here from its wire format,
without the unmaintained TF1 ``nasbench`` package. A cell's three runs at each of the epoch
budgets 4, 12, 36 and 108 fill ``metrics`` [N, 4, 3, 2, 4]: budget, run, halfway/final
evaluation, (training time, train, val, test accuracy).
"""
import argparse
import base64
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from neural_predictor.common import fail  # noqa: E402
from utils import atomic_path  # noqa: E402

EPOCHS = [4, 12, 36, 108]
OPS = {'input': -1, 'output': -2, 'conv3x3-bn-relu': 0, 'conv1x1-bn-relu': 1, 'maxpool3x3': 2}
MAX_V = 7


class RecordError(ValueError):
    pass


def _varint(buf: bytes, i: int):
    shift = value = 0
    while True:
        if i >= len(buf):
            raise RecordError('truncated varint')
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = struct.unpack('<d', buf[i:i + 8])[0], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = struct.unpack('<f', buf[i:i + 4])[0], i + 4
        else:
            raise RecordError(f'unsupported wire type {wire}')
        if i > len(buf):
            raise RecordError('truncated message')
        yield number, wire, value


def decode_metrics(raw: bytes):
    """ModelMetrics: (trainable_parameters, [EvaluationData as (epoch, time, train, val, test)])."""
    params, evaluations = 0, []
    for number, wire, value in _fields(raw):
        if number == 1 and wire == 2:
            e = dict.fromkeys(range(1, 6), 0.0)
            for n2, w2, v2 in _fields(value):
                if n2 in e and w2 == 1:
                    e[n2] = v2
            evaluations.append(tuple(e[k] for k in range(1, 6)))
        elif number == 2 and wire == 0:
            params = value
    return params, evaluations


def parse_record(serialized: bytes):
    try:
        module_hash, epochs, raw_adj, raw_ops, raw_metrics = json.loads(serialized.decode('utf-8'))
        n = int(round(len(raw_adj) ** 0.5))
        if n * n != len(raw_adj) or not 2 <= n <= MAX_V:
            raise RecordError(f'adjacency of {len(raw_adj)} entries')
        adj = np.array([int(c) for c in raw_adj], np.int8).reshape(n, n)
        ops = [OPS[o] for o in raw_ops.split(',')]
        if len(ops) != n:
            raise RecordError(f'{len(ops)} operations for {n} vertices')
        params, evaluations = decode_metrics(base64.b64decode(raw_metrics))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise RecordError(str(e)) from None
    if int(epochs) not in EPOCHS:
        raise RecordError(f'epoch budget {epochs}, not one of {EPOCHS}')
    if len(evaluations) < 3:
        raise RecordError(f'{len(evaluations)} evaluations, not 3 (start, halfway, final)')
    return module_hash, int(epochs), adj, ops, params, evaluations


def convert(records, log=print):
    """The HDF5 arrays from an iterable of serialized records."""
    index, rows = {}, []
    for k, serialized in enumerate(records):
        try:
            h, epochs, adj, ops, params, evaluations = parse_record(serialized)
        except RecordError as e:
            raise RecordError(f'record {k}: {e}') from None
        if h not in index:
            index[h] = len(rows)
            rows.append({'adj': adj, 'ops': ops, 'params': params,
                         'metrics': np.zeros((4, 3, 2, 4), np.float32), 'runs': [0, 0, 0, 0]})
        row = rows[index[h]]
        b = EPOCHS.index(epochs)
        run = row['runs'][b]
        if run >= 3:
            raise RecordError(f'record {k}: a fourth run of {h} at {epochs} epochs')
        row['runs'][b] += 1
        for slot, e in ((0, evaluations[1]), (1, evaluations[2])):  # halfway, final
            row['metrics'][b, run, slot] = (e[1], e[2], e[3], e[4])
    n = len(rows)
    out = {'hash': np.array([h.encode() for h in index], dtype='S32'),
           'num_vertices': np.zeros(n, np.int8), 'trainable_parameters': np.zeros(n, np.int32),
           'adjacency': np.zeros((n, MAX_V, MAX_V), np.int8), 'operations': np.zeros((n, MAX_V), np.int8),
           'metrics': np.zeros((n, 4, 3, 2, 4), np.float32)}
    for i, row in enumerate(rows):
        v = len(row['ops'])
        out['num_vertices'][i] = v
        out['trainable_parameters'][i] = row['params']
        out['adjacency'][i, :v, :v] = row['adj']
        out['operations'][i, :v] = row['ops']
        out['metrics'][i] = row['metrics']
    log(f'{n} cells from {k + 1 if rows else 0} records')
    return out


def tfrecord_records(path: str):
    from utils import import_tf  # TensorFlow without its start-up notices
    tf = import_tf()
    for record in tf.data.TFRecordDataset(path):
        yield record.numpy()


def write_hdf5(arrays, path: str) -> None:
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, 'w') as h:
            for key, value in arrays.items():
                h.create_dataset(key, data=value)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='More: docs/neural-predictor.md')
    ap.add_argument('--input', required=True, help='nasbench_full.tfrecord')
    ap.add_argument('--output', required=True, help='the HDF5 file to write')
    args = ap.parse_args(argv)
    script = 'nasbench_tfrecord_converter.py'
    if not os.path.isfile(args.input):
        return fail(script, f'{args.input}: no such file; download nasbench_full.tfrecord (see the README)')
    try:
        arrays = convert(tfrecord_records(args.input))
    except RecordError as e:
        return fail(script, f'{args.input}: {e}')
    except Exception as e:  # TF's reader on a file that is not a TFRecord
        if type(e).__name__ in ('DataLossError', 'InvalidArgumentError'):
            return fail(script, f'{args.input}: not a TFRecord file ({type(e).__name__})')
        raise
    write_hdf5(arrays, args.output)
    print(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
