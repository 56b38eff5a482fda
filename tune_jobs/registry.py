"""Searchers and schedulers by name (syne-tune's searcher_factory pattern, lazy imports)."""
from __future__ import annotations

from typing import Any


def make_searcher(name: str, *, metric: str, mode: str, seed: int | None, space: dict, grid: dict,
                  trials: dict, points: list[dict], constraints: list[str], fixed: dict, max_concurrent: int,
                  repeats: int = 1, scheduler=None, **kwargs: Any):
    """A Tune ``Searcher`` for the job: HyperOpt TPE, random or grid, under ``JobSearcher``
    (constraints) and a ``SlotLimiter`` (Tune's ConcurrencyLimiter; a paused trial holds no
    slot). ``space`` holds Tune domains, ``grid`` the values of grid dimensions, ``trials`` named
    trials (name -> params), ``points`` first configs. A ``scheduler`` that pauses trials
    (``may_start_new``) decides when a new configuration may be drawn."""
    from tune_jobs.searchers import NS, GridSearcher, JobSearcher, RandomSearcher, SlotLimiter

    if name in MODEL_SEARCHERS:
        if name == "rung_tpe":
            from tune_jobs.rung_tpe import RungTPE as cls

            kwargs.setdefault("n_initial_points", RUNG_TPE_INITIAL)
            kwargs["space_tune"] = space  # its exclusion list needs the choices (hyperopt's domain hides them)
        else:
            from ray.tune.search.hyperopt import HyperOptSearch as cls
        inner = cls(space={NS: space}, metric=metric, mode=mode, random_state_seed=seed,
                    points_to_evaluate=[{NS: p} for p in points] or None, **kwargs)
    elif name == "random":
        inner = RandomSearcher(space, points, seed, metric, mode, **kwargs)
    elif name == "grid":
        inner = GridSearcher(space, grid, trials, points, seed, metric, mode, repeats, **kwargs)
    else:
        raise ValueError(f"unknown searcher: {name} (known: {', '.join(SEARCHERS)})")
    return SlotLimiter(JobSearcher(inner, constraints, fixed), max_concurrent=max_concurrent, scheduler=scheduler)


# name -> Tune scheduler class, imported when first used
SCHEDULER_CLASSES = {
    "asha": "ray.tune.schedulers.ASHAScheduler",
    # asynchronous Hyperband (Li et al. 2020): ASHA over several brackets of grace periods
    "hyperband": "ray.tune.schedulers.AsyncHyperBandScheduler",
    "pbt": "ray.tune.schedulers.PopulationBasedTraining",
    "median": "ray.tune.schedulers.MedianStoppingRule",
    "fifo": "ray.tune.schedulers.FIFOScheduler",
    # pause-and-resume successive halving (ASHA's promotion variant; Ray has only the stopping one)
    "promotion": "tune_jobs.schedulers.PromotionASHA",
}
SCHEDULERS = tuple(SCHEDULER_CLASSES)
SEARCHERS = ("hyperopt", "rung_tpe", "random", "grid")
# searchers that fit a model of the space (TPE): no grid dimensions; with "random" they draw
# configurations, so a job's first point (its baseline) can lead them
MODEL_SEARCHERS = ("hyperopt", "rung_tpe")
DRAWING_SEARCHERS = (*MODEL_SEARCHERS, "random")
# rung_tpe's random draws before its model: the observations it needs at one epoch
RUNG_TPE_INITIAL = 6
# which searchers a scheduler runs with (PBT samples its population itself: random only)
SEARCHERS_FOR = {"asha": SEARCHERS, "hyperband": SEARCHERS, "median": SEARCHERS, "fifo": SEARCHERS,
                 "pbt": ("random",), "promotion": SEARCHERS}
# the method a job runs when it names none, by kind of family: for the ASR families `ours` of
# benchmarks/search_efficiency.py, promotion ASHA + random sampling (on its three recorded grids
# random sampling did as well as rung_tpe at 50% of the compute and better at 25% in four of six
# cells: README "Search efficiency"); the others (tts_acoustic, whose runs the suite has not
# recorded) keep Tune's defaults
DEFAULT_METHOD = {"asr": ("promotion", "random"), "other": ("fifo", "hyperopt")}


def default_method(family: str) -> tuple[str, str]:
    """(scheduler, searcher) of a job of ``family`` that names neither (an unknown family: the
    others', its error is the loader's)."""
    from asr_core.models import get_family

    try:
        return DEFAULT_METHOD["asr" if get_family(family).decode is not None else "other"]
    except ValueError:
        return DEFAULT_METHOD["other"]


# options we set from the job (metric, mode, its slots and trials) or that a YAML file cannot hold (a function)
_SET_HERE = {"self", "metric", "mode", "time_attr", "custom_explore_fn", "stop_last_trials",
             "max_concurrent"}


def scheduler_class(name: str) -> type:
    import importlib

    module, cls = SCHEDULER_CLASSES[name].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)


def scheduler_parameters(name: str) -> dict:
    """The options a job may give scheduler ``name`` (option -> ``inspect.Parameter``, its default
    with it): its Tune class's constructor arguments, read from the signature (as Tune's own
    ``create_scheduler`` trims them), less those set here."""
    import inspect

    params = inspect.signature(scheduler_class(name).__init__).parameters.values()
    return {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in _SET_HERE}


def scheduler_options(name: str) -> set[str]:
    return set(scheduler_parameters(name))


def make_scheduler(name: str, *, metric: str, mode: str, epochs: int = 0, max_concurrent: int = 0,
                   baseline: bool = False, **kwargs: Any):
    """Scheduler ``name`` for the job's metric and mode; epochs are Tune's training iterations.
    A pausing scheduler (promotion) also gets the job's slots and epochs (its ``max_t``), and
    whether its first trial is the job's baseline (``baseline``): it then resumes the baseline to
    the end (``finish_baseline``, on unless the job turns it off)."""
    if name not in SCHEDULER_CLASSES:
        raise ValueError(f"unknown scheduler: {name} (known: {', '.join(SCHEDULERS)})")
    cls = scheduler_class(name)
    if name == "promotion":
        if epochs:  # no rung at or past the last epoch: a trial paused there would have nothing left to run
            kwargs["max_t"] = min(int(kwargs.get("max_t", epochs)), epochs)
        kwargs["max_concurrent"] = max_concurrent
        kwargs["finish_baseline"] = bool(kwargs.get("finish_baseline", True)) and baseline
    if name == "fifo":
        if kwargs:
            raise ValueError(f"the fifo scheduler takes no options, got {sorted(kwargs)}")
        return cls()
    if name == "hyperband":
        kwargs.setdefault("brackets", 3)  # one bracket would be ASHA itself
    if name == "pbt":
        # an exploited trial restarts from the donor's checkpoint (asr_core.train.loop's exploit
        # case applies the mutated values); mutations live in the Trainer's loop config
        kwargs["hyperparam_mutations"] = {"train_loop_config": kwargs.pop("hyperparam_mutations")}
    return cls(metric=metric, mode=mode, time_attr="training_iteration", **kwargs)


# name -> (the module it needs, the extra that installs it); TensorBoard event files are written by
# Tune's own TBXLoggerCallback for every trial (tensorboardX comes with ray[tune])
LOGGERS = {"tensorboard": ("tensorboardX", ""), "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}


def missing_logger(name: str) -> str:
    """Why logger ``name`` cannot run here ('' when it can)."""
    import importlib.util

    module, extra = LOGGERS[name]
    if importlib.util.find_spec(module) is None:
        return f"logger '{name}' needs {module}: pip install 'speechtune[{extra}]'" if extra else \
            f"logger '{name}' needs {module}"
    return ""


def make_loggers(names: list[str], experiment: str, local_exp_dir: str | None) -> list:
    """Tune logger callbacks for a job's ``loggers`` beyond Tune's defaults (CSV, JSON, TensorBoard).
    MLflow logs to ``MLFLOW_TRACKING_URI``, else a file store ``mlruns/`` in the experiment directory
    (or the working directory for an experiment in object storage); W&B to ``WANDB_PROJECT`` (default:
    the experiment's name), offline unless ``WANDB_MODE`` or ``WANDB_API_KEY`` says otherwise."""
    import os

    out = []
    if "mlflow" in names:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = os.environ.get("MLFLOW_TRACKING_URI") or \
            "file:" + os.path.abspath(os.path.join(local_exp_dir or ".", "mlruns"))
        if uri.startswith("file:"):  # MLflow 3 keeps the file store but asks to be told it is wanted
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        out.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment, save_artifact=False))
    if "wandb" in names:
        from ray.air.integrations.wandb import WandbLoggerCallback

        # Ray's callback asks for an API key unless WANDB_MODE says offline; runs go under the
        # experiment directory (wandb/offline-run-*; `wandb sync` uploads them later)
        os.environ.setdefault("WANDB_MODE", "online" if os.environ.get("WANDB_API_KEY") else "offline")
        out.append(WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT", experiment),
                                       mode=os.environ["WANDB_MODE"], dir=os.path.abspath(local_exp_dir or "."),
                                       log_config=True))
    return out
