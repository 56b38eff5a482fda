"""What-if replay: the recorded learning curves of a finished search, run again through the same
Ray Tune schedulers and searchers a real search uses (``tune_jobs.registry``), with nothing
trained. A replayed trial "trains" an epoch by waiting, on a simulated clock, the seconds that
epoch took when it was recorded, and reports the value recorded for it; the scheduler decides
after each report (continue, stop, pause) and the searcher proposes the next configuration from
what it has seen, exactly as under Tune's controller, with ``slots`` trials at a time.

So one recorded run of every configuration to the end (a grid under FIFO) answers, for any
scheduler and searcher, and over as many seeds as wanted: how much compute it would have spent
and how good a configuration it would have found. syne-tune calls this a simulated backend over
a tabulated benchmark; Ray Tune has none, so the event loop is written here (about 60 lines),
while every decision is made by Ray's own classes.
"""
from __future__ import annotations

import heapq
import itertools
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

# scheduler options of a replay (epochs are Tune's training iterations); the recorded epochs set max_t
SCHEDULER_OPTIONS = {"asha": {"grace_period": 1, "reduction_factor": 3},
                     "promotion": {"grace_period": 1, "reduction_factor": 3},
                     "hyperband": {"grace_period": 1, "reduction_factor": 3, "brackets": 3},
                     "median": {"grace_period": 1}, "fifo": {}}


@dataclass(frozen=True)
class Curves:
    """Every recorded configuration's metric and wall seconds per epoch."""
    params: tuple[str, ...]       # the tuned keys
    configs: tuple[tuple, ...]    # one tuple of their values per configuration
    values: np.ndarray            # (configs, epochs) the metric; NaN where not recorded
    seconds: np.ndarray           # (configs, epochs) wall seconds of each epoch
    metric: str
    mode: str
    left_out: int = 0             # trials not recorded to the last epoch (not replayable)

    @property
    def epochs(self) -> int:
        return self.values.shape[1]

    def index(self, config: dict) -> int:
        key = tuple(config[p] for p in self.params)
        try:
            return self._lookup[key]
        except KeyError:
            raise KeyError(f"configuration {dict(zip(self.params, key))} was not recorded") from None

    @property
    def _lookup(self) -> dict:
        return {c: i for i, c in enumerate(self.configs)}

    def best(self) -> float:
        """The best value any configuration reached (what running them all to the end finds)."""
        return float(np.nanmin(self.values) if self.mode == "min" else np.nanmax(self.values))

    def total_seconds(self) -> float:
        return float(np.nansum(self.seconds))

    def is_product(self) -> bool:
        """Is every combination of the recorded values recorded (a full grid)?"""
        levels = [sorted({c[i] for c in self.configs}, key=str) for i in range(len(self.params))]
        return math.prod(len(v) for v in levels) == len(set(self.configs))

    def levels(self) -> dict[str, list]:
        return {p: sorted({c[i] for c in self.configs}, key=lambda v: (isinstance(v, str), v))
                for i, p in enumerate(self.params)}

    # -- reading and writing ------------------------------------------------------------------
    @classmethod
    def from_experiment(cls, exp_dir) -> "Curves":
        """A finished experiment's trials that ran every planned epoch (stopped trials cannot be
        replayed beyond their last epoch and are left out, and counted)."""
        from analysis.load import load_experiment
        from analysis.record import read_record
        from analysis.report import tuned_params
        from asr_core import storage as store

        local = store.local_copy(exp_dir)
        record = read_record(local)
        trials, history = load_experiment(local)
        params = [c.removeprefix("config/") for c in tuned_params(local, trials, record)
                  if c != "config/experiment"]
        rows = []
        for _, t in trials.iterrows():
            h = history[history.trial == t.trial]
            for _, r in h.iterrows():
                rows.append({**{p: t.get(f"config/{p}") for p in params}, "epoch": int(r.epoch),
                             "value": r.get(record.metric),
                             "seconds": r.get("time_this_iter_s"), "trial": t.trial})
        return cls.from_table(pd.DataFrame(rows), params, record.metric, record.mode)

    @classmethod
    def from_table(cls, df: pd.DataFrame, params: list[str], metric: str, mode: str) -> "Curves":
        """Rows of (params..., trial, epoch, value, seconds)."""
        if df.empty:
            raise ValueError("no recorded epochs to replay")
        epochs = int(df.epoch.max())
        configs, values, seconds, left_out = [], [], [], 0
        for _, g in df.groupby("trial", sort=True):
            g = g.sort_values("epoch")
            if g.epoch.tolist() != list(range(1, epochs + 1)):
                left_out += 1
                continue
            key = tuple(_plain(g.iloc[0][p]) for p in params)
            if key in configs:  # a repeat of a configuration: the first record is kept
                continue
            configs.append(key)
            values.append(g.value.astype(float).to_numpy())
            seconds.append(g.seconds.astype(float).to_numpy())
        if not configs:
            raise ValueError(f"no trial was recorded for all {epochs} epochs: replay needs a search whose "
                             "trials ran to the end (a grid or FIFO search)")
        return cls(tuple(params), tuple(configs), np.vstack(values), np.vstack(seconds), metric, mode, left_out)

    @classmethod
    def from_csv(cls, path) -> "Curves":
        df = pd.read_csv(path, comment="#")
        params = [c for c in df.columns if c not in ("trial", "epoch", "value", "seconds", "metric", "mode")]
        return cls.from_table(df, params, str(df.metric.iloc[0]), str(df["mode"].iloc[0]))

    def to_csv(self, path) -> None:
        rows = [{**dict(zip(self.params, c)), "trial": i, "epoch": e + 1, "value": self.values[i, e],
                 "seconds": round(float(self.seconds[i, e]), 3), "metric": self.metric, "mode": self.mode}
                for i, c in enumerate(self.configs) for e in range(self.epochs)]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(path, index=False)


def _plain(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


# -- the simulated Tune controller ------------------------------------------------------------
class _Trial:
    """What Tune's schedulers read of a trial: its id, config, status and last result."""
    PENDING, RUNNING, PAUSED, TERMINATED = "PENDING", "RUNNING", "PAUSED", "TERMINATED"

    def __init__(self, trial_id: str, config: dict, index: int):
        self.trial_id, self.config, self.index = trial_id, config, index
        self.status, self.last_result, self.epoch = self.PENDING, {}, 0
        self.is_saving = False  # Ray's HyperBand asks (a replayed pause saves at once)

    def __repr__(self) -> str:
        return self.trial_id


class _Controller:
    """What Tune's controller offers a scheduler: the trials, ``stop_trial`` (promotion ASHA ends
    a paused trial it will never promote) and the search algorithm (whose ``searcher`` hears of
    pauses, as under Tune)."""

    def __init__(self, policy=None):
        self.trials: list[_Trial] = []
        self.policy = policy
        self.searcher = getattr(policy, "searcher", None)
        self.search_done = False  # the replay's loop says when no new configuration will come

    def get_trials(self) -> list[_Trial]:
        return self.trials

    def get_live_trials(self) -> list[_Trial]:
        return [t for t in self.trials if t.status != _Trial.TERMINATED]

    @property
    def search_alg(self):
        return self  # as Tune's SearchGenerator: ``searcher`` and ``is_finished``

    def is_finished(self) -> bool:
        return self.search_done

    def stop_trial(self, trial: _Trial) -> None:
        """A paused or pending trial, ended without running again; as Tune's ``stop_trial``, the
        searcher is told without a result."""
        self.policy.scheduler.on_trial_remove(self, trial)
        self.policy.searcher.on_trial_complete(trial.trial_id, None)
        trial.status = _Trial.TERMINATED


@dataclass
class Run:
    """One replay: what it spent and what it found, and the incumbent after each report."""
    scheduler: str
    searcher: str
    seed: int
    trials: int = 0
    epochs: int = 0
    seconds: float = 0.0
    wall: float = 0.0  # simulated time when the last trial ended (``seconds`` over ``slots``: busy)
    best: float = math.nan
    incumbent: int = -1  # the recorded configuration of ``best`` (-1: none yet)
    # after each report: (seconds spent so far, best value so far, the configuration that gave it)
    trace: list = field(default_factory=list)

    def seconds_to_reach(self, target: float, mode: str) -> float:
        """Compute spent when the incumbent first came within ``target``; inf if it never did."""
        for spent, best, _ in self.trace:
            if (best <= target) if mode == "min" else (best >= target):
                return spent
        return math.inf


class RayPolicy:
    """A Tune scheduler and searcher from the registry, as a real search makes them."""

    def __init__(self, curves: Curves, scheduler: str, searcher: str, seed: int, slots: int,
                 options: dict | None = None):
        from ray import tune

        from tune_jobs.registry import make_scheduler, make_searcher

        self.curves, self.name = curves, (scheduler, searcher)
        opts = {**SCHEDULER_OPTIONS[scheduler], **(options or {})}
        if scheduler not in ("fifo", "median"):
            opts["max_t"] = curves.epochs
        # a replay's first configuration is a job's baseline only when the options say so
        self.scheduler = make_scheduler(scheduler, metric=curves.metric, mode=curves.mode, max_concurrent=slots,
                                        baseline=bool(opts.get("finish_baseline")), **opts)
        levels = curves.levels()
        if not curves.is_product() or searcher == "grid":
            # the recorded configurations themselves (a grid runs them in the order recorded)
            levels = {"__config": list(range(len(curves.configs)))}
        self.levels = levels
        space = {} if searcher == "grid" else {p: tune.choice(v) for p, v in levels.items()}
        self.searcher = make_searcher(searcher, metric=curves.metric, mode=curves.mode, seed=seed, space=space,
                                      grid=levels if searcher == "grid" else {}, trials={}, points=[],
                                      constraints=[], fixed={}, max_concurrent=slots, scheduler=self.scheduler)

    def index(self, config: dict) -> int:
        from tune_jobs.searchers import NS

        flat = config[NS]
        return int(flat["__config"]) if "__config" in flat else self.curves.index(flat)


def replay(curves: Curves, scheduler: str = "asha", searcher: str = "random", seed: int = 0, slots: int = 2,
           max_trials: int | None = None, budget_s: float | None = None, policy=None,
           options: dict | None = None) -> Run:
    """One simulated search over ``curves``: at most ``max_trials`` trials (default: as many as
    recorded configurations) and ``budget_s`` trial-seconds (default: running all of them to the
    end); ``options`` over the scheduler's (``grace_period``...). ``policy`` replaces the Ray one
    (the benchmark's Optuna peer has the same methods)."""
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher

    pol = policy or RayPolicy(curves, scheduler, searcher, seed, slots, options)
    max_trials = max_trials or len(curves.configs)
    budget_s = budget_s if budget_s is not None else curves.total_seconds()
    lower = curves.mode == "min"
    run = Run(scheduler, searcher, seed)
    ctl, events, now, running, finished = _Controller(pol), [], 0.0, 0, False
    order = itertools.count()

    def start_more() -> None:
        nonlocal running, finished
        while running < slots:
            pending = any(t.status == _Trial.PENDING for t in ctl.trials)
            if not pending and not finished and run.trials < max_trials and run.seconds < budget_s:
                tid = f"replay_{run.trials:05d}"
                cfg = pol.searcher.suggest(tid)
                if cfg == Searcher.FINISHED:
                    finished = True
                elif cfg is not None:
                    trial = _Trial(tid, cfg, pol.index(cfg))
                    ctl.trials.append(trial)
                    pol.scheduler.on_trial_add(ctl, trial)
                    run.trials += 1
            ctl.search_done = finished or run.trials >= max_trials or run.seconds >= budget_s
            trial = pol.scheduler.choose_trial_to_run(ctl)
            if trial is None:
                return
            trial.status = _Trial.RUNNING
            running += 1
            heapq.heappush(events, (now + curves.seconds[trial.index, trial.epoch], next(order), trial))

    start_more()
    while events:
        now, _, trial = heapq.heappop(events)
        e = trial.epoch
        value, secs = float(curves.values[trial.index, e]), float(curves.seconds[trial.index, e])
        trial.epoch += 1
        run.epochs += 1
        run.seconds += secs
        if value == value and (run.best != run.best or (value < run.best if lower else value > run.best)):
            run.best, run.incumbent = value, trial.index
        run.trace.append((run.seconds, run.best, run.incumbent))
        result = {"training_iteration": trial.epoch, curves.metric: value, "time_this_iter_s": secs,
                  "trial_id": trial.trial_id, "config": trial.config}
        trial.last_result = result
        done = trial.epoch >= curves.epochs
        decision = pol.scheduler.on_trial_result(ctl, trial, result)
        if done and decision != TrialScheduler.STOP:
            # as under Tune: the last report goes to both like every other, then the run ends
            pol.searcher.on_trial_result(trial.trial_id, result)
        if done or decision == TrialScheduler.STOP:
            pol.scheduler.on_trial_complete(ctl, trial, result)
            pol.searcher.on_trial_complete(trial.trial_id, result)
            trial.status = _Trial.TERMINATED
            running -= 1
        elif decision == TrialScheduler.PAUSE:
            pol.searcher.on_trial_result(trial.trial_id, result)
            trial.status = _Trial.PAUSED
            running -= 1
        else:
            pol.searcher.on_trial_result(trial.trial_id, result)
            heapq.heappush(events, (now + curves.seconds[trial.index, trial.epoch], next(order), trial))
            continue
        start_more()
    run.wall = now
    return run


def summarize(runs: list[Run], curves: Curves, within: float = 0.05) -> dict:
    """Median and 95% bootstrap interval (scipy) over repeats of: trial-seconds spent (as a share
    of running every configuration to the end), epochs, the best value found, and the share of
    the full run's compute spent before the incumbent came within ``within`` of its best."""
    from scipy.stats import bootstrap

    total, full_best = curves.total_seconds(), curves.best()
    target = full_best * (1 + within) if curves.mode == "min" else full_best * (1 - within)

    def stat(xs: list[float]) -> tuple[float, float, float]:
        a = np.asarray(xs, float)
        if len(a) < 2 or np.all(a == a[0]) or not np.all(np.isfinite(a)):
            m = float(np.median(a))
            return m, m if np.all(a == a[0]) else math.nan, m if np.all(a == a[0]) else math.nan
        ci = bootstrap((a,), np.median, confidence_level=0.95, random_state=0, method="percentile").confidence_interval
        return float(np.median(a)), float(ci.low), float(ci.high)

    return {
        "runs": len(runs),
        "share": stat([r.seconds / total for r in runs]),
        "epochs": stat([r.epochs for r in runs]),
        "best": stat([r.best for r in runs]),
        "share_to_target": stat([r.seconds_to_reach(target, curves.mode) / total for r in runs]),
        "reached": sum(math.isfinite(r.seconds_to_reach(target, curves.mode)) for r in runs),
        "target": target,
    }


def result_values(curves: Curves) -> np.ndarray:
    """Each recorded configuration's result, lower is better (mode max: negated): the best value
    of its run to the end, as speechtune reports a finished trial (``best_val_cer``: the best
    epoch's checkpoint is the one kept). Not the last epoch's: on wavenet_grid a configuration
    at 12.2% after epoch 7 ended at 13.5%, a swing inside the dev set's noise, and every method
    that found it would have been charged for that swing."""
    v = curves.values.astype(float) * (1 if curves.mode == "min" else -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row of NaN gives NaN (normalized_regret)
        return np.nanmin(v, axis=1)


def normalized_regret(run: Run, curves: Curves, fraction: float) -> float:
    """The regret of what the search would return after ``fraction`` of the full grid's compute:
    its incumbent (the configuration of the best value reported so far, at whatever epoch),
    scored by that configuration's result run to the end (``result_values``): (result - the
    grid's best) / (the grid's median result - the grid's best). 0 is the grid's best, 1 a median
    configuration; a fast starter picked early is charged what its full run gives. Before any
    report (or for a configuration that never reported a number), the worst configuration's."""
    final = result_values(curves)
    best, median = np.nanmin(final), np.nanmedian(final)
    budget, pick = fraction * curves.total_seconds(), -1
    for spent, _, index in run.trace:
        if spent > budget:
            break
        pick = index
    # nothing reported yet, or a configuration that never reported a value: the worst's
    value = final[pick] if pick >= 0 and np.isfinite(final[pick]) else np.nanmax(final)
    return float((value - best) / (median - best)) if median > best else 0.0


def compute_to_reach(run: Run, curves: Curves, within: float = 0.05) -> float:
    """Share of the grid's compute spent when the incumbent's result (``result_values``) first
    came within ``within`` of the grid's best (relative); inf if it never did."""
    final = result_values(curves)
    best = np.nanmin(final)
    bound = best + abs(best) * within
    for spent, _, index in run.trace:
        if index >= 0 and final[index] <= bound:
            return spent / curves.total_seconds()
    return math.inf


def iqm_interval(xs, confidence: float = 0.95) -> tuple[float, float, float]:
    """The interquartile mean (the mean of the middle half: robust to a few odd seeds, tighter
    than the median; Agarwal et al. 2021) and its percentile-bootstrap interval (scipy)."""
    from scipy.stats import bootstrap, trim_mean

    a = np.asarray(xs, float)
    m = float(trim_mean(a, 0.25))
    if len(a) < 2 or np.all(a == a[0]):
        return m, m, m
    ci = bootstrap((a,), lambda x, axis: trim_mean(x, 0.25, axis=axis), confidence_level=confidence,
                   random_state=0, method="percentile", n_resamples=2000).confidence_interval
    return m, float(ci.low), float(ci.high)


def replay_table(curves: Curves, methods: list[tuple[str, str]], repeats: int = 10, slots: int = 2,
                 max_trials: int | None = None, within: float = 0.05, policies: dict | None = None,
                 options: dict | None = None) -> list[dict]:
    """One row per (scheduler, searcher): ``summarize`` over ``repeats`` seeds. ``policies`` maps
    extra method names to ``seed -> policy`` factories (the benchmark's Optuna peer)."""
    rows = []
    for sched, search in methods:
        make = (policies or {}).get((sched, search))
        opts = {k: v for k, v in (options or {}).items() if sched not in ("fifo", "median") or k == "grace_period"}
        runs = [replay(curves, sched, search, seed=s, slots=slots, max_trials=max_trials,
                       policy=make(s) if make else None, options=opts if sched != "fifo" else None)
                for s in range(repeats)]
        rows.append({"scheduler": sched, "searcher": search, **summarize(runs, curves, within)})
    return rows


def _ci(t: tuple[float, float, float], f) -> str:
    m, lo, hi = t
    if not math.isfinite(m):
        return "not reached"
    return f(m) + ("" if lo == hi or lo != lo else f" [{f(lo)}, {f(hi)}]")


def format_table(curves: Curves, rows: list[dict], within: float = 0.05) -> str:
    """The replay as a Markdown table with the full run (every configuration to the end) on top."""
    named = all(not r["searcher"] for r in rows)  # one column of method names (the benchmark)
    pct = lambda v: f"{100 * v:.0f}%"  # noqa: E731
    val = (lambda v: f"{100 * v:.2f}%") if curves.metric.endswith(("cer", "wer")) else (lambda v: f"{v:.4g}")
    lines = [f"{len(curves.configs)} configurations x {curves.epochs} epochs recorded"
             + (f" ({curves.left_out} trials not recorded to the end left out)" if curves.left_out else "")
             + f"; running all of them to the end: {curves.total_seconds():.0f} trial-seconds, "
               f"{curves.values.size} epochs, best {curves.metric} {val(curves.best())}.",
             f"Median [95% interval of the median] over {rows[0]['runs'] if rows else 0} repeats; "
             f"'to within {within:.0%}' is the share of the full run's compute spent before the best so "
             f"far came within {within:.0%} of its best ({val(rows[0]['target']) if rows else ''}).", "",
             ("| method |" if named else "| scheduler | searcher |")
             + f" compute (share of full run) | epochs | best {curves.metric} | to within {within:.0%} | reached |",
             "|---|---|---|---|---|---|" + ("" if named else "---|")]
    for r in rows:
        lines.append(f"| {r['scheduler']} |{'' if named else ' ' + r['searcher'] + ' |'} {_ci(r['share'], pct)} | "
                     f"{_ci(r['epochs'], lambda v: f'{v:.0f}')} | {_ci(r['best'], val)} | "
                     f"{_ci(r['share_to_target'], pct)} | {r['reached']}/{r['runs']} |")
    return "\n".join(lines)
