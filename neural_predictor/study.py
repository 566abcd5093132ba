"""A search of PNAS's cell space with real trainings, kept in an Optuna study (what
``search.py --space pnas`` runs).

Each trial trains one cell with ``train.py --dataset cifar10 --valid-size N`` in its own process
and is scored on N images held out of the training batches (never the test batch). The study in
its storage (SQLite by default, PostgreSQL or MySQL across machines) is the search's whole
state: the samplers (``samplers.py``) read their history from it, a worker keeps its running
trial's heartbeat, and a trial whose worker died is failed once its heartbeat is stale and
retried once with the same cell. So a search killed at any moment, SIGKILL included, goes on
where it was when it is run again, and the same command on another machine with the same storage
adds its workers to the study.
"""
import argparse
import ctypes
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional

import optuna
import sqlalchemy.exc
import torch
from optuna.trial import TrialState

import genotypes
import model
import utils
from neural_predictor import pnas_space, samplers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(ROOT, 'train.py')
METHODS = ('predictor', 'pnas', 'evolution', 'random')
# what a study keeps from the command that made it: running it again with other values would mix
# two searches in one study
KEPT = ('space', 'blocks', 'method', 'train_args', 'valid_size', 'seed', 'beam')


class SearchError(RuntimeError):
    """A user error: one line naming what is wrong and the fix."""


class TrainingFailed(RuntimeError):
    """A training that did not finish; the message is its error's last line."""


@dataclass
class Settings:
    data: str
    runs: str
    budget: int
    method: str = 'predictor'
    blocks: int = pnas_space.BLOCKS
    beam: Optional[int] = None
    workers: int = 1
    valid_size: int = 5000
    seed: int = 0
    heartbeat: int = 60
    train_args: List[str] = field(default_factory=list)
    space: str = 'pnas'

    def kept(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k in KEPT}


# --- the store ---------------------------------------------------------------------------------------

def open_study(url: str, name: str, settings: Settings) -> optuna.Study:
    """The study ``name`` in ``url``, created or loaded, with the heartbeat that fails a dead
    worker's trial and retries it once; refused where it was made by another search."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings('ignore', category=optuna.exceptions.ExperimentalWarning)
    # the heartbeat is kept here by each worker (Heartbeat), not by Study.optimize
    warnings.filterwarnings('ignore', message='Heartbeat of storage is supposed to be used')
    try:
        storage = optuna.storages.RDBStorage(
            url, heartbeat_interval=settings.heartbeat, grace_period=3 * settings.heartbeat,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
    except Exception as e:  # SQLAlchemy's errors for a bad URL or an unreachable server
        raise SearchError(f'--storage {url}: cannot open it ({type(e).__name__}: '
                          f'{str(e).splitlines()[0]})') from None
    beam = settings.beam or max(2, -(-settings.budget // settings.blocks))
    # each process draws its own random cells: two machines with one seed would draw the same
    sampler = samplers.pnas_sampler(settings.method, settings.blocks,
                                    (settings.seed * 1000003 + os.getpid()) % 2 ** 31, beam)
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler,
                                direction='maximize', load_if_exists=True)
    held = study.user_attrs.get('search')
    if held is None:
        study.set_user_attr('search', settings.kept())
    else:
        for key, value in settings.kept().items():
            if held.get(key) != value:
                raise SearchError(f'--study {name}: it was made with {key} {held.get(key)!r}, not '
                                  f'{value!r}; give another --study for another search')
    return study


def counts(trials: List[optuna.trial.FrozenTrial], before: Optional[int] = None) -> dict:
    """Trials by state (RUNNING ones only where numbered below ``before``)."""
    out = {s: 0 for s in TrialState}
    for t in trials:
        if t.state != TrialState.RUNNING or before is None or t.number < before:
            out[t.state] += 1
    return out


# --- one training ---------------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """In the child: killed when the worker that started it dies (Linux's PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def last_line(path: str) -> str:
    try:
        with open(path, errors='replace') as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return ''
    return lines[-1] if lines else ''


def train_cell(settings: Settings, cell: pnas_space.Cell, folder: str, gpu: Optional[str]) -> dict:
    """Trains ``cell`` with train.py in its own process, in ``folder``; its validation accuracy
    (the last epoch's, on the held-out images) and seconds. Raises TrainingFailed with the
    error's last line."""
    os.makedirs(folder, exist_ok=True)
    gfile = os.path.join(folder, 'genotype.json')
    utils.save_json(genotypes.to_dict(pnas_space.genotype(cell)), gfile)
    cmd = [sys.executable, TRAIN_PY, '--dataset', 'cifar10', '--data', settings.data,
           '--valid-size', str(settings.valid_size), '--genotype', gfile, '--output', folder,
           '--force', '--no-progress'] + list(settings.train_args)
    env = dict(os.environ)
    if gpu is not None:
        env['CUDA_VISIBLE_DEVICES'] = gpu
    elif settings.workers > 1:  # trainings side by side on the CPU share its cores
        env.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // settings.workers)))
    log = os.path.join(folder, 'train.log')
    start = time.time()
    with open(log, 'wb') as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                               preexec_fn=_die_with_parent)
    if code != 0:
        why = last_line(log) or (f'killed by signal {-code}' if code < 0 else f'exit status {code}')
        raise TrainingFailed(why + (' (out of memory?)' if code == -signal.SIGKILL else ''))
    try:
        with open(os.path.join(folder, 'log.jsonl')) as f:
            record = json.loads([ln for ln in f if ln.strip()][-1])
    except (OSError, ValueError, IndexError) as e:
        raise TrainingFailed(f'{folder}/log.jsonl: no epoch recorded ({e})') from None
    return {'accuracy': float(record['val_prec1']), 'seconds': time.time() - start}


def costs(cell: pnas_space.Cell, train_args: List[str]) -> dict:
    """Parameters (without the aux head) and multiply-adds per image of the network train.py
    builds for ``cell`` with these options (counted on the meta device)."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument('--filters', type=int)
    ap.add_argument('--cells', type=int)
    ap.add_argument('--stem-multiplier', type=float)
    known, _ = ap.parse_known_args(train_args)
    overrides = {k: v for k, v in (('num_conv_filters', known.filters), ('num_cells', known.cells),
                                   ('stem_multiplier', known.stem_multiplier)) if v is not None}
    config = model.PNASNetConfig.cifar(genotype=genotypes.to_dict(pnas_space.genotype(cell)), **overrides)
    with torch.device('meta'):
        net = model.build_network(config).eval()
    params, mult_adds = utils.count_costs(net, config.image_size)
    return {'parameters': params, 'multiply_adds': mult_adds}


def fail_unborn(study: optuna.Study, seconds: float) -> None:
    """Fails the trials whose worker died between asking for the trial and its first heartbeat
    (Optuna's heartbeat never finds those): running for ``seconds`` without a cell. A live
    worker gives its trial a cell within moments of asking."""
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if 'genotype' not in t.user_attrs and t.datetime_start is not None \
                and (now - t.datetime_start).total_seconds() > seconds:
            try:
                study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker did it first, or the trial finished after all


# --- the workers -----------------------------------------------------------------------------------------

class Heartbeat(threading.Thread):
    """Records a running trial's heartbeat until stopped (what tells the study the worker lives)."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, interval: float):
        super().__init__(daemon=True)
        self.storage, self.trial_id, self.interval = study._storage, trial._trial_id, interval
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError):
                pass  # a busy database (SQLite's lock) or a dropped connection: beat again next time


class Search:
    """Runs the study's trials in ``settings.workers`` threads (one training process each, one
    GPU each where there are GPUs) until the study holds ``settings.budget`` complete trials."""

    def __init__(self, study: optuna.Study, settings: Settings, train: Callable = train_cell,
                 say: Callable[[str], None] = print, poll: float = 1.0):
        self.study, self.settings, self.train, self.poll = study, settings, train, poll
        self.say_lock, self.ask_lock = threading.Lock(), threading.Lock()
        self._say = say
        self.failures_in_a_row = 0
        self.error: Optional[BaseException] = None
        self.space = samplers.pnas_distributions(settings.blocks, grow=settings.method == 'pnas')
        visible = os.environ.get('CUDA_VISIBLE_DEVICES')
        if visible is not None:
            self.gpus = [g for g in visible.split(',') if g.strip()]
        else:
            self.gpus = [str(i) for i in range(torch.cuda.device_count())]

    def say(self, text: str) -> None:
        with self.say_lock:
            self._say(text)

    def run(self) -> None:
        threads = [threading.Thread(target=self._worker, args=(k,), daemon=True)
                   for k in range(self.settings.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.error is not None:
            raise self.error

    def _worker(self, slot: int) -> None:
        gpu = self.gpus[slot % len(self.gpus)] if self.gpus else None
        try:
            while self.error is None and self._one_trial(gpu):
                pass
        except BaseException as e:  # noqa: B902: the first error ends every worker
            self.error = self.error or e

    def _one_trial(self, gpu: Optional[str]) -> bool:
        """Runs one trial, or waits while the budget is taken by running ones; False when done."""
        study, budget = self.study, self.settings.budget
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, retried once
        fail_unborn(study, 3 * self.settings.heartbeat + 30)
        c = counts(study.get_trials(deepcopy=False))
        if c[TrialState.COMPLETE] >= budget:
            return False
        if c[TrialState.COMPLETE] + c[TrialState.RUNNING] >= budget:
            time.sleep(self.poll)
            return True
        with self.ask_lock:
            trial = study.ask()
            study._storage.record_heartbeat(trial._trial_id)
            # beating from the start: drawing the cell and waiting for other processes' draws
            # can outlast the grace period, and another worker would fail a live trial
            beat = Heartbeat(study, trial, self.settings.heartbeat)
            beat.start()
        try:
            cell = samplers.suggest_cell(trial, self.space)
            reason = self._not_to_train(trial, cell)
            if reason:
                trial.set_user_attr('skipped', reason)
                study.tell(trial, state=TrialState.PRUNED)
            else:
                self._train(trial, cell, gpu)
        except optuna.exceptions.UpdateFinishedTrialError:
            self.say(f'trial {trial.number}: its heartbeat came late and another worker failed it '
                     f'(its retry trains the cell again); a longer --heartbeat avoids that')
        finally:
            beat.done.set()
        return True

    def _not_to_train(self, trial: optuna.Trial, cell) -> Optional[str]:
        """Why this trial must not train: its cell is another's (a race between machines), or the
        budget is taken (another process asked at the same moment)."""
        trials = self.drawn_before(trial.number)
        c = counts(trials, before=trial.number)
        if c[TrialState.COMPLETE] + c[TrialState.RUNNING] >= self.settings.budget:
            return 'over the budget'
        origin = next(t for t in trials if t.number == trial.number).system_attrs.get('failed_trial')
        for t in trials:  # two workers that found the same dead trial both queued its retry
            if origin is not None and t.number < trial.number and t.system_attrs.get('failed_trial') == origin:
                return f'trial {t.number} retries trial {origin} already'
        for t in trials:
            if t.number == trial.number:
                continue
            # an earlier trial still queued (a dead trial's retry, not yet asked for) holds its
            # cell too: whoever asks for it later trains it
            live = t.state == TrialState.COMPLETE or (
                t.state in (TrialState.RUNNING, TrialState.WAITING) and t.number < trial.number)
            if live and pnas_space.cell_of(samplers.queued_params(t)) == cell:
                return f'the cell of trial {t.number}'
        return None

    def drawn_before(self, number: int, wait: float = 10.0) -> List[optuna.trial.FrozenTrial]:
        """The study's trials once every earlier running one has its whole cell: another
        process may be drawing one at this moment, and it could be this cell."""
        end = time.time() + wait
        while True:
            trials = self.study.get_trials(deepcopy=False)
            drawing = [t for t in trials if t.number < number and t.state == TrialState.RUNNING
                       and pnas_space.cell_of(t.params) is None]
            if not drawing or time.time() > end:
                return trials
            time.sleep(0.1)

    def _train(self, trial: optuna.Trial, cell, gpu: Optional[str]) -> None:
        trial.set_user_attr('genotype', genotypes.to_dict(pnas_space.genotype(cell)))
        trial.set_user_attr('blocks', len(cell))
        trial.set_user_attr('costs', costs(cell, self.settings.train_args))
        folder = os.path.join(self.settings.runs, self.study.study_name, f'trial_{trial.number:05d}')
        trial.set_user_attr('folder', folder)
        self._record(trial, cell, folder, gpu)

    def _record(self, trial: optuna.Trial, cell, folder: str, gpu: Optional[str]) -> None:
        try:
            result = self.train(self.settings, cell, folder, gpu)
        except TrainingFailed as e:
            trial.set_user_attr('error', str(e))
            self.study.tell(trial, state=TrialState.FAIL)
            self.failures_in_a_row += 1
            self.say(f'trial {trial.number}: failed: {e}')
            if self.failures_in_a_row >= 3:
                raise SearchError(f'{self.failures_in_a_row} trainings failed in a row; the last: {e}') from None
            return
        self.failures_in_a_row = 0
        trial.set_user_attr('seconds', result['seconds'])
        twin = next((t.number for t in complete_trials(self.study) if pnas_space.cell_of(t.params) == cell), None)
        if twin is not None:  # two machines drew it in the same instant: the study keeps one
            trial.set_user_attr('skipped', f'the cell of trial {twin}, trained at the same time')
            self.study.tell(trial, state=TrialState.PRUNED)
            return
        self.study.tell(trial, result['accuracy'])
        self.report(trial.number, result['accuracy'])

    def report(self, number: int, accuracy: float) -> None:
        done = [t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        best = max(t.value for t in done)
        left = max(0, self.settings.budget - len(done))
        self.say(f'trial {number}: {100 * accuracy:.2f} % (best {100 * best:.2f} %), '
                 f'{left} of {self.settings.budget} trials left')


# --- what the user takes away -------------------------------------------------------------------------------

def complete_trials(study: optuna.Study) -> List[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


def export_rows(study: optuna.Study) -> List[dict]:
    """The ``{"genotype", "accuracy"}`` rows (``--table`` reads them) of the complete trials, with
    their trial number, parameters and multiply-adds."""
    return [{'genotype': t.user_attrs['genotype'], 'accuracy': t.value, 'trial': t.number,
             **t.user_attrs.get('costs', {}), 'seconds': t.user_attrs.get('seconds')}
            for t in complete_trials(study)]


def best_entry(study: optuna.Study, blocks: int) -> Optional[str]:
    """The best complete full-size cell (any size where none is) as a genotypes.py entry."""
    done = complete_trials(study)
    full = [t for t in done if t.user_attrs.get('blocks') == blocks] or done
    if not full:
        return None
    best = max(full, key=lambda t: t.value)
    cell = pnas_space.from_params(best.params)
    name = ''.join(ch for ch in study.study_name.title() if ch.isalnum())
    name = name if name[:1].isalpha() else 'Searched' + name  # a Python name
    return (f'# trial {best.number} of study {study.study_name}: validation accuracy '
            f'{100 * best.value:.2f} %\n' + pnas_space.genotype_entry(cell, f'{name}Cell'))
