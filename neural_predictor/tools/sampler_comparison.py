"""The samplers of ``search.py --space pnas`` on a synthetic objective over PNAS's space, with a
known optimum and no training: how good a cell each finds in the same number of trials.

    python neural_predictor/tools/sampler_comparison.py --trials 60 --seeds 5 --json samplers.json

The objective scores each branch of a cell by its op and its input: an op's worth is mostly its
own (as separable convolutions beat pooling in every block) and a little its block's, and each
block prefers its own inputs; the optimum takes the best branch in every block. Cells of fewer
blocks (PNAS's progressive search trains them on the way) score the blocks they have.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from neural_predictor import pnas_space, samplers  # noqa: E402
from neural_predictor.common import fail, write_json  # noqa: E402

SCRIPT = 'neural_predictor/tools/sampler_comparison.py'


class Synthetic:
    """The objective of a given ``seed``; ``optimum`` is its best full-size cell's score."""

    def __init__(self, blocks: int = pnas_space.BLOCKS, seed: int = 7):
        rng = np.random.RandomState(seed)
        self.blocks = blocks
        self.w_op = rng.randn(1, len(pnas_space.OPS)) + 0.3 * rng.randn(blocks, len(pnas_space.OPS))
        self.w_in = rng.randn(blocks, blocks + 1)
        self.optimum = float(sum(2 * self.w_op[b].max() + 2 * self.w_in[b][:b + 2].max() for b in range(blocks)))

    def score(self, cell) -> float:
        return float(sum(self.w_op[b][pnas_space.OPS.index(op)] + self.w_in[b][i]
                         for b, block in enumerate(cell) for i, op in block))

    def objective(self, grow: bool):
        """An Optuna objective over PNAS's space (cells of 1 to B blocks where ``grow``)."""
        space = samplers.pnas_distributions(self.blocks, grow)

        def run(trial):
            cell = samplers.suggest_cell(trial, space)
            trial.set_user_attr('cell', cell)
            return self.score(cell)
        return run


def study_of(method: str, objective: Synthetic, seed: int, trials: int):
    """One search of ``method``: the Optuna study after ``trials`` trials (beam: trials / B)."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = samplers.pnas_sampler(method, objective.blocks, seed, beam=max(2, trials // objective.blocks))
    study = optuna.create_study(direction='maximize', sampler=sampler)
    study.optimize(objective.objective(method == 'pnas'), n_trials=trials)
    return study


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='More: docs/neural-predictor.md')
    ap.add_argument('--trials', type=int, default=60, help='trials of each search (default 60)')
    ap.add_argument('--seeds', type=int, default=5, help='searches of each method (default 5)')
    ap.add_argument('--blocks', type=int, default=5, help='blocks of a cell (default 5)')
    ap.add_argument('--json', required=True, help='write the results here')
    args = ap.parse_args(argv)
    if min(args.trials, args.seeds, args.blocks) < 1:
        return fail(SCRIPT, '--trials, --seeds and --blocks must be at least 1')
    objective = Synthetic(args.blocks)
    result = {'trials': args.trials, 'seeds': args.seeds, 'optimum': objective.optimum, 'methods': {}}
    print(f'best score found in {args.trials} trials (the optimum: {objective.optimum:.2f}), '
          f'{args.seeds} seeds')
    for method in ('random', 'evolution', 'predictor', 'pnas'):
        start = time.time()
        best = [study_of(method, objective, s, args.trials).best_value for s in range(args.seeds)]
        result['methods'][method] = {'best': best, 'mean': float(np.mean(best)), 'min': float(np.min(best)),
                                     'seconds': time.time() - start}
        print(f'{method:10s} mean {np.mean(best):6.2f}  worst {np.min(best):6.2f}  best {np.max(best):6.2f}')
    write_json(result, args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
