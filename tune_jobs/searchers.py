"""Searchers that know the job: named trials, grid, random, and constraints checked before a trial.

Every searcher a job uses is a Tune ``Searcher`` (HyperOpt's, or ``RandomSearcher`` /
``GridSearcher`` below), wrapped in ``JobSearcher``, which rejects a suggestion that breaks a
constraint between parameters (``attention_heads`` divides ``hidden_dim``) and asks again before
any trial starts. Tune's ``BasicVariantGenerator`` cannot reject a sample and is not a
``Searcher``, which is why random and grid search are written here (each is a few lines over
Tune's own domains). All state pickles, so ``Tuner.restore`` continues the search where it was
(the searcher state file in the experiment directory), never from a fresh searcher.
"""
from __future__ import annotations

import itertools
import logging
import pickle
from typing import Any

import numpy as np
from ray.tune.search import ConcurrencyLimiter, Searcher

from tune_jobs.expr import evaluate

log = logging.getLogger(__name__)
NS = "train_loop_config"  # Tune's config namespace of a Trainer's loop config


def _sample(space: dict, rng: np.random.Generator) -> dict:
    return {k: d.sample(random_state=rng) for k, d in space.items()}


class _PickleState(Searcher):
    def get_state(self) -> dict:
        return dict(self.__dict__)

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))


class RandomSearcher(_PickleState):
    """``points`` first, then independent samples of each Tune domain (seeded)."""

    def __init__(self, space: dict, points: list[dict], seed: int | None, metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self.space, self.points, self.rng = space, list(points), np.random.default_rng(seed)

    def suggest(self, trial_id: str) -> dict | None:
        flat = self.points.pop(0) if self.points else {}
        return {NS: {**_sample({k: v for k, v in self.space.items() if k not in flat}, self.rng), **flat}}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


class GridSearcher(_PickleState):
    """Every named trial x every combination of the grid dimensions, in order; other dimensions are
    sampled. Named trials (seed 001's experiments) carry their name as ``experiment``."""

    def __init__(self, space: dict, grid: dict[str, list], trials: dict[str, dict], points: list[dict],
                 seed: int | None, metric: str, mode: str, repeats: int = 1):
        super().__init__(metric=metric, mode=mode)
        named = [{"experiment": n, **p} for n, p in trials.items()] or [{}]
        combos = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())] or [{}]
        self.queue = list(points) + [{**c, **n} for _ in range(repeats) for n in named for c in combos]
        self.space, self.rng = space, np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.queue)

    def suggest(self, trial_id: str) -> dict | None:
        if not self.queue:
            return Searcher.FINISHED
        flat = self.queue.pop(0)
        return {NS: {**_sample({k: v for k, v in self.space.items() if k not in flat}, self.rng), **flat}}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


class JobSearcher(Searcher):
    """Checks each suggestion against the job's constraints (with the job's fixed params filled in);
    a breaking one is reported to the inner searcher as an error and another is asked for."""

    MAX_TRIES = 200

    def __init__(self, searcher: Searcher, constraints: list[str], fixed: dict):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.constraints, self.fixed = searcher, list(constraints), dict(fixed)
        self.inner_id: dict[str, str] = {}
        self.rejected: list[dict] = []  # every rejected config, in order (kept in the searcher state)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def broken(self, flat: dict) -> str | None:
        env = {**self.fixed, **flat}
        for c in self.constraints:
            if not evaluate(c, env):
                return c
        return None

    def suggest(self, trial_id: str) -> dict | None:
        for k in range(self.MAX_TRIES):
            tid = trial_id if k == 0 else f"{trial_id}~{k}"
            cfg = self.searcher.suggest(tid)
            if cfg is None or cfg == Searcher.FINISHED:
                return cfg
            why = self.broken(cfg[NS])
            if why is None:
                self.inner_id[trial_id] = tid
                return cfg
            self.rejected.append({"config": cfg[NS], "constraint": why})
            log.warning("rejected before start (breaks %r): %s", why, cfg[NS])
            self.searcher.on_trial_complete(tid, None, error=True)
        raise RuntimeError(f"{self.MAX_TRIES} suggestions in a row broke the constraints {self.constraints}; "
                           "the search space and the constraints leave (almost) nothing")

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(self.inner_id.get(trial_id, trial_id), result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(self.inner_id.pop(trial_id, trial_id), result, error)

    def get_state(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "searcher"}

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


def grid_size(grid: dict[str, list], trials: dict[str, Any], points: list) -> int:
    n = 1
    for v in grid.values():
        n *= len(v)
    return len(points) + n * max(1, len(trials))


class SlotLimiter(ConcurrencyLimiter):
    """Tune's ``ConcurrencyLimiter``, but a trial a scheduler has paused holds no slot: with
    promotion ASHA every slot can be free while all started trials wait at their rungs, and the
    plain limiter would then suggest nothing more (the search would stall). Schedulers say so
    through the searcher's ``on_pause``/``on_unpause``, as Ray's ``HyperBandForBOHB`` does.
    ``gate()`` (the scheduler's ``may_start_new``) is asked before each new configuration: Tune
    asks the searcher before the scheduler, and starts every pending trial."""

    def __init__(self, searcher: Searcher, max_concurrent: int, gate=None):
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.paused: set[str] = set()
        self.gate = gate

    def suggest(self, trial_id: str) -> dict | None:
        if len(self.live_trials - self.paused) >= self.max_concurrent:
            return None
        if self.gate is not None and not self.gate():
            return None
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, Searcher.FINISHED):
            self.live_trials.add(trial_id)
            self.num_unfinished_live_trials += 1
        return suggestion

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.paused.discard(trial_id)
        super().on_trial_complete(trial_id, result, error)

    def get_state(self) -> dict:
        gate, self.gate = self.gate, None  # the scheduler's method: not the searcher's state
        try:
            return super().get_state()
        finally:
            self.gate = gate

    def set_state(self, state: dict) -> None:
        gate = self.gate
        super().set_state(state)
        # Tune restores a paused trial as pending, to run again: it holds a slot again
        self.gate, self.paused = gate, set()

    def on_pause(self, trial_id: str) -> None:
        self.paused.add(trial_id)

    def on_unpause(self, trial_id: str) -> None:
        self.paused.discard(trial_id)
