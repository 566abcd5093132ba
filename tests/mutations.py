"""A mutation check: plausible one-line bugs, each applied alone to a scratch copy of the project,
then the tests that should see it. A bug the tests let through is a missing test.

    python tests/mutations.py                 # every mutation: caught or MISSED, and a summary
    python tests/mutations.py --only ema      # the mutations whose name has 'ema' in it
    python tests/mutations.py --list

Each mutation names a file, one exact text in it (found exactly once, or the mutation is reported
as stale), its replacement and the tests to run (pytest node ids or -k expressions). To add one,
append a ``Mutation`` to ``MUTATIONS``; docs/tests.md says more. This is not part of CI: it runs
the selected tests once per mutation (some of them build TensorFlow graphs), several minutes in
all on 2 cores.
"""
import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: List[str]


MUTATIONS = [
    # the training recipe
    Mutation('drop path ignores the cell scale', 'model.py',
             'h = drop_path(h, drop_prob * self.drop_scale)', 'h = drop_path(h, drop_prob)',
             ['tests/test_train.py::test_drop_path_in_the_forward_pass_scales_by_cell_and_spares_the_identity']),
    Mutation('drop path also drops skip_connect', 'model.py',
             "self._dropped = [name != 'skip_connect' for name, _ in ops]", 'self._dropped = [True for _ in ops]',
             ['tests/test_train.py::test_drop_path_in_the_forward_pass_scales_by_cell_and_spares_the_identity']),
    Mutation('the step passes no label smoothing', 'train.py',
             'losses(output, y.clamp(min=0), args.label_smoothing, args.aux_weight)',
             'losses(output, y.clamp(min=0), 0.0, args.aux_weight)',
             ['tests/test_train.py::test_the_training_step_smooths_labels_and_adds_the_aux_loss_at_0_4']),
    Mutation('aux loss unweighted', 'train.py', 'return main + aux_weight * aux, main, aux',
             'return main + aux, main, aux',
             ['tests/test_train.py::test_the_training_step_smooths_labels_and_adds_the_aux_loss_at_0_4']),
    Mutation('EMA without its warm-up', 'train.py',
             'd = min(self.decay, (1 + self.updates) / (10 + self.updates))', 'd = self.decay',
             ['tests/test_train.py::test_ema_averages_with_tf_slims_warmup']),
    Mutation('learning rate decays smoothly, not in stairs', 'train.py',
             'return args.decay_rate ** ((step - warmup) // decay_steps)',
             'return args.decay_rate ** ((step - warmup) / decay_steps)',
             ['tests/test_train.py::test_lr_schedules_follow_tf_slims_formulas_at_every_step']),
    Mutation('warmup one step late', 'train.py', 'return (step + 1) / warmup', 'return step / warmup',
             ['tests/test_train.py::test_lr_schedules_follow_tf_slims_formulas_at_every_step']),
    # the network and its numbers
    Mutation('PyTorch BatchNorm epsilon', 'operations.py', 'BN_EPS = 1e-3', 'BN_EPS = 1e-5',
             ['tests/test_operations.py::test_every_op_matches_the_tf_twin']),
    Mutation('SAME padding puts the extra pixel first', 'operations.py',
             'return total // 2, total - total // 2', 'return total - total // 2, total // 2',
             ['tests/test_operations.py::test_same_padding_puts_the_odd_pixel_after']),
    Mutation('resize source coordinates in float64', 'utils.py',
             'src = np.arange(out_size, dtype=np.float32) * scale',
             'src = (np.arange(out_size, dtype=np.float64) * (in_size / out_size)).astype(np.float32)',
             ['tests/test_utils.py::test_preprocess_for_eval_equals_tf_on_many_shapes']),
    Mutation('main.py --image without the central crop', 'main.py',
             'x = utils.preprocess_for_eval(image, args.image_size, args.image_size)',
             'x = utils.preprocess_for_eval(image, args.image_size, args.image_size, central_fraction=1.0)',
             ['tests/test_main.py::test_single_image_path_gives_the_tf_twins_probabilities']),
    # the restricted unpicklers
    Mutation('CIFAR unpickler checks the module only', 'cifar.py',
             'if (module, name) in self.ALLOWED:', 'if module in {m for m, _ in self.ALLOWED}:',
             ['tests/test_cifar.py::test_the_cifar_unpickler_refuses_every_kind_of_payload']),
    Mutation('NB-201 unpickler checks the module only', 'neural_predictor/dataset.py',
             'if (module, name) in self.SAFE:', "if module in ('builtins', 'copyreg', 'copy_reg'):",
             ['tests/test_neural_predictor.py::test_the_nb201_unpickler_refuses_every_kind_of_payload']),
    # the searches
    Mutation('evolution takes the worst of its sample', 'neural_predictor/strategies.py',
             'parent = best_of(table, [members[c] for c in sorted(contenders)])',
             'parent = min((members[c] for c in contenders), key=lambda i: table.labels[i])',
             ['tests/test_search.py::test_evolution_takes_the_best_of_its_sample_and_the_oldest_dies']),
    Mutation('evolution: the youngest dies', 'neural_predictor/strategies.py',
             'members.pop(0)', 'members.pop()', ['tests/test_search.py::test_evolution_takes_the_best_of_its_sample_and_the_oldest_dies']),
    Mutation('local search moves to worse cells', 'neural_predictor/strategies.py',
             'if table.labels[j] > table.labels[current]:\n                current, moved = j, True',
             'if table.labels[j] < table.labels[current]:\n                current, moved = j, True',
             ['tests/test_search.py::test_local_search_climbs_from_the_best_and_restarts_only_at_a_local_optimum']),
    Mutation('random search draws with replacement', 'neural_predictor/strategies.py',
             'return [int(i) for i in np.random.RandomState(seed).permutation(len(table))[:budget]]',
             'return [int(i) for i in np.random.RandomState(seed).randint(len(table), size=budget)]',
             ['tests/test_search.py::test_every_method_keeps_its_budget_and_never_repeats']),
    Mutation('neighbours cut inside a distance shell', 'neural_predictor/strategies.py',
             'near = np.nonzero(distance <= radius)[0]', 'near = np.argsort(distance, kind="stable")[:self.min_size]',
             ['tests/test_search.py::test_neighbours_are_the_nearest_rows_and_one_op_away_on_a_grid']),
    Mutation('gp: the grown factor forgets the noise', 'neural_predictor/strategies.py',
             'last = max(1.0 + noise - float(lead @ lead), 1e-12) ** 0.5',
             'last = max(1.0 - float(lead @ lead), 1e-12) ** 0.5',
             ['tests/test_search.py::test_gp_search_looks_up_the_highest_posterior_draw']),
    Mutation('gp: draws without the spread (the posterior mean alone)', 'neural_predictor/strategies.py',
             'draw = mean + spread * rng.standard_normal(n_rows)', 'draw = mean + 0.0 * rng.standard_normal(n_rows)',
             ['tests/test_search.py::test_gp_search_looks_up_the_highest_posterior_draw']),
    Mutation('landscape: the best neighbour is the worst', 'neural_predictor/tools/table_landscape.py',
             "'best_neighbour_rank': int(rank[near].min())", "'best_neighbour_rank': int(rank[near].max())",
             ['tests/test_search.py::test_table_landscape_figures_match_a_count_over_one_op_neighbours']),
    Mutation('landscape: r against the best neighbour, not the mean', 'neural_predictor/tools/table_landscape.py',
             'around.append(float(near.mean()))', 'around.append(float(near.max()))',
             ['tests/test_search.py::test_table_landscape_figures_match_a_count_over_one_op_neighbours']),
    Mutation('landscape: a row counted above itself in the neighbours\' mean order', 'neural_predictor/tools/table_landscape.py',
             'higher = int((means > mean).sum())', 'higher = int((means >= mean).sum())',
             ['tests/test_search.py::test_table_landscape_figures_match_a_count_over_one_op_neighbours']),
    Mutation('look-ups to a top-10 row off by one', 'neural_predictor/search.py',
             'return int(hits[0]) + 1 if len(hits) else None', 'return int(hits[0]) if len(hits) else None',
             ['tests/test_search.py::test_reach_statistics_count_seeds_that_never_got_there']),
    Mutation('--report reads the last row, not the best', 'neural_predictor/search.py',
             'out.append(float(values[int(np.argmax(head))]))', 'out.append(float(values[len(head) - 1]))',
             ['tests/test_search.py::test_search_command_on_a_jsonl_table_gives_the_contracts_json']),
    Mutation('--max ignored', 'neural_predictor/dataset.py',
             "and all(lim in r['metrics'] and r['metrics'][lim] <= v for lim, v in limits)]", ']',
             ['tests/test_search.py::test_jsonl_table_reads_any_space_and_keeps_every_metric']),
    Mutation('edges may run backwards', 'neural_predictor/dataset.py',
             'if not 0 <= a < b < len(nodes):', 'if not (0 <= a < len(nodes) and 0 <= b < len(nodes)):',
             ['tests/test_search.py::test_a_bad_row_is_one_line_naming_its_line_and_exit_1']),
]


def project_files() -> List[str]:
    """The tracked files and the untracked ones git does not ignore."""
    out = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [p for p in out.splitlines() if os.path.isfile(os.path.join(ROOT, p))]


def scratch_copy(files: List[str]) -> str:
    folder = tempfile.mkdtemp(prefix='mutations-')
    for rel in files:
        os.makedirs(os.path.dirname(os.path.join(folder, rel)) or folder, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), os.path.join(folder, rel))
    return folder


def run_one(m: Mutation, folder: str) -> str:
    """'caught', 'MISSED', or 'stale' (the text is not in the file exactly once)."""
    path = os.path.join(folder, m.path)
    with open(path) as f:
        original = f.read()
    if original.count(m.old) != 1:
        return 'stale'
    with open(path, 'w') as f:
        f.write(original.replace(m.old, m.new))
    try:
        # -n 0: a few tests, in one process (pytest.ini would start a worker per core)
        run = subprocess.run([sys.executable, '-m', 'pytest', '-x', '-q', '-n', '0', '-p', 'no:cacheprovider',
                              *m.tests], cwd=folder, capture_output=True, text=True)
    finally:
        with open(path, 'w') as f:
            f.write(original)
    if run.returncode == 1:
        return 'caught'
    if run.returncode == 0:
        return 'MISSED'
    return f'error (pytest exit {run.returncode})'


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='More: docs/tests.md')
    ap.add_argument('--only', help='run the mutations whose name contains this text')
    ap.add_argument('--list', action='store_true', help='list the mutations and exit')
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or args.only.lower() in m.name.lower()]
    if args.list:
        for m in chosen:
            print(f'{m.name:50s} {m.path}')
        return 0
    if not chosen:
        print(f'tests/mutations.py: error: no mutation name contains {args.only!r} (see --list)', file=sys.stderr)
        return 1
    folder = scratch_copy(project_files())
    results = {}
    try:
        for m in chosen:
            start = time.perf_counter()
            results[m.name] = run_one(m, folder)
            print(f'{results[m.name]:8s} {m.name} ({time.perf_counter() - start:.0f} s)', flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    caught = sum(r == 'caught' for r in results.values())
    print(f'{caught} of {len(results)} caught' + ''.join(f'; {r}: {n}' for n, r in results.items() if r != 'caught'))
    return 0 if caught == len(results) else 1


if __name__ == '__main__':
    sys.exit(main())
