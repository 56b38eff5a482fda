"""Findings computed from the trial data, each stated with its numbers, and next steps chosen
from them by rules (what seed 001's authors wrote by hand: "smaller models perform better",
"only 2 epochs", "learning-rate sensitivity", "fix the failed preset").

Statistics come from scipy (Spearman rank correlation) and scikit-learn (random-forest
importance, the surrogate-model importance that fANOVA also starts from); nothing here fits a
model by hand.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.load import CANNOT_WIN

EDGE = 0.10  # a best value within 10% of its range's end (log scale for loguniform) is "at the edge"
SAME = 0.01  # relative differences under 1% are "no difference"
# a rank correlation's p-value from fewer points is no finding (with 4 points the smallest
# two-sided exact p is 0.083, with 3 it is 0.33; scipy's asymptotic p says 0 for a perfect 3)
MIN_CORRELATION_POINTS = 5


MIN_GROUP = 3  # fewer trials than this per compared group: the finding is anecdotal


@dataclass
class Finding:
    kind: str          # effect, importance, edge, longer, size, failures, divergence, spread, require
    text: str          # one sentence with its numbers (Markdown)
    data: dict = field(default_factory=dict)
    critical: bool = False
    anecdotal: bool = False  # drawn from fewer than MIN_GROUP trials per group: no next step rests on it


@dataclass(frozen=True)
class Budget:
    """Trials compared at one budget: each trial's best metric over its first ``epochs`` epochs,
    for the trials that ran at least that many (ASHA's rungs: a 1-epoch trial is never set
    against an 8-epoch one)."""
    epochs: int | None  # None: the trials' own best (no per-epoch history)
    trials: pd.DataFrame
    everyone: bool      # every scored trial reached it

    def says(self) -> str:
        if self.epochs is None:
            return ""
        who = "every trial" if self.everyone else f"the {len(self.trials)} trials that reached it"
        return f"at epoch {self.epochs} ({who})"


def budgets(trials: pd.DataFrame, history: pd.DataFrame, metric: str, lower: bool) -> list[Budget]:
    """The budgets findings compare trials at (most trials first), among the distinct numbers of
    epochs scored trials ran (ASHA's rungs) that at least MIN_GROUP trials reached: one when
    (nearly) all ran the same, else the one every trial reached and the largest."""
    ok = _scored(trials, metric)
    col = f"best_{metric}"
    if ok.empty or history.empty or metric not in history or "epochs_run" not in ok:
        return [Budget(None, ok, True)] if not ok.empty else []
    runs = ok.epochs_run.astype(float)
    out = []
    for b in sorted({int(e) for e in runs.dropna() if e > 0}):
        reached = ok[runs >= b]
        if len(reached) < MIN_GROUP and out:
            break
        h = history[history.trial.isin(reached.trial) & (history.epoch.astype(float) <= b)]
        h = h[h[metric].notna()]
        best = h.groupby("trial")[metric].min() if lower else h.groupby("trial")[metric].max()
        view = reached.copy()
        view[col] = view.trial.map(best)
        out.append(Budget(b, view[view[col].notna()], len(reached) == len(ok)))
    if len(out) > 1:
        # the largest budget most trials reached says it all; else (ASHA: few reach the top) the
        # budget every trial reached and the largest that at least MIN_GROUP reached
        out = out[-1:] if len(out[-1].trials) >= 0.8 * len(ok) else [out[0], out[-1]]
    return out


def _isnum(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    return str(v)


def _scored(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    col = f"best_{metric}"
    if trials.empty or col not in trials:
        return trials.iloc[0:0]
    return trials[trials[col].notna() & ~trials.status.isin(CANNOT_WIN)]


def _values(df: pd.DataFrame, param: str) -> pd.Series:
    return df[f"config/{param}"] if f"config/{param}" in df else pd.Series(dtype=object)


def _at(budget: Budget | None) -> str:
    s = budget.says() if budget is not None else ""
    return f" {s}" if s else ""


def _label(text: str, anecdotal: bool, n: str) -> str:
    return f"*Anecdotal ({n}):* {text}" if anecdotal else text


def parameter_effects(trials: pd.DataFrame, params: list[str], metric: str, lower: bool,
                      budget: Budget | None = None) -> list[Finding]:
    """Grouped medians for categorical parameters, Spearman's rho for numeric ones, over the
    trials of one budget (``trials`` then holds each trial's metric at that budget)."""
    from scipy.stats import spearmanr

    out = []
    ok = _scored(trials, metric)
    at = _at(budget)
    y = ok.get(f"best_{metric}")
    for p in params:
        if p == "experiment":  # a named trial's name identifies it; it is not a parameter
            continue
        x = _values(ok, p)
        known = x.notna() if len(x) else x
        if not len(x) or x[known].astype(str).nunique() < 2:
            continue
        xs, ys = x[known], y[known]
        numeric = all(_isnum(v) for v in xs) and xs.nunique() >= 3
        if numeric and len(xs) < MIN_CORRELATION_POINTS:
            out.append(Finding("effect", f"`{p}`: {len(xs)} scored trials{at}, too few to judge a rank correlation "
                                         f"with `{metric}` (at least {MIN_CORRELATION_POINTS}).",
                               {"param": p, "n": int(len(xs)), "too_few": True,
                                "budget": budget.epochs if budget else None}))
        elif numeric:
            rho, pval = spearmanr(xs.astype(float), ys.astype(float))
            if math.isnan(rho):
                continue
            better = "higher" if (rho < 0) == lower else "lower"
            strength = "strong" if abs(rho) >= 0.7 else "moderate" if abs(rho) >= 0.4 else "weak"
            verdict = f"{better} values did better" if abs(rho) >= 0.4 else "no clear direction"
            out.append(Finding("effect", f"`{p}`: {strength} rank correlation with `{metric}`{at} "
                                         f"(Spearman ρ = {rho:+.2f}, p = {pval:.2g}, n = {len(xs)}); "
                                         f"{verdict}.",
                               {"param": p, "rho": float(rho), "p": float(pval), "n": int(len(xs)),
                                "budget": budget.epochs if budget else None}))
        else:
            g = ys.groupby(xs.map(fmt)).agg(["median", "count"])
            if (g["count"] < 2).all() and len(g) > 2:
                continue  # one trial per value: a ranking, not an effect
            g = g.sort_values("median", ascending=lower)
            parts = ", ".join(f"{k}: {fmt(r['median'])} (n={int(r['count'])})" for k, r in g.iterrows())
            best, worst = g.iloc[0], g.iloc[-1]
            rel = abs(best["median"] - worst["median"]) / max(abs(worst["median"]), 1e-12)
            verdict = (f"`{g.index[0]}` best" if rel >= SAME else "no difference (<1%)")
            few = int(g["count"].min()) < MIN_GROUP
            out.append(Finding("effect", _label(f"`{p}`: median `{metric}`{at} by value: {parts}; {verdict}.",
                                                few, f"fewest trials in a group: {int(g['count'].min())}"),
                               {"param": p, "medians": {k: float(r["median"]) for k, r in g.iterrows()},
                                "counts": {k: int(r["count"]) for k, r in g.iterrows()},
                                "budget": budget.epochs if budget else None}, anecdotal=few))
    return out


def importance(trials: pd.DataFrame, params: list[str], metric: str, budget: Budget | None = None) -> Finding | None:
    """Random-forest importance of each varied parameter for the metric (needs >= 6 scored trials)."""
    ok = _scored(trials, metric)
    cols = [p for p in params if p != "experiment" and f"config/{p}" in ok
            and ok[f"config/{p}"].astype(str).nunique() > 1]
    if len(ok) < max(6, 2 * len(cols)) or len(cols) < 2:  # fewer trials than that: importance is noise
        return None
    from sklearn.ensemble import RandomForestRegressor

    X = pd.DataFrame({p: (ok[f"config/{p}"].astype(float) if all(_isnum(v) for v in ok[f"config/{p}"].dropna())
                          else ok[f"config/{p}"].astype(str).astype("category").cat.codes)
                      for p in cols}).fillna(-1)
    rf = RandomForestRegressor(n_estimators=200, random_state=0, min_samples_leaf=1)
    rf.fit(X.values, ok[f"best_{metric}"].astype(float).values)
    imp = sorted(zip(cols, rf.feature_importances_), key=lambda t: -t[1])
    text = ", ".join(f"`{p}` {v:.0%}" for p, v in imp)
    return Finding("importance", f"Importance for `{metric}`{_at(budget)} (random forest over {len(ok)} trials): "
                                 f"{text}.", {"importance": {p: float(v) for p, v in imp}, "n": len(ok)})


def _range(spec) -> tuple[str, list] | None:
    if isinstance(spec, dict) and len(spec) == 1:
        (kind, args), = spec.items()
        return kind, list(args)
    return None


def edges(trials: pd.DataFrame, space: dict, tuned: list[str], metric: str) -> list[Finding]:
    """The best trial's value at an end of its range: the optimum may lie outside it."""
    ok = _scored(trials, metric)
    if ok.empty:
        return []
    best = ok.iloc[0]
    out = []
    few = len(ok) < MIN_GROUP
    for p in dict.fromkeys([*space, *tuned]):
        v = best.get(f"config/{p}")
        if not _isnum(v):
            continue
        r = _range(space.get(p))
        if r and r[0] in ("loguniform", "uniform", "randint"):
            lo, hi = float(r[1][0]), float(r[1][1]) - (1 if r[0] == "randint" else 0)
            f = (lambda t: math.log(t)) if r[0] == "loguniform" else float
            pos = (f(v) - f(lo)) / (f(hi) - f(lo)) if hi > lo else 0.5
            side = "low" if pos <= EDGE else "high" if pos >= 1 - EDGE else None
            where = f"range [{fmt(lo)}, {fmt(hi)}]"
        else:
            tried = sorted({float(x) for x in _values(ok, p) if _isnum(x)})
            if r and r[0] in ("choice", "grid"):
                tried = sorted({float(x) for x in r[1] if _isnum(x)})
            if len(tried) < 3:
                continue
            side = "low" if float(v) == tried[0] else "high" if float(v) == tried[-1] else None
            where = f"values tried {', '.join(fmt(t) for t in tried)}"
        if side:
            out.append(Finding("edge", _label(f"`{p}` = {fmt(v)} (best trial) is at the {side} end of its {where}: "
                                              f"extend the range {'down' if side == 'low' else 'up'}.",
                                              few, f"{len(ok)} scored trial{'s' if len(ok) != 1 else ''}"),
                               {"param": p, "value": float(v), "side": side}, anecdotal=few))
    return out


def still_improving(trials: pd.DataFrame, history: pd.DataFrame, metric: str, lower: bool) -> Finding | None:
    """Trials that ran their planned epochs and had their best at the last one (seed 001's 2 epochs)."""
    fin = _scored(trials, metric)
    fin = fin[fin.status == "finished"]
    if fin.empty or history.empty or metric not in history:
        return None
    rising, gains = [], []
    for _, t in fin.iterrows():
        h = history[(history.trial == t.trial) & history[metric].notna()].sort_values("epoch")
        if len(h) < 2 or t[f"best_{metric}_epoch"] != h.epoch.iloc[-1]:
            continue
        last, prev = h[metric].iloc[-1], h[metric].iloc[-2]
        gain = (prev - last if lower else last - prev) / max(abs(prev), 1e-12)
        if gain > SAME:
            rising.append(t.trial_id)
            gains.append(gain)
    if not rising:
        return None
    top = fin.iloc[0]
    best_rising = top.trial_id in rising
    return Finding("longer", f"{len(rising)} of {len(fin)} finished trials were still improving at their last "
                             f"epoch (median gain in the last epoch {np.median(gains):.1%})"
                             + (", the best one among them" if best_rising else "")
                             + f": train longer than {int(top.epochs_run)} epochs before trusting the ranking.",
                   {"trials": rising, "median_gain": float(np.median(gains)), "best_rising": best_rising,
                    "epochs": int(top.epochs_run)}, critical=best_rising)


def size_effect(trials: pd.DataFrame, metric: str, lower: bool, budget: Budget | None = None) -> Finding | None:
    from scipy.stats import spearmanr

    ok = _scored(trials, metric)
    at = _at(budget)
    if "model_params" not in ok or ok.model_params.dropna().nunique() < 3:
        return None
    ok = ok[ok.model_params.notna()]
    if len(ok) < MIN_CORRELATION_POINTS:
        return Finding("size", f"Model size: {len(ok)} scored trials{at}, too few to judge its relation to "
                               f"`{metric}` (at least {MIN_CORRELATION_POINTS}).", {"n": len(ok), "too_few": True})
    rho, pval = spearmanr(ok.model_params.astype(float), ok[f"best_{metric}"].astype(float))
    if math.isnan(rho):
        return None
    smaller_better = (rho > 0) == lower
    word = "smaller" if smaller_better else "larger"
    sizes = f"{ok.model_params.min() / 1e6:.2f}M to {ok.model_params.max() / 1e6:.2f}M parameters"
    if abs(rho) < 0.4:
        text = (f"Model size ({sizes}) shows no clear relation to `{metric}`{at} "
                f"(Spearman ρ = {rho:+.2f}, n = {len(ok)}).")
    else:
        text = (f"{word.capitalize()} models performed better{at}: Spearman ρ = {rho:+.2f} between parameter "
                f"count ({sizes}) and `{metric}` (p = {pval:.2g}, n = {len(ok)}).")
    return Finding("size", text, {"rho": float(rho), "p": float(pval), "n": len(ok), "better": word})


def failures(trials: pd.DataFrame) -> list[Finding]:
    out = []
    for status in CANNOT_WIN:
        bad = trials[trials.status == status] if not trials.empty else trials
        if bad.empty:
            continue
        groups = bad.groupby(bad.error.fillna("").str.slice(0, 160)).trial_id.apply(list)
        reasons = "; ".join(f"{', '.join(f'`{t}`' for t in ids)}: {err or 'no message'}" for err, ids in groups.items())
        out.append(Finding("failures" if status == "failed" else "divergence",
                           f"{len(bad)} of {len(trials)} trials {status}: {reasons}.",
                           {"trials": bad.trial_id.tolist(), "errors": groups.index.tolist()}, critical=True))
    return out


def divergence_bound(trials: pd.DataFrame, params: list[str]) -> Finding | None:
    """The smallest value of a numeric parameter at which trials diverged, against the largest that
    did not (usually ``lr``)."""
    div = trials[trials.status == "diverged"] if not trials.empty else trials
    if div.empty:
        return None
    rest = trials[trials.status != "diverged"]
    for p in params:
        d = [float(v) for v in _values(div, p) if _isnum(v)]
        r = [float(v) for v in _values(rest, p) if _isnum(v)]
        if d and r and min(d) > max(r):
            return Finding("divergence", f"Every diverged trial had `{p}` >= {fmt(min(d))}; none of the others "
                                         f"went above {fmt(max(r))}.", {"param": p, "bound": min(d)},
                           critical=True)
    return None


def spread(trials: pd.DataFrame, metric: str) -> Finding | None:
    ok = _scored(trials, metric)
    if len(ok) < 2:
        return None
    v = ok[f"best_{metric}"].astype(float)
    rel = (v.max() - v.min()) / max(abs(v.median()), 1e-12)
    if rel < SAME:
        return Finding("spread", f"All {len(ok)} scored trials lie within {rel:.2%} of each other on `{metric}` "
                                 f"({fmt(v.min())} to {fmt(v.max())}): the search did not separate them.",
                       {"relative_spread": float(rel)}, critical=True)
    return None


def next_steps(found: list[Finding], trials: pd.DataFrame, metric: str) -> list[str]:
    """Rules from the findings to actions, most urgent first."""
    steps = []
    for f in found:
        if f.kind == "failures":
            steps.append(f"Fix the failed trials before reading the ranking: {f.text}")
    for f in found:
        if f.kind == "divergence" and "bound" in f.data:
            steps.append(f"Cap `{f.data['param']}` below {fmt(f.data['bound'])} in the next search (trials at or "
                         "above it diverged).")
    for f in found:
        if f.kind == "longer":
            steps.append(f"Train longer: the best configurations were still improving after {f.data['epochs']} "
                         "epochs; rerun the top trials with more epochs (or let ASHA's `max_t` grow) before "
                         "narrowing the search.")
    for f in found:
        if f.kind == "edge" and not f.anecdotal:
            steps.append(f"Extend `{f.data['param']}` {'below' if f.data['side'] == 'low' else 'above'} "
                         f"{fmt(f.data['value'])}: the best value sits at the edge of what was searched.")
    for f in found:
        if f.kind == "spread":
            steps.append("Use more data or epochs per trial: the trials are indistinguishable at this budget.")
    imp = next((f for f in found if f.kind == "importance"), None)
    if imp:
        ranked = list(imp.data["importance"].items())
        top = [p for p, v in ranked if v >= 0.25] or [ranked[0][0]]
        low = [p for p, v in ranked if v < 0.05]
        steps.append(f"Focus the next search on {', '.join(f'`{p}`' for p in top)}"
                     + (f"; fix {', '.join(f'`{p}`' for p in low)} at the best trial's values" if low else "") + ".")
    size = next((f for f in found if f.kind == "size" and abs(f.data.get("rho", 0.0)) >= 0.4), None)
    if size:
        steps.append(f"Try {size.data['better']} models than the current best, since size and `{metric}` "
                     f"moved together (ρ = {size.data['rho']:+.2f}).")
    ok = _scored(trials, metric)
    if not ok.empty:
        steps.append(f"Confirm the winner `{ok.iloc[0].trial_id}` with more seeds (`repeats`) before adopting it: "
                     "one run per configuration cannot tell noise from effect.")
    return steps


def analyse(trials: pd.DataFrame, history: pd.DataFrame, record, params: list[str]) -> dict:
    """Every finding for one experiment (``record``: its ``analysis.record.ExperimentRecord``), and
    the next steps: {"findings": [...], "next_steps": [...]}."""
    from analysis.load import lower_is_better

    metric, mode = record.metric, record.mode
    lower = lower_is_better(metric, metric, mode)
    found: list[Finding] = []
    found += failures(trials) if not trials.empty else []
    d = divergence_bound(trials, params)
    found += [d] if d else []
    views = budgets(trials, history, metric, lower)
    for b in views:
        found += parameter_effects(b.trials, params, metric, lower, b)
    imp = importance(views[0].trials, params, metric, views[0]) if views else None
    found += [imp] if imp else []
    found += edges(trials, record.search_space, params, metric)
    for b in views:
        f = size_effect(b.trials, metric, lower, b)
        found += [f] if f else []
    for f in (still_improving(trials, history, metric, lower), spread(trials, metric)):
        if f:
            found.append(f)
    return {"findings": found, "next_steps": next_steps(found, trials, metric)}
