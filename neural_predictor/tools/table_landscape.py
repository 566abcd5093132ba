"""How findable the best rows of a table are for a search that moves between neighbours.

    python neural_predictor/tools/table_landscape.py --table nb201.jsonl --metric noisy --json noisy_landscape.json

Neighbours are the ones every search method uses (``strategies.Neighbours``: the rows nearest in
the encoding, whole distance shells until at least 10). For the table it prints how many rows
are local maxima (no neighbour better) and how closely a row's label follows its neighbours'
mean (Pearson's r); then, for each of the ``--top`` best rows, whether it is a local maximum,
the rank of its best neighbour, its neighbours' mean, how many of them are among the best 1 %
of the table (at least ``--top`` rows), and its place when every row is ordered by its
neighbours' mean, highest first.

A top row whose neighbours are middling (a best neighbour ranked far down, few neighbours among
the best 1 %) is a needle: its label says little about its neighbours' and theirs little about
it, so no method that learns from neighbours can expect to find it sooner than by luck. The
place in the neighbours'-mean order says how soon a method that knew every row's neighbours'
mean before looking anything up, and looked rows up in that order, would meet that row: how far
knowledge of neighbourhoods alone would take a search that had it for nothing, where a real one
spends look-ups on learning it.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from neural_predictor import dataset, strategies  # noqa: E402
from neural_predictor.common import fail, write_json  # noqa: E402

SCRIPT = 'neural_predictor/tools/table_landscape.py'


def ranks(labels: np.ndarray) -> np.ndarray:
    """1 + the number of rows with a higher label (equal labels share a rank)."""
    ordered = np.sort(labels)[::-1]
    return 1 + np.searchsorted(-ordered, -labels, side='left')


def above_neighbours(value: float, near: np.ndarray) -> bool:
    """A local maximum: no neighbour's label (``near``) above ``value``."""
    return not len(near) or value >= near.max()


def whole_table(labels: np.ndarray, neighbours: strategies.Neighbours, rows: np.ndarray):
    """Local maxima and the label-to-neighbours'-mean correlation, over ``rows``; and the
    neighbours' means of those rows (rows without neighbours left out), for ``order_place``."""
    local_max, own, around = 0, [], []
    for i in rows:
        near = labels[neighbours.of(i)]
        if len(near):
            local_max += int(above_neighbours(labels[i], near))
            own.append(float(labels[i]))
            around.append(float(near.mean()))
    r = float(np.corrcoef(own, around)[0, 1]) if len(own) > 1 and np.std(own) and np.std(around) else None
    return {'examined': int(len(rows)), 'local_maxima': local_max, 'neighbour_correlation': r}, np.array(around)


def order_place(mean: float, means: np.ndarray, rows: int) -> int:
    """A row's place when the table's ``rows`` rows are ordered by their neighbours' mean,
    highest first: 1 + the rows with a higher mean (ties go its way: the place at best). ``means``
    are the examined rows'; where they are a sample, the count is scaled to the whole table."""
    higher = int((means > mean).sum())
    return 1 + (higher if len(means) >= rows else int(round(higher * rows / max(len(means), 1))))


def top_rows(table: dataset.Graphs, labels: np.ndarray, neighbours: strategies.Neighbours, top: int,
             near_top: int, means: np.ndarray) -> list:
    rank = ranks(labels)
    out = []
    for i in np.argsort(-labels, kind='stable')[:top]:
        near = neighbours.of(i)
        mean = float(labels[near].mean()) if len(near) else None
        out.append({'row': int(i), 'id': table.names[i] if table.names else str(i), 'rank': int(rank[i]),
                    'value': float(labels[i]),
                    'local_maximum': bool(above_neighbours(labels[i], labels[near])),
                    'neighbours': int(len(near)),
                    'best_neighbour_rank': int(rank[near].min()) if len(near) else None,
                    'neighbour_mean': mean,
                    'neighbours_near_top': int((rank[near] <= near_top).sum()),
                    'neighbour_mean_place': None if mean is None else order_place(mean, means, len(table))})
    return out


def landscape(table: dataset.Graphs, top: int = 10, sample: int = 20000, seed: int = 0) -> dict:
    """The figures the script prints; the whole-table ones over every row, or over ``sample``
    rows drawn with ``seed`` where the table has more."""
    neighbours = strategies.Neighbours(table)
    n = len(table)
    rows = np.arange(n) if n <= sample else np.sort(np.random.RandomState(seed).choice(n, sample, replace=False))
    near_top = max(top, -(-n // 100))  # the best 1 % of the rows, at least ``top``
    labels = table.labels.astype(np.float64)
    figures, means = whole_table(labels, neighbours, rows)
    out = {'rows': n, **figures, 'near_top': near_top}
    out['top'] = top_rows(table, labels, neighbours, min(top, n), near_top, means)
    places = [t['neighbour_mean_place'] for t in out['top'] if t['neighbour_mean_place'] is not None]
    out['first_top_by_neighbour_mean'] = min(places) if places else None
    return out


def show(result: dict, path: str, metric: str) -> None:
    part = '' if result['examined'] == result['rows'] else f' (of {result["examined"]} rows drawn at random)'
    r = result['neighbour_correlation']
    print(f'{path}: {result["rows"]} rows, metric {metric}')
    print(f'local maxima (no neighbour better): {result["local_maxima"]}{part}')
    print(f'label against its neighbours\' mean, Pearson r: {"n/a" if r is None else f"{r:.3f}"}{part}')
    first = result['first_top_by_neighbour_mean']
    print(f"rows in order of their neighbours' mean: the first of the best {len(result['top'])} comes "
          f'{"n/a" if first is None else first}{" (estimated from the sample)" if part else ""}')
    print(f'the {len(result["top"])} best rows; "in best 1 %": neighbours ranked {result["near_top"]} or better; '
          f'"place": in that order:')
    print(f'{"rank":>6} {"value":>10} {"local max":>9} {"best neighbour":>14} {"neighbours mean":>15} '
          f'{"in best 1 %":>11} {"place":>6}  id')
    for t in result['top']:
        best = '-' if t['best_neighbour_rank'] is None else t['best_neighbour_rank']
        mean = '-' if t['neighbour_mean'] is None else f'{t["neighbour_mean"]:.4g}'
        place = '-' if t['neighbour_mean_place'] is None else t['neighbour_mean_place']
        print(f'{t["rank"]:>6} {t["value"]:>10.6g} {"yes" if t["local_maximum"] else "no":>9} {best:>14} '
              f'{mean:>15} {t["neighbours_near_top"]:>5} of {t["neighbours"]:<3} {place:>6}  {t["id"]}')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='More: docs/neural-predictor.md')
    ap.add_argument('--table', required=True,
                    help='a table as search.py --table reads it: JSON lines, or this project\'s genotype rows')
    ap.add_argument('--metric', help='the metric, higher is better (default: the first of the first row)')
    ap.add_argument('--max', action='append', metavar='NAME=VALUE', default=[],
                    help='only rows with NAME at most VALUE (repeatable), as in search.py')
    ap.add_argument('--top', type=int, default=10, help='how many of the best rows to show (default 10)')
    ap.add_argument('--sample', type=int, default=20000,
                    help='whole-table figures over at most this many rows, drawn at random beyond it (default 20000)')
    ap.add_argument('--json', help='also write the figures here')
    args = ap.parse_args(argv)
    if args.top < 1 or args.sample < 2:
        return fail(SCRIPT, '--top must be at least 1 and --sample at least 2')
    try:
        import genotypes
        limits = [dataset.parse_limit(text) for text in args.max]
        table, metric = dataset.read_table(args.table, args.metric, limits, genotypes.get)
    except dataset.DataError as e:
        return fail(SCRIPT, str(e))
    result = landscape(table, args.top, args.sample)
    show(result, args.table, metric)
    if args.json:
        write_json({'table': args.table, 'metric': metric, **result}, args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
