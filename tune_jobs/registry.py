"""Searchers and schedulers by name (syne-tune's searcher_factory pattern, lazy imports)."""
from __future__ import annotations

from typing import Any


def make_searcher(name: str, *, metric: str, mode: str, seed: int | None, points: list[dict],
                  max_concurrent: int, **kwargs: Any):
    """Return a Tune search algorithm, or None for Tune's default (random / grid)."""
    if name == "hyperopt":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.hyperopt import HyperOptSearch

        algo = HyperOptSearch(metric=metric, mode=mode, random_state_seed=seed,
                              points_to_evaluate=points or None, **kwargs)
        return ConcurrencyLimiter(algo, max_concurrent=max_concurrent)
    if name in ("random", "grid"):
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(points_to_evaluate=points or None, random_state=seed,
                                     max_concurrent=max_concurrent, **kwargs)
    raise ValueError(f"unknown searcher: {name} (known: hyperopt, random, grid)")


def make_scheduler(name: str, *, metric: str, mode: str, **kwargs: Any):
    if name == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(metric=metric, mode=mode, time_attr="training_iteration", **kwargs)
    if name == "fifo":
        from ray.tune.schedulers import FIFOScheduler

        if kwargs:
            raise ValueError(f"the fifo scheduler takes no options, got {sorted(kwargs)}")
        return FIFOScheduler()
    raise ValueError(f"unknown scheduler: {name} (known: asha, fifo)")


SEARCHERS = ("hyperopt", "random", "grid")
SCHEDULERS = ("asha", "fifo")
SCHEDULER_OPTIONS = {"asha": {"grace_period", "max_t", "reduction_factor", "brackets"}, "fifo": set()}
