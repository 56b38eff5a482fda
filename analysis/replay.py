"""What-if replay, its data and its statistics: the recorded learning curves of a finished search
(``Curves``), one replayed search's trace (``Run``) and what is measured over many (the regret
of the incumbent, the compute to reach the grid's best, interquartile means with bootstrap
intervals). The replay itself, which runs the curves again through the same Ray Tune
schedulers and searchers a real search uses with nothing trained, is ``tune_jobs.replay``: it
needs the job layer's registry, and this module needs neither it nor Ray.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


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
        from analysis.load import load_experiment, tuned_params
        from analysis.record import read_record
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
