"""The predictor's experiments on a real table available offline: NAS-Bench-201's CIFAR-10
accuracies of all 15,625 cells as the analog-nasbench package ships them.

    python neural_predictor/tools/nb201_experiments.py --json nb201.json

For each train size (43, 86, 172, 334, 860) and seed (0-4): that many random cells train the GCN
and, on the same encoding, the MLP; both are scored on all the other cells (Kendall tau, MSE in
percent squared). Searches that use a predictor are compared in neural_predictor/search.py.
Labels are normalised by the training cells' own mean and std. Each figure is a mean and a spread
(standard deviation) over the seeds, all measured in this one run.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from neural_predictor import dataset  # noqa: E402
from neural_predictor import model as np_model  # noqa: E402
from neural_predictor.common import fail, figures, write_json  # noqa: E402


def mean_std(values):
    return {'mean': float(np.mean(values)), 'std': float(np.std(values)), 'values': [float(v) for v in values]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='More: docs/neural-predictor.md')
    ap.add_argument('--table', help="analog-nasbench's data.anb (default: the installed package's)")
    ap.add_argument('--sizes', type=int, nargs='+', default=[43, 86, 172, 334, 860])
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
    ap.add_argument('--epochs', type=int, default=300, help='default 300 (the reproduction)')
    ap.add_argument('--threads', type=int, default=1, help='torch threads (small graphs: 1 is fastest)')
    ap.add_argument('--json', help='write the figures here')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    script = 'nb201_experiments.py'
    try:
        table = dataset.read_nb201(args.table)
    except dataset.DataError as e:
        return fail(script, str(e))
    if max(args.sizes) >= len(table):
        return fail(script, f'train sizes must stay below the table\'s {len(table)} cells')
    start = time.perf_counter()
    result = {'cells': len(table), 'settings': vars(args), 'prediction': []}
    print(f'NAS-Bench-201 CIFAR-10 (analog-nasbench baseline_accuracy), {len(table)} cells; '
          f'{len(args.seeds)} seeds, {args.epochs} epochs')
    print(f'{"train":>6s}  {"GCN tau":>15s}  {"MLP tau":>15s}  {"GCN MSE":>13s}  {"MLP MSE":>13s}')
    for n in args.sizes:
        row = {'n_train': n, 'n_eval': len(table) - n}
        for model in ('gcn', 'mlp'):
            taus, mses = [], []
            for seed in args.seeds:
                order = np.random.RandomState(seed).permutation(len(table))
                train, rest = table.subset(order[:n]), table.subset(order[n:])
                settings = np_model.Settings(epochs=args.epochs, seed=seed, model=model,
                                             batch_size=min(10, n))
                norm = (float(train.labels.mean()), float(train.labels.std()) or 1.0)
                f = figures(np_model.regress(train, rest, settings, norm), rest.labels)
                taus.append(f['kendall_tau'])
                mses.append(f['mse'])
            row[model] = {'kendall_tau': mean_std(taus), 'mse': mean_std(mses)}
        result['prediction'].append(row)
        g, m = row['gcn'], row['mlp']
        print(f'{n:6d}  {g["kendall_tau"]["mean"]:.3f} +- {g["kendall_tau"]["std"]:.3f}  '
              f'{m["kendall_tau"]["mean"]:.3f} +- {m["kendall_tau"]["std"]:.3f}  '
              f'{g["mse"]["mean"]:6.2f} +- {g["mse"]["std"]:4.2f}  {m["mse"]["mean"]:6.2f} +- {m["mse"]["std"]:4.2f}',
              flush=True)
    result['seconds'] = time.perf_counter() - start
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
