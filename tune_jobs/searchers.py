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
import json
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


def config_key(flat: dict) -> str:
    """One configuration's identity (its values, in key order)."""
    return json.dumps(flat, sort_keys=True, default=str)


def unseen_configuration(space: dict, seen: set[str], rng: np.random.Generator) -> dict | None:
    """One configuration of a finite ``space`` (every domain a choice) not in ``seen``, uniformly;
    None when every one has been."""
    names = list(space)
    left = [c for c in itertools.product(*(space[k].categories for k in names))
            if config_key(dict(zip(names, c))) not in seen]
    return dict(zip(names, left[rng.integers(len(left))])) if left else None


class RandomSearcher(_PickleState):
    """``points`` first, then independent samples of each Tune domain (seeded). On a finite space
    (every domain a choice) no configuration is drawn twice (syne-tune's random search keeps the
    same exclusion list); once all have been, the search is finished."""

    def __init__(self, space: dict, points: list[dict], seed: int | None, metric: str, mode: str):
        super().__init__(metric=metric, mode=mode)
        self.space, self.points, self.rng = space, list(points), np.random.default_rng(seed)
        self.distinct, self.seen = distinct_configurations(space), set()

    def suggest(self, trial_id: str) -> dict | None:
        if self.points:
            flat = self.points.pop(0)
            cfg = {**_sample({k: v for k, v in self.space.items() if k not in flat}, self.rng), **flat}
        elif self.distinct:
            cfg = next((c for c in (_sample(self.space, self.rng) for _ in range(64))  # rejection while
                        if config_key(c) not in self.seen), None)                # most is unseen
            cfg = cfg or unseen_configuration(self.space, self.seen, self.rng)
            if cfg is None:
                return Searcher.FINISHED
        else:
            cfg = _sample(self.space, self.rng)
        self.seen.add(config_key(cfg))
        return {NS: cfg}

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


def distinct_configurations(space: dict, limit: int = 1_000_000) -> int:
    """How many configurations ``space`` (Tune domains) holds when every one is a choice; 0 when
    any is continuous (or the count passes ``limit``: no repeat is then likely)."""
    from ray.tune.search.sample import Categorical

    n = 1
    for d in space.values():
        if not isinstance(d, Categorical):
            return 0
        n *= len(d.categories)
        if n > limit:
            return 0
    return n if space else 0


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
    A pausing ``scheduler``'s ``may_start_new`` is asked before each new configuration: Tune
    asks the searcher before the scheduler, and starts every pending trial.

    Tune saves no scheduler state (``Tuner.restore`` builds the scheduler afresh from tuner.pkl,
    and puts every unfinished trial back as pending), but it saves each search wrapper's
    ``get_state`` with the searcher's and restores it before it re-adds the trials: the
    scheduler's ``get_state`` travels here, so a resumed search knows its rungs and which trials
    wait at them (``PromotionASHA.on_trial_add`` pauses those again)."""

    def __init__(self, searcher: Searcher, max_concurrent: int, scheduler=None):
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.paused: set[str] = set()
        self.scheduler = scheduler if hasattr(scheduler, "may_start_new") else None

    def suggest(self, trial_id: str) -> dict | None:
        if len(self.live_trials - self.paused) >= self.max_concurrent:
            return None
        if self.scheduler is not None and not self.scheduler.may_start_new():
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
        scheduler, self.scheduler = self.scheduler, None  # Tune's, not the searcher's: only its state
        try:
            state = super().get_state()
        finally:
            self.scheduler = scheduler
        if scheduler is not None:
            state["scheduler_state"] = scheduler.get_state()
        return state

    def set_state(self, state: dict) -> None:
        state = dict(state)
        scheduler, saved = self.scheduler, state.pop("scheduler_state", None)
        super().set_state(state)
        self.scheduler = scheduler
        if scheduler is not None and saved is not None:
            scheduler.set_state(saved)  # the trials it holds paused stay paused
        else:  # Tune restores a paused trial as pending, to run again: it holds a slot again
            self.paused = set()

    def on_pause(self, trial_id: str) -> None:
        self.paused.add(trial_id)

    def on_unpause(self, trial_id: str) -> None:
        self.paused.discard(trial_id)
