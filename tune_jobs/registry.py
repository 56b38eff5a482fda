"""Searchers and schedulers by name (syne-tune's searcher_factory pattern, lazy imports)."""
from __future__ import annotations

from typing import Any


def make_searcher(name: str, *, metric: str, mode: str, seed: int | None, space: dict, grid: dict,
                  trials: dict, points: list[dict], constraints: list[str], fixed: dict, max_concurrent: int,
                  repeats: int = 1, **kwargs: Any):
    """A Tune ``Searcher`` for the job: HyperOpt TPE, random or grid, under ``JobSearcher``
    (constraints) and a ``ConcurrencyLimiter``. ``space`` holds Tune domains, ``grid`` the
    values of grid dimensions, ``trials`` named trials (name -> params), ``points`` first configs."""
    from ray.tune.search import ConcurrencyLimiter

    from tune_jobs.searchers import NS, GridSearcher, JobSearcher, RandomSearcher

    if name == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        inner = HyperOptSearch(space={NS: space}, metric=metric, mode=mode, random_state_seed=seed,
                               points_to_evaluate=[{NS: p} for p in points] or None, **kwargs)
    elif name == "random":
        inner = RandomSearcher(space, points, seed, metric, mode, **kwargs)
    elif name == "grid":
        inner = GridSearcher(space, grid, trials, points, seed, metric, mode, repeats, **kwargs)
    else:
        raise ValueError(f"unknown searcher: {name} (known: {', '.join(SEARCHERS)})")
    return ConcurrencyLimiter(JobSearcher(inner, constraints, fixed), max_concurrent=max_concurrent)


def make_scheduler(name: str, *, metric: str, mode: str, **kwargs: Any):
    if name == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(metric=metric, mode=mode, time_attr="training_iteration", **kwargs)
    if name == "median":
        from ray.tune.schedulers import MedianStoppingRule

        return MedianStoppingRule(metric=metric, mode=mode, time_attr="training_iteration", **kwargs)
    if name == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining

        # an exploited trial restarts from the donor's checkpoint (asr_core.train.loop continues
        # its epochs and rebases a mutated lr); mutations live in the Trainer's loop config
        mutations = {"train_loop_config": kwargs.pop("hyperparam_mutations")}
        return PopulationBasedTraining(metric=metric, mode=mode, time_attr="training_iteration",
                                       hyperparam_mutations=mutations, **kwargs)
    if name == "fifo":
        from ray.tune.schedulers import FIFOScheduler

        if kwargs:
            raise ValueError(f"the fifo scheduler takes no options, got {sorted(kwargs)}")
        return FIFOScheduler()
    raise ValueError(f"unknown scheduler: {name} (known: {', '.join(SCHEDULERS)})")


SEARCHERS = ("hyperopt", "random", "grid")
SCHEDULERS = ("asha", "pbt", "median", "fifo")
SCHEDULER_OPTIONS = {
    "asha": {"grace_period", "max_t", "reduction_factor", "brackets"},
    "pbt": {"perturbation_interval", "hyperparam_mutations", "quantile_fraction", "resample_probability",
            "perturbation_factors", "synch", "burn_in_period"},
    "median": {"grace_period", "min_samples_required", "hard_stop"},
    "fifo": set(),
}
