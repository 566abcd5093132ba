"""Writes the reproduction's train/eval splits of a NAS-Bench-101 HDF5 file.

    python neural_predictor/tools/split_train_val.py --data nasbench.hdf5 --output splits.npz

Splits: 172, 334, 860 (random rows, from one seeded RandomState), 91-172, 91-334, 91-860 (those
rows whose seed-0 val accuracy is above 0.91), denoise-91 and denoise-80 (every row above 0.91 /
0.8). "all" needs no entry. The permutation runs over the rows of the file given, so a smaller
file in the same layout works as well.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from neural_predictor import dataset  # noqa: E402
from neural_predictor.common import write_atomic  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='More: docs/neural-predictor.md')
    ap.add_argument('--data', required=True, help='the NAS-Bench-101 HDF5 file')
    ap.add_argument('--output', required=True, help='the .npz to write')
    ap.add_argument('--seed', type=int, default=0, help='seed of the permutations (default 0, the reproduction\'s)')
    args = ap.parse_args(argv)
    try:
        arrays = dataset.read_nb101_arrays(args.data)
        splits = dataset.make_splits(arrays['metrics'], args.seed)
        write_atomic(args.output, lambda f: np.savez(f, **splits))
    except (dataset.DataError, OSError) as e:
        print(f'split_train_val.py: error: {e}', file=sys.stderr)
        return 1
    print(f'{args.output}: ' + ', '.join(f'{k} ({len(v)})' for k, v in splits.items()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
