"""search.py --space pnas: PNAS's cell space, the Optuna samplers on an objective with a known
optimum, the study runner (budget, failed trainings, studies that must not mix) and the command
itself with real train.py trainings on generated CIFAR-10 files: two processes on one SQLite
store, a SIGKILL in the middle, the dead worker's trials failed by the heartbeat and retried."""
import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import optuna
import pytest
import torch

import genotypes
import model
from neural_predictor import dataset, pnas_space, samplers, study as study_mod
from neural_predictor.tools.sampler_comparison import Synthetic, study_of
from test_cifar import write_cifar10

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- the space ----------------------------------------------------------------------------------------

@pytest.mark.quick
def test_the_space_is_pnas_cells_in_genotypes_format():
    cell = pnas_space.from_genotype(genotypes.PNASNet)
    assert len(cell) == 5 and pnas_space.genotype(cell).normal_concat == [2, 3, 4, 5, 6]
    # a block's two branches in either order are one cell
    swapped = tuple((b[1], b[0]) for b in cell)
    assert pnas_space.canonical(swapped) == cell
    # 16 branches for a first block (2 inputs x 8 ops), unordered pairs with repeats: 136
    assert len(pnas_space.one_block_cells()) == 16 * 17 // 2 == len(set(pnas_space.one_block_cells()))
    assert set(pnas_space.OPS) <= set(genotypes.PRIMITIVES) and len(pnas_space.OPS) == 8
    # a neighbour differs in exactly one branch (an input or an op); PNASNet's has no repeats
    for other in pnas_space.neighbours(cell):
        changed = [(a, b) for a, b in zip(cell, other) if a != b]
        assert len(changed) == 1
        (x1, x2), (y1, y2) = changed[0]
        assert len({x1, x2} ^ {y1, y2}) in (1, 2) and sum(a != b for a, b in zip((x1, x2), (y1, y2))) <= 2
    # the entry pastes into genotypes.py: it builds the same genotype, and the network runs
    namespace = {'Genotype': genotypes.Genotype}
    exec(pnas_space.genotype_entry(cell, 'Mine'), namespace)
    assert genotypes.get(namespace['Mine']) == pnas_space.genotype(cell)
    net = model.build_network(model.PNASNetConfig.cifar(
        genotype=genotypes.to_dict(pnas_space.genotype(cell[:2])), num_conv_filters=4, num_cells=3))
    assert net.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match='outside PNAS'):
        pnas_space.check((((2, 'sep_conv_3x3'), (0, 'skip_connect')),))


# --- the samplers on a synthetic objective ---------------------------------------------------------------

BLOCKS = 5
TOY = Synthetic(BLOCKS)


def synthetic(cell) -> float:
    return TOY.score(cell)


def best_found(method: str, seed: int, trials: int) -> float:
    study = study_of(method, TOY, seed, trials)
    cells = [t.user_attrs['cell'] for t in study.trials]
    assert len(set(cells)) == len(cells), f'{method} proposed a cell twice'
    if method == 'pnas':  # grown a block at a time, the beam of each size trained before the next
        sizes = [len(c) for c in cells]
        assert sizes == sorted(sizes) and set(sizes) == set(range(1, BLOCKS + 1))
    else:
        assert {len(c) for c in cells} == {BLOCKS}
    return study.best_value


def test_every_sampler_finds_better_cells_than_random_search():
    """On a synthetic objective with a known optimum (tools/sampler_comparison.py), the mean
    best cell over seeds, against random search's with the same trials and seeds."""
    optimum = TOY.optimum
    # evolution is cheap but needs its population (10) first; the ensembles cost a fit a trial
    random30, evolution30 = ([best_found(m, s, 30) for s in range(4)] for m in ('random', 'evolution'))
    assert np.mean(evolution30) > np.mean(random30), (evolution30, random30)
    random20 = [best_found('random', s, 20) for s in range(2)]
    for method in ('predictor', 'pnas'):
        found = [best_found(method, s, 20) for s in range(2)]
        assert np.mean(found) > np.mean(random20), (method, found, random20)
        assert max(found) < optimum


def test_the_predictor_sampler_serves_any_categorical_study():
    """Anyone's Optuna study over categorical parameters: no search space given, no repeats."""
    def objective(trial):
        x = [trial.suggest_categorical(f'x{i}', ['a', 'b', 'c', 'd']) for i in range(4)]
        return sum({'a': 0, 'b': 1, 'c': 3, 'd': 2}[v] for v in x)
    sampler = samplers.PredictorSampler(seed=0, initial=5)
    study = optuna.create_study(direction='maximize', sampler=sampler)
    study.optimize(objective, n_trials=12)
    keys = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(keys)) == len(keys)
    assert study.best_value >= 10  # the optimum is 12
    down = optuna.create_study(direction='minimize', sampler=samplers.PredictorSampler(seed=0, initial=5))
    down.optimize(objective, n_trials=12)
    assert down.best_value <= 2


# --- the runner, with a stand-in training ---------------------------------------------------------------

def settings(tmp_path, **kw):
    values = dict(data=str(tmp_path), runs=str(tmp_path / 'runs'), budget=5, method='random',
                  blocks=2, workers=2, valid_size=10, heartbeat=60, train_args=['--epochs', '1'])
    values.update(kw)
    return study_mod.Settings(**values)


def fake_training(failing=()):
    trained, gpus = [], []

    def train(settings, cell, folder, gpu):
        trained.append(cell)
        gpus.append(gpu)
        if cell in failing or len(trained) in failing:
            raise study_mod.TrainingFailed('RuntimeError: CUDA out of memory (a stand-in)')
        return {'accuracy': synthetic(cell) / 100.0, 'seconds': 0.0}
    train.gpus = gpus
    return train, trained


@pytest.mark.quick
@pytest.mark.parametrize('method', study_mod.METHODS)
def test_each_method_runs_a_study_to_its_budget(tmp_path, method, monkeypatch):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '3,5')  # worker k trains on the k-th of them
    s = settings(tmp_path, method=method, budget=6)
    study = study_mod.open_study(f'sqlite:///{tmp_path}/s.db', 's', s)
    train, trained = fake_training()
    lines = []
    study_mod.Search(study, s, train=train, say=lines.append, poll=0.05).run()
    done = study_mod.complete_trials(study)
    assert len(done) == 6 == len(trained) == len(set(trained))
    assert set(train.gpus) <= {'3', '5'} and train.gpus  # one GPU a worker, never all of them
    assert len(lines) == 6 and lines[-1].endswith('0 of 6 trials left')
    for t in done:
        g = genotypes.get(t.user_attrs['genotype'])
        assert pnas_space.from_genotype(g) in trained
        assert t.user_attrs['costs']['parameters'] > 0 and t.user_attrs['costs']['multiply_adds'] > 0
    rows = study_mod.export_rows(study)
    assert [r['accuracy'] for r in rows] == [t.value for t in done]
    assert 'Genotype(normal=' in study_mod.best_entry(study, 2)


def test_a_failed_training_is_recorded_and_the_search_goes_on(tmp_path):
    s = settings(tmp_path, budget=4, workers=1)
    study = study_mod.open_study(f'sqlite:///{tmp_path}/s.db', 's', s)
    train, trained = fake_training(failing={2})
    study_mod.Search(study, s, train=train, say=lambda line: None, poll=0.05).run()
    failed = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.FAIL]
    assert len(study_mod.complete_trials(study)) == 4 and len(trained) == 5
    assert len(failed) == 1 and 'out of memory' in failed[0].user_attrs['error']
    # a cell whose training failed is not proposed again
    assert pnas_space.from_genotype(genotypes.get(failed[0].user_attrs['genotype'])) not in trained[2:]
    # trainings that all fail end the search in one line, not a loop
    s2 = settings(tmp_path, budget=4, workers=1)
    study2 = study_mod.open_study(f'sqlite:///{tmp_path}/s.db', 's2', s2)
    train, _ = fake_training(failing=set(range(1, 100)))
    with pytest.raises(study_mod.SearchError, match='3 trainings failed in a row; the last: RuntimeError'):
        study_mod.Search(study2, s2, train=train, say=lambda line: None, poll=0.05).run()
    # the first study is untouched by the second: two studies never mix
    assert len(study_mod.complete_trials(optuna.load_study(study_name='s', storage=f'sqlite:///{tmp_path}/s.db'))) == 4


def test_a_fresh_draw_of_a_queued_retrys_cell_is_not_trained_twice(tmp_path):
    """A dead trial's retry waits in the queue with its cell; a fresh trial that draws the same
    cell before anyone asks for the retry yields to it (the retry, numbered first, trains it),
    and a sampler does not propose that cell while it waits."""
    s = settings(tmp_path, budget=6, workers=1)
    study = study_mod.open_study(f'sqlite:///{tmp_path}/s.db', 's', s)
    search = study_mod.Search(study, s, train=fake_training()[0], say=lambda line: None)
    cell = pnas_space.check([((0, 'sep_conv_3x3'), (1, 'max_pool_3x3')), ((2, 'skip_connect'), (0, 'avg_pool_3x3'))])
    study.enqueue_trial(pnas_space.to_params(cell))
    dead = study.ask()
    assert samplers.suggest_cell(dead, search.space) == cell
    study._storage.set_trial_state_values(dead._trial_id, state=optuna.trial.TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, study.trials[dead.number])
    retry = study.trials[-1]
    assert retry.state == optuna.trial.TrialState.WAITING and retry.system_attrs['failed_trial'] == dead.number
    seen = []
    proposer = samplers.RandomSampler(space=search.space, seed=0, key=pnas_space.from_params)
    proposer.propose = lambda space, done, keys: seen.extend(keys) or proposer.fresh(space, keys)
    # another process asks for a fresh trial and draws the same cell
    fresh_id = study._storage.create_new_trial(study._study_id)
    proposer.sample_relative(study, study._storage.get_trial(fresh_id), search.space)
    assert cell in seen  # the queued retry's cell is taken
    study._storage.set_trial_system_attr(fresh_id, 'fixed_params', pnas_space.to_params(cell))
    fresh = optuna.Trial(study, fresh_id)
    assert samplers.suggest_cell(fresh, search.space) == cell and fresh.number > retry.number
    assert search._not_to_train(fresh, cell) == f'the cell of trial {retry.number}'
    study.tell(fresh, state=optuna.trial.TrialState.PRUNED)
    asked = study.ask()  # the queued retry comes first, and it trains
    assert asked.number == retry.number and samplers.suggest_cell(asked, search.space) == cell
    assert search._not_to_train(asked, cell) is None


def test_a_trial_failed_by_another_worker_before_it_trains_costs_one_line(tmp_path):
    """Another worker may fail a trial as stale while its cell is drawn or checked (a slow draw,
    a wait for another process): the search says so and goes on, it does not end."""
    s = settings(tmp_path, budget=2, workers=1)
    study = study_mod.open_study(f'sqlite:///{tmp_path}/s.db', 's', s)
    lines = []
    search = study_mod.Search(study, s, train=fake_training()[0], say=lines.append, poll=0.05)
    check = search.drawn_before

    def failed_meanwhile(number, wait=10.0):
        if number == 0:
            trial = next(t for t in study.get_trials(deepcopy=False) if t.number == 0)
            study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
        return check(number, wait)
    search.drawn_before = failed_meanwhile
    search.run()
    assert lines[0].startswith('trial 0: its heartbeat came late and another worker failed it')
    assert len(study_mod.complete_trials(study)) == 2 and len(lines) == 3


def test_the_heartbeat_beats_on_after_a_busy_database_and_stops_on_a_bug(monkeypatch):
    """The storage's own errors (SQLite's lock, a dropped connection) cost one beat; any other
    error is a bug, and ends the thread where Python reports it."""
    calls, reported = [], []

    class Storage:
        def __init__(self, error):
            self.error = error

        def record_heartbeat(self, trial_id):
            calls.append(trial_id)
            if len(calls) in (1, 2):
                raise self.error

    monkeypatch.setattr(study_mod.threading, 'excepthook', reported.append)
    busy = optuna.exceptions.StorageInternalError('database is locked (a stand-in)')
    for error, beats in ((busy, 5), (ValueError('a bug (a stand-in)'), 1)):
        calls.clear()
        beat = study_mod.Heartbeat(types.SimpleNamespace(_storage=Storage(error)),
                                   types.SimpleNamespace(_trial_id=7), 0.01)
        beat.start()
        end = time.time() + 10
        while len(calls) < beats and time.time() < end:
            time.sleep(0.01)
        time.sleep(0.1)
        beat.done.set()
        beat.join(5)
        assert calls[:beats] == [7] * beats and not beat.is_alive()
    assert len(reported) == 1 and reported[0].exc_type is ValueError


@pytest.mark.quick
def test_a_study_made_by_another_search_is_refused(tmp_path):
    url = f'sqlite:///{tmp_path}/s.db'
    study_mod.open_study(url, 's', settings(tmp_path))
    study_mod.open_study(url, 's', settings(tmp_path, budget=9, workers=1))  # more budget, fewer workers: fine
    with pytest.raises(study_mod.SearchError, match="--study s: it was made with method 'random', not 'pnas'"):
        study_mod.open_study(url, 's', settings(tmp_path, method='pnas'))
    with pytest.raises(study_mod.SearchError, match='train_args'):
        study_mod.open_study(url, 's', settings(tmp_path, train_args=['--epochs', '2']))


# --- the command, with real trainings ------------------------------------------------------------------

def command(data, tmp_path, *extra):
    return [sys.executable, os.path.join(ROOT, 'neural_predictor', 'search.py'), '--space', 'pnas',
            '--data', data, '--storage', f'sqlite:///{tmp_path}/S.db', '--study', 's1',
            '--method', 'predictor', '--budget', '6', '--workers', '2', '--runs', str(tmp_path / 'runs'),
            *extra, '--', '--epochs', '1', '--filters', '4', '--cells', '3', '--batch-size', '16']


def children(pid: int):
    out = []
    for entry in os.listdir('/proc'):
        try:
            with open(f'/proc/{entry}/stat') as f:
                if entry.isdigit() and int(f.read().rsplit(')', 1)[1].split()[1]) == pid:
                    out.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return out


def wait_for(condition, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return True
        time.sleep(0.2)
    raise AssertionError('timed out')


def states(url):
    try:
        return [t.state for t in optuna.load_study(study_name='s1', storage=url).trials]
    except Exception:  # the study is not there yet
        return []


def test_killed_command_and_two_processes_on_one_store_end_with_the_budget(tmp_path):
    """SIGKILL the command mid-trial; run it again twice at once on the same SQLite store: the
    budget's 6 trials complete, each cell once, the killed trainings are failed by the heartbeat
    and retried once, no finished one is trained again, and the export holds the 6 rows."""
    data = write_cifar10(tmp_path / 'c10', n_train=100, n_test=10)
    url = f'sqlite:///{tmp_path}/S.db'
    first = subprocess.Popen(command(data, tmp_path, '--heartbeat', '2'), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=ROOT)
    wait_for(lambda: states(url).count(optuna.trial.TrialState.COMPLETE) >= 1 and children(first.pid))
    trainings = children(first.pid)
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_for(lambda: not any(os.path.exists(f'/proc/{p}') for p in trainings), 10)  # they died with it
    reruns = [subprocess.Popen(command(data, tmp_path, '--heartbeat', '2', '--export', str(tmp_path / f'runs{k}.json')),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, text=True) for k in range(2)]
    outs = [p.communicate(timeout=300) for p in reruns]
    assert [p.returncode for p in reruns] == [0, 0], [o[-3000:] for out in outs for o in out]
    study = optuna.load_study(study_name='s1', storage=url)
    done = study_mod.complete_trials(study)
    cells = [pnas_space.from_genotype(genotypes.get(t.user_attrs['genotype'])) for t in done]
    assert len(done) == 6 and len(set(cells)) == 6
    table = [(t.number, t.state.name, t.system_attrs.get('failed_trial'), t.user_attrs.get('skipped'),
              'genotype' in t.user_attrs) for t in study.trials]
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    errors = [t.user_attrs.get('error') for t in failed]
    assert failed and not any(errors), (table, errors)  # the heartbeat's failures, not a training's
    # a trial trained where its own folder has a training's log (a retry copies its dead
    # trial's attributes, its folder's name among them, until it trains in one of its own)
    trained = {t.number for t in study.trials
               if os.path.exists(tmp_path / 'runs' / 's1' / f'trial_{t.number:05d}' / 'train.log')}
    finished = {t.number for t in done}
    # every complete trial trained once; nothing trained but them and the killed ones
    assert finished <= trained <= finished | {t.number for t in failed}, table
    retried = 0
    for t in failed:
        # both processes may find the dead trial and queue a retry: the second is skipped (or
        # left waiting once the budget is full); the first trains the same cell, where the
        # trial was killed after its cell was drawn
        retries = [r for r in study.trials if r.system_attrs.get('failed_trial') == t.number
                   and r.number in trained]
        assert len(retries) <= 1, table
        assert 'genotype' not in t.user_attrs or all(r.params == t.params for r in retries), table
        retried += len(retries)
    assert retried >= 1, table
    table_rows = dataset.read_genotype_table(str(tmp_path / 'runs0.json'), genotypes.get)  # what --table reads
    assert len(table_rows) == 6
    for k in range(2):
        rows = json.load(open(tmp_path / f'runs{k}.json'))
        assert sorted(r['trial'] for r in rows) == sorted(t.number for t in done)
        assert all(genotypes.get(r['genotype']) and 0.0 <= r['accuracy'] <= 1.0 for r in rows)
    for t in done:  # validated on the held-out tenth of the 100 training images, not the test batch
        assert '90 training and 10 val images' in open(os.path.join(t.user_attrs['folder'], 'train.log')).read()
        g = genotypes.load(os.path.join(t.user_attrs['folder'], 'genotype.json'))
        assert genotypes.to_dict(g) == t.user_attrs['genotype']
    assert any('Genotype(normal=' in out for out, _ in outs)
