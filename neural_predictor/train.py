"""Trains the Neural Predictor and reports MSE (accuracy in percent, squared) and Kendall tau.

    python neural_predictor/train.py --data nasbench.hdf5 --splits splits.npz \\
        --train-split 172 --eval-split all --json out.json
    python neural_predictor/train.py ... --two-stage        # classifier, then regressor
    python neural_predictor/train.py ... --folds 5          # k-fold cross-validation on the train split
    python neural_predictor/train.py --table runs.json --rank MyGenotype PNASNet DARTS_V2

The defaults are the reproduction's (neuralpredictor.pytorch): Adam at lr 1e-4 with weight decay
1e-3, cosine over 300 epochs, batch 10 with drop_last, MSE on labels normalised with mean 0.908
and std 0.024, the GCN of model.py. ``--table`` trains on a JSON table of (genotype, accuracy)
rows of this project's genotypes and ranks candidate genotypes.
"""
import argparse
import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from neural_predictor import dataset  # noqa: E402
from neural_predictor.common import fail, figures, write_atomic, write_json  # noqa: E402
from neural_predictor.model import Settings, fit, predict, regress  # noqa: E402

SCRIPT = 'neural_predictor/train.py'


def two_stage(train: dataset.Graphs, evaluate: dataset.Graphs, settings: Settings, threshold: float):
    """The paper's cascade: a classifier (the same GCN, binary cross-entropy) of "accuracy above
    ``threshold``" on every training cell, and a regressor on the training cells above it. Cells
    the classifier rejects are ranked below every accepted one (at the lowest regressed value
    minus one label std); returns (predicted accuracies, the classifier's accept mask)."""
    good = train.labels > threshold
    if good.sum() < 2 or good.all():
        raise dataset.DataError(f'--two-stage {threshold}: {int(good.sum())} of the {len(train)} training '
                                f'cells are above the threshold; the classifier needs both kinds')
    classifier = fit(train, good.astype(np.float32), settings, loss='bce')
    accept = predict(classifier, evaluate) > 0.0
    pred = regress(train.subset(np.where(good)[0]), evaluate, settings)
    low = pred[accept].min() if accept.any() else pred.min()
    return np.where(accept, pred, low - dataset.STD), accept


def k_fold(train: dataset.Graphs, settings: Settings, folds: int) -> dict:
    """Each of ``folds`` parts of the training cells predicted by a regressor trained on the rest."""
    if folds < 2 or folds > len(train):
        raise dataset.DataError(f'--folds {folds}: needs 2 to {len(train)} folds for {len(train)} cells')
    order = np.random.RandomState(settings.seed).permutation(len(train))
    parts = np.array_split(order, folds)
    per_fold = []
    for k, held in enumerate(parts):
        rest = np.concatenate([p for j, p in enumerate(parts) if j != k])
        pred = regress(train.subset(rest), train.subset(held), settings)
        per_fold.append(figures(pred, train.labels[held]))
    return {'folds': per_fold, **{f'{key}_{stat}': float(fn([f[key] for f in per_fold]))
                                  for key in ('mse', 'kendall_tau')
                                  for stat, fn in (('mean', np.mean), ('std', np.std))}}


def scatter(pred_acc: np.ndarray, true_acc: np.ndarray, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(np.asarray(true_acc) * 100, np.asarray(pred_acc) * 100, s=2, alpha=0.5)
    lo = float(min(np.min(true_acc), np.min(pred_acc))) * 100
    hi = float(max(np.max(true_acc), np.max(pred_acc))) * 100
    ax.plot([lo, hi], [lo, hi], 'k--', lw=0.8)
    ax.set_xlabel('true accuracy (%)')
    ax.set_ylabel('predicted accuracy (%)')
    ax.set_title(title)
    ax.grid(linestyle='--', alpha=0.5)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format='png', dpi=100))
    plt.close(fig)


# --- the command line -------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='More: docs/neural-predictor.md')
    ap.add_argument('--data', help='NAS-Bench-101 in the HDF5 layout (tools/nasbench_tfrecord_converter.py)')
    ap.add_argument('--splits', help='the .npz of tools/split_train_val.py')
    ap.add_argument('--train-split', default='172', help='split to train on (default 172)')
    ap.add_argument('--eval-split', default='all', help='split to evaluate on (default all)')
    ap.add_argument('--table', help='instead of --data: a JSON list of {"genotype", "accuracy"} rows '
                                    "of this project's genotypes, all trained on")
    ap.add_argument('--rank', nargs='+', metavar='GENOTYPE',
                    help='with --table: genotype names or JSON files to rank by predicted accuracy')
    ap.add_argument('--epochs', type=int, default=300, help='default 300 (the reproduction)')
    ap.add_argument('--lr', type=float, default=1e-4, help='Adam learning rate (default 1e-4)')
    ap.add_argument('--weight-decay', type=float, default=1e-3, help='Adam weight decay (default 1e-3)')
    ap.add_argument('--batch-size', type=int, default=10, help='default 10, with drop_last')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--model', choices=['gcn', 'mlp'], default='gcn')
    ap.add_argument('--two-stage', nargs='?', type=float, const=0.91, metavar='THRESHOLD',
                    help='classifier of "val accuracy above THRESHOLD" (default 0.91), then the regressor')
    ap.add_argument('--folds', type=int, help='k-fold cross-validation on the train split')
    ap.add_argument('--json', help='write the figures here')
    ap.add_argument('--plot', help='predicted-vs-true scatter PNG (default: beside --json)')
    return ap.parse_args(argv)


def settings_of(args) -> Settings:
    for flag in ('epochs', 'batch_size'):
        if getattr(args, flag) < 1:
            raise dataset.DataError(f'--{flag.replace("_", "-")} must be at least 1')
    return Settings(args.epochs, args.lr, args.weight_decay, args.batch_size, args.seed, args.model)


def run_table(args, settings: Settings) -> dict:
    import genotypes  # the project's, on the path inserted above
    table = dataset.read_genotype_table(args.table, genotypes.get)
    if len(table) < settings.batch_size:
        settings = dataclasses.replace(settings, batch_size=len(table))
    result = {'n_train': len(table), 'settings': dataclasses.asdict(settings), 'table': args.table}
    net = fit(table, dataset.normalize(table.labels), settings)
    if args.rank:
        try:
            cands = [genotypes.load(name) for name in args.rank]
        except (ValueError, OSError) as e:
            raise dataset.DataError(f'--rank: {e}') from None
        graphs = dataset.stack([dataset.encode_genotype(g) for g in cands], np.zeros(len(cands)))
        if settings.model == 'mlp' and graphs.ops.shape[1] != table.ops.shape[1]:
            raise dataset.DataError('--rank with --model mlp: the candidates\' cells have another number '
                                    'of nodes than the table\'s; the GCN takes any')
        pred = dataset.denormalize(predict(net, graphs))
        order = np.argsort(-pred, kind='stable')
        result['ranking'] = [{'genotype': args.rank[i], 'predicted_accuracy': float(pred[i])} for i in order]
        for place, i in enumerate(order, 1):
            print(f'{place:3d}. {args.rank[i]:32s} predicted {100 * pred[i]:.2f} %')
    return result


def run(args) -> dict:
    settings = settings_of(args)
    if args.table:
        return run_table(args, settings)
    if not args.data or not args.splits:
        raise dataset.DataError('give --data FILE.hdf5 and --splits SPLITS.npz (or --table FILE.json)')
    table = dataset.read_nb101(args.data)
    splits = dataset.read_splits(args.splits, len(table), args.data)
    train_idx = dataset.select(splits, args.train_split, len(table), '--train-split')
    eval_idx = dataset.select(splits, args.eval_split, len(table), '--eval-split')
    if len(train_idx) < 2:
        raise dataset.DataError(f'--train-split {args.train_split}: {len(train_idx)} cells; at least 2 needed')
    train, evaluate = table.subset(train_idx), table.subset(eval_idx)
    if len(train) < settings.batch_size:
        settings = dataclasses.replace(settings, batch_size=len(train))
    result = {'n_train': len(train), 'n_eval': len(evaluate), 'train_split': args.train_split,
              'eval_split': args.eval_split, 'data': args.data, 'settings': dataclasses.asdict(settings)}
    if args.folds:
        result['cross_validation'] = k_fold(train, settings, args.folds)
        cv = result['cross_validation']
        print(f'{args.folds}-fold on {len(train)}: MSE {cv["mse_mean"]:.3f} +- {cv["mse_std"]:.3f}, '
              f'Kendall tau {cv["kendall_tau_mean"]:.4f} +- {cv["kendall_tau_std"]:.4f}')
    if args.two_stage is not None:
        pred, accept = two_stage(train, evaluate, settings, args.two_stage)
        result['two_stage'] = {'threshold': args.two_stage, 'accepted': int(accept.sum()),
                               'classifier_accuracy': float(np.mean(accept == (evaluate.labels > args.two_stage)))}
    else:
        pred = regress(train, evaluate, settings)
    result.update(figures(pred, evaluate.labels))
    print(f'train {args.train_split} ({len(train)}), eval {args.eval_split} ({len(evaluate)}): '
          f'MSE {result["mse"]:.3f}  Kendall tau {result["kendall_tau"]:.4f}')
    plot = args.plot or (os.path.splitext(args.json)[0] + '.png' if args.json else None)
    if plot:
        scatter(pred, evaluate.labels, plot, f'{settings.model}, train {args.train_split}, '
                                             f'tau {result["kendall_tau"]:.3f}')
        result['plot'] = plot
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except dataset.DataError as e:
        return fail(SCRIPT, str(e))
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
