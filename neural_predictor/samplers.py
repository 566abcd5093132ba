"""Optuna samplers that propose whole architectures: the search methods of ``search.py --space``.

Each sampler proposes all of a trial's parameters at once (Optuna's relative sampling), from the
finished trials that the study's storage holds, so it keeps no state of its own: a search killed
and run again, or one that several machines share, samples from the same history. None proposes
an architecture that a trial of the study already holds (finished, running or waiting).

- ``RandomSampler``: uniformly drawn architectures.
- ``EvolutionSampler``: regularized (aging) evolution, Real et al.
- ``PredictorSampler``: the predictor-guided loop of ``strategies.guided_search``, over any
  categorical search space.
- ``ProgressiveSampler``: PNAS's progressive search (Liu et al., Algorithm 1), for PNAS's space.

``PredictorSampler`` serves any Optuna study whose parameters are categorical::

    sampler = PredictorSampler(seed=0)
    study = optuna.create_study(direction='maximize', sampler=sampler)
    study.optimize(objective, n_trials=100)   # objective: trial.suggest_categorical(...) only

Without ``space`` it searches the parameters that every finished trial has (random trials until
there is one); a study to minimise is handled by ranking the other way.
"""
import collections
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from neural_predictor import pnas_space, strategies

Params = Dict[str, object]
PENDING = (TrialState.RUNNING, TrialState.WAITING)


def queued_params(t: FrozenTrial) -> Params:
    """A trial's parameters, or the ones it was queued with (``enqueue_trial``, the retry of a
    dead trial) while it waits to be asked for."""
    if t.state == TrialState.WAITING:
        return t.system_attrs.get('fixed_params') or {}
    return t.params


def key_of(params: Params) -> tuple:
    """Equal architectures, equal keys: the parameters in name order."""
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


class ArchitectureSampler(optuna.samplers.BaseSampler):
    """What every sampler here shares: the search space (given, or the parameters every finished
    trial has), the trials it learns from and the architectures it must not propose again. A
    subclass writes ``propose(space, done, seen) -> params``."""

    def __init__(self, space: Optional[Dict[str, BaseDistribution]] = None, seed: Optional[int] = None,
                 key: Callable[[Params], object] = key_of):
        self.space, self.key = space, key
        self.rng = np.random.RandomState(seed)
        self._independent = optuna.samplers.RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self.rng = np.random.RandomState()
        self._independent.reseed_rng()

    def infer_relative_search_space(self, study, trial) -> Dict[str, BaseDistribution]:
        if self.space is not None:
            return dict(self.space)
        common = optuna.search_space.intersection_search_space(study.get_trials(deepcopy=False))
        return {n: d for n, d in common.items() if isinstance(d, CategoricalDistribution)}

    def sample_relative(self, study, trial: FrozenTrial, search_space) -> Params:
        if not search_space:
            return {}
        trials = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        done = [(t.params, sign * t.value) for t in trials if t.state == TrialState.COMPLETE]
        seen = set()
        for t in trials:
            params = queued_params(t)
            if t.state in PENDING + (TrialState.COMPLETE, TrialState.FAIL) and params:
                try:
                    seen.add(self.key(params))
                except (KeyError, ValueError):  # a trial still being given its parameters elsewhere
                    pass
        return self.propose(search_space, done, seen)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._independent.sample_independent(study, trial, param_name, param_distribution)

    def propose(self, space, done, seen) -> Params:
        raise NotImplementedError

    def draw(self, space) -> Params:
        return {n: d.choices[self.rng.randint(len(d.choices))] for n, d in space.items()}

    def unseen(self, candidates: Sequence[Params], seen) -> List[Params]:
        out, keys = [], set(seen)
        for c in candidates:
            k = self.key(c)
            if k not in keys:
                keys.add(k)
                out.append(c)
        return out

    def fresh(self, space, seen, tries: int = 1000) -> Params:
        """A random architecture that no trial holds (a held one only when ``tries`` draws all are)."""
        for _ in range(tries):
            params = self.draw(space)
            if self.key(params) not in seen:
                return params
        return params

    def mutations(self, space, params: Params) -> List[Params]:
        """Every architecture with one parameter changed (parameters with one choice stay)."""
        out = []
        for name, dist in space.items():
            for value in dist.choices:
                if value != params.get(name):
                    changed = dict(params)
                    changed[name] = value
                    out.append(changed)
        return out


class RandomSampler(ArchitectureSampler):
    def propose(self, space, done, seen) -> Params:
        return self.fresh(space, seen)


class EvolutionSampler(ArchitectureSampler):
    """Aging evolution: the population is the ``population`` latest finished trials; the best of
    ``sample`` of them drawn at random is the parent, and the child changes one of its parameters
    at random (an untried child; a random architecture until the population is full)."""

    def __init__(self, population: int = 10, sample: int = 5, **kwargs):
        super().__init__(**kwargs)
        self.population, self.sample = population, sample

    def propose(self, space, done, seen) -> Params:
        if len(done) < self.population:
            return self.fresh(space, seen)
        members = done[-self.population:]
        picks = self.rng.choice(len(members), size=min(self.sample, len(members)), replace=False)
        parent = max((members[p] for p in sorted(picks)), key=lambda m: m[1])[0]
        children = self.unseen(self.mutations(space, {n: parent[n] for n in space if n in parent}), seen)
        if not children:
            return self.fresh(space, seen)
        return children[self.rng.randint(len(children))]


def one_hot(space: Dict[str, CategoricalDistribution], rows: Sequence[Params]) -> np.ndarray:
    """Each architecture as the one-hot of each parameter's choice, concatenated."""
    width = sum(len(d.choices) for d in space.values())
    out = np.zeros((len(rows), width), np.float32)
    for r, params in enumerate(rows):
        base = 0
        for name, dist in space.items():
            if name in params and params[name] in dist.choices:
                out[r, base + dist.choices.index(params[name])] = 1.0
            base += len(dist.choices)
    return out


class PredictorSampler(ArchitectureSampler):
    """The predictor-guided loop (``strategies.guided_search``) as a sampler: after ``initial``
    random architectures, an ensemble of small MLPs (``strategies.fit_ensemble``, on the rank of
    every finished trial) orders the untried one-change neighbours of the best architecture so
    far, and the best-predicted one is proposed; the best moves when a trial beats it. Where the
    best has no untried neighbour left, the proposal is the untried architecture among
    ``pool`` random ones that the ensemble rates highest by mean + ``explore`` x spread.
    ``encode`` turns architectures into features (default: ``one_hot``)."""

    def __init__(self, initial: int = 10, explore: float = 1.5, pool: int = 2000,
                 encode: Optional[Callable] = None, **kwargs):
        super().__init__(**kwargs)
        self.initial, self.explore, self.pool = initial, explore, pool
        self.encode = encode

    def features(self, space, rows) -> torch.Tensor:
        return torch.from_numpy(self.encode(rows) if self.encode else one_hot(space, rows))

    def propose(self, space, done, seen) -> Params:
        if len(done) < self.initial:
            return self.fresh(space, seen)
        rows = [{n: p[n] for n in space if n in p} for p, _ in done]
        values = np.array([v for _, v in done], np.float64)
        predict = strategies.ensemble(self.features(space, rows), strategies.rank_targets(values),
                                      int(self.rng.randint(2 ** 31)))
        best = rows[int(np.argmax(values))]
        queue = self.unseen(self.mutations(space, best), seen)
        if queue:
            return queue[int(np.argmax(predict(self.features(space, queue)).mean(0)))]
        pool = self.unseen([self.draw(space) for _ in range(self.pool)], seen)
        if not pool:
            return self.fresh(space, seen)
        scores = predict(self.features(space, pool))
        return pool[int(np.argmax(scores.mean(0) + self.explore * scores.std(0)))]


class ProgressiveSampler(ArchitectureSampler):
    """PNAS's progressive search (Liu et al., Algorithm 1) over PNAS's space of up to ``blocks``
    blocks: cells grow one block at a time, ``beam`` cells a size. The first ``beam`` cells are
    one-block cells drawn at random (the paper trains all 136; ``beam`` of them is what a small
    budget affords); then the children of the trained cells of b blocks (each with a block
    added) are ranked by a surrogate trained on every cell trained so far, and the ``beam`` best
    of b + 1 blocks are trained, and so on to ``blocks``. The surrogate is the paper's MLP
    ensemble (five MLPs on the block-averaged encoding, ``pnas_space.features``, here trained on
    ranks). Trials ask one at a time, so the surrogate is retrained for every proposal, not once
    a size: with several workers the beam fills as results arrive. Once ``beam`` cells of
    ``blocks`` blocks are trained, it goes on with the best-predicted untried full-size cell
    among the children of the trained cells of one block less and the neighbours of the best."""

    def __init__(self, blocks: int = pnas_space.BLOCKS, beam: int = 8, **kwargs):
        super().__init__(key=pnas_space.from_params, **kwargs)
        self.blocks, self.beam = blocks, beam

    def propose(self, space, done, seen) -> Params:
        cells = [(pnas_space.from_params(p), v) for p, v in done]
        held = collections.Counter(len(c) for c in seen)  # cells a trial holds, by size
        size = 1
        while size < self.blocks and held[size] >= self.beam:
            size += 1
        if size == 1:
            options = [c for c in pnas_space.one_block_cells() if c not in seen]
            return pnas_space.to_params(options[self.rng.randint(len(options))])
        parents = [c for c, _ in cells if len(c) == size - 1] or [c for c in seen if len(c) == size - 1]
        options = {child for p in parents for child in pnas_space.expand(p)}
        if size == self.blocks and held[size] >= self.beam:
            full = sorted(((v, c) for c, v in cells if len(c) == size), reverse=True)
            if full:
                options.update(pnas_space.neighbours(full[0][1]))
        options = sorted(options - seen)
        if not options:  # a random full-size cell
            return self.fresh({**space, 'blocks': CategoricalDistribution([self.blocks])}, seen)
        if not cells:
            return pnas_space.to_params(options[self.rng.randint(len(options))])
        x = torch.from_numpy(pnas_space.features([c for c, _ in cells], self.blocks))
        predict = strategies.ensemble(x, strategies.rank_targets(np.array([v for _, v in cells])),
                                      int(self.rng.randint(2 ** 31)))
        scores = predict(torch.from_numpy(pnas_space.features(options, self.blocks))).mean(0)
        return pnas_space.to_params(options[int(np.argmax(scores))])


def pnas_distributions(blocks: int, grow: bool) -> Dict[str, BaseDistribution]:
    """Optuna's distributions of PNAS's space: every block's parameters and ``blocks`` (the
    cell's size: ``blocks`` alone, or 1 to ``blocks`` where the search grows cells)."""
    out = {'blocks': CategoricalDistribution(list(range(1, blocks + 1)) if grow else [blocks])}
    out.update({n: CategoricalDistribution(c) for n, c in pnas_space.choices(blocks).items()})
    return out


def pnas_sampler(method: str, blocks: int, seed: Optional[int], beam: int) -> ArchitectureSampler:
    """The sampler of ``method`` over PNAS's space (what ``search.py --space pnas`` runs)."""
    key = pnas_space.from_params  # cells equal up to branch order are one
    space = pnas_distributions(blocks, grow=method == 'pnas')
    if method == 'pnas':
        return ProgressiveSampler(blocks=blocks, beam=beam, space=space, seed=seed)
    if method == 'random':
        return RandomSampler(space=space, seed=seed, key=key)
    if method == 'evolution':
        return EvolutionSampler(space=space, seed=seed, key=key)
    if method == 'predictor':
        def encode(rows):  # each parameter one-hot, of the canonical cell
            return one_hot(space, [pnas_space.to_params(pnas_space.from_params(p)) for p in rows])
        return PredictorSampler(space=space, seed=seed, key=key, encode=encode)
    raise ValueError(f'unknown method {method!r}')


def suggest_cell(trial: optuna.Trial, space: Dict[str, CategoricalDistribution]) -> pnas_space.Cell:
    """The trial's cell, asked of it parameter by parameter in ``space`` (``pnas_distributions``):
    its size, then each of its blocks."""
    params = {'blocks': trial.suggest_categorical('blocks', space['blocks'].choices)}
    for b in range(params['blocks']):
        for name in pnas_space.param_names(b):
            params[name] = trial.suggest_categorical(name, space[name].choices)
    return pnas_space.from_params(params)
