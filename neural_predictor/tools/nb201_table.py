"""NAS-Bench-201 as a search table (JSON lines), with every target analog-nasbench ships.

    python neural_predictor/tools/nb201_table.py --output nb201.jsonl

One line per cell: ``nodes`` input, one node per cell edge named by its op, output (the ops on
the nodes, as ``--table`` reads them); ``edges`` between them; ``metrics`` in percent:
``baseline`` (the CIFAR-10 accuracy the other searches use), ``ptq``, ``qat`` (quantised),
``analog`` (on analog hardware), ``noisy`` (with weight noise) and the drift figures
``baseline_drift_T`` / ``analog_drift_T`` (T seconds after programming: 60, 3600, 86400,
2592000). Each target has its own best cell. Then, for example:

    python neural_predictor/search.py --table nb201.jsonl --metric analog --json analog.json
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from neural_predictor import dataset  # noqa: E402
from neural_predictor.common import fail  # noqa: E402

SCRIPT = 'neural_predictor/tools/nb201_table.py'
ACCURACIES = ('baseline', 'ptq', 'qat', 'analog', 'noisy')
DRIFTS = tuple(f'{kind}_drift_{t}' for kind in ('baseline', 'analog') for t in (60, 3600, 86400, 2592000))


def arch_string(arch) -> str:
    """NAS-Bench-201's own name of a cell: |op~0|+|op~0|op~1|+|op~0|op~1|op~2|."""
    ops = [dataset.NB201_OPS[a] for a in arch]
    return '|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|'.format(*ops)


def _number(value):
    """A finite float or None (the row lacks it)."""
    if value is None:
        return None
    value = getattr(value, 'value', value)  # drift records hold value and uncertainty
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return round(value, 6) if np.isfinite(value) else None


def rows(records: dict):
    for arch, record in records.items():
        ops, adj = dataset.encode_nb201(arch)
        names = ['input', 'output'] + dataset.NB201_OPS
        nodes = [names[int(k)] for k in ops.argmax(1)]
        edges = [[int(a), int(b)] for a, b in zip(*np.nonzero(adj))]
        metrics = {name: _number(getattr(record, f'{name}_accuracy', None)) for name in ACCURACIES}
        metrics.update({name: _number(getattr(record, name, None)) for name in DRIFTS})
        yield {'id': arch_string(arch), 'nodes': nodes, 'edges': edges, 'metrics': metrics}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='More: docs/neural-predictor.md')
    ap.add_argument('--output', required=True, help='the .jsonl table to write')
    ap.add_argument('--data', help="analog-nasbench's data.anb (default: the installed package's)")
    args = ap.parse_args(argv)
    try:
        table = list(rows(dataset.nb201_records(args.data)))
    except dataset.DataError as e:
        return fail(SCRIPT, str(e))
    dataset.write_jsonl_rows(table, args.output)
    print(f'{args.output}: {len(table)} cells, metrics {", ".join(ACCURACIES + DRIFTS)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
