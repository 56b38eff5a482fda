"""The report's figures (matplotlib, Agg backend): learning curves, parameter against metric,
parallel coordinates, ASHA rung survival and PBT schedules. Each function returns a Figure or
None when the experiment has nothing to show for it; ``render`` writes PNGs.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

MAX_CURVES = 12  # the best N trials get their own colour and legend entry; the rest are grey


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _isnum(s: pd.Series) -> bool:
    vals = s.dropna()
    return len(vals) > 0 and all(isinstance(v, (int, float, np.integer, np.floating))
                                 and not isinstance(v, (bool, np.bool_)) for v in vals)


def _label(t) -> str:
    name = t.get("config/experiment")
    return str(name) if isinstance(name, str) and name else str(t.trial_id)


def learning_curves(trials: pd.DataFrame, history: pd.DataFrame, metric: str):
    if history.empty or metric not in history or history[metric].notna().sum() == 0:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    order = trials.trial.tolist()
    top = set(order[:MAX_CURVES])
    groups = dict(tuple(history[history[metric].notna()].groupby("trial")))
    for trial in reversed(order):  # the best is drawn last, on top
        h = groups.get(trial)
        if h is None:
            continue
        h = h.sort_values("epoch")
        if trial in top:
            ax.plot(h.epoch, h[metric], marker="o", ms=3, lw=1.5,
                    label=_label(trials[trials.trial == trial].iloc[0]))
        else:
            ax.plot(h.epoch, h[metric], color="0.75", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"Learning curves ({len(groups)} trials)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    return fig


def param_scatter(trials: pd.DataFrame, params: list[str], metric: str, log_params: set[str]):
    col = f"best_{metric}"
    ok = trials[trials[col].notna()] if col in trials else trials.iloc[0:0]
    params = [p for p in params if p != "experiment" and f"config/{p}" in ok
              and ok[f"config/{p}"].astype(str).nunique() > 1][:6]
    if ok.empty or not params:
        return None
    plt = _plt()
    n = len(params)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, p in zip(axes.flat, params):
        x = ok[f"config/{p}"]
        if _isnum(x):
            ax.scatter(x.astype(float), ok[col], s=25, c="tab:blue")
            if p in log_params:
                ax.set_xscale("log")
        else:
            cats = sorted(x.astype(str).unique())
            pos = x.astype(str).map({c: i for i, c in enumerate(cats)})
            jitter = np.random.default_rng(0).uniform(-0.1, 0.1, len(pos))
            ax.scatter(pos + jitter, ok[col], s=25, c="tab:blue")
            ax.set_xticks(range(len(cats)), cats, rotation=30, fontsize=7)
        ax.scatter([x.iloc[0]] if _isnum(x) else [sorted(x.astype(str).unique()).index(str(x.iloc[0]))],
                   [ok[col].iloc[0]], s=80, facecolors="none", edgecolors="red", label="best")
        ax.set_xlabel(p)
        ax.set_ylabel(col)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"Parameters against {col} (red ring: best trial)")
    fig.tight_layout()
    return fig


def parallel_coordinates(trials: pd.DataFrame, params: list[str], metric: str, log_params: set[str],
                         lower: bool = True):
    """One line per trial through each parameter's axis, coloured by the metric. Written here
    because pandas' ``parallel_coordinates`` colours by a class column, not a continuous metric."""
    col = f"best_{metric}"
    ok = trials[trials[col].notna()] if col in trials else trials.iloc[0:0]
    params = [p for p in params if p != "experiment" and f"config/{p}" in ok
              and ok[f"config/{p}"].astype(str).nunique() > 1]
    if len(ok) < 2 or not params:
        return None
    plt = _plt()
    axes_data, ticks = [], []
    for p in [*params, col]:
        x = ok[f"config/{p}"] if p != col else ok[col]
        if _isnum(x):
            v = x.astype(float).to_numpy()
            v = np.log10(v) if p in log_params and (v > 0).all() else v
            lo, hi = np.nanmin(v), np.nanmax(v)
            axes_data.append((v - lo) / (hi - lo) if hi > lo else np.full_like(v, 0.5))
            ticks.append(f"{p}\n{x.min():.3g}..{x.max():.3g}")
        else:
            cats = sorted(x.astype(str).unique())
            v = x.astype(str).map({c: i for i, c in enumerate(cats)}).to_numpy(dtype=float)
            axes_data.append(v / max(len(cats) - 1, 1))
            ticks.append(f"{p}\n{'/'.join(cats)}"[:40])
    data = np.vstack(axes_data).T  # (trials, axes)
    cmap = plt.get_cmap("viridis_r")  # 1 (best) is dark
    m = ok[col].astype(float).to_numpy()
    norm = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.ones_like(m)
    good = 1 - norm if lower else norm
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * data.shape[1]), 4.5))
    for row, g in sorted(zip(data, good), key=lambda t: t[1]):  # the best drawn last, on top
        ax.plot(range(data.shape[1]), row, color=cmap(g), alpha=0.8, lw=1.2)
    ax.set_xticks(range(data.shape[1]), ticks, fontsize=7)
    ax.set_yticks([])
    for i in range(data.shape[1]):
        ax.axvline(i, color="0.5", lw=0.8)
    ax.set_title(f"Parallel coordinates (colour: {col}, dark = better)")
    fig.tight_layout()
    return fig


def asha_rungs(trials: pd.DataFrame, scheduler: dict):
    """How many trials reached each ASHA rung (grace_period x reduction_factor^k epochs), for
    Ray's stopping ASHA and our promotion (pause-and-resume) one."""
    name = (scheduler or {}).get("name")
    if name not in ("asha", "promotion") or trials.empty:
        return None
    plt = _plt()
    g = int(scheduler.get("grace_period", 1))
    # the classes' defaults: Ray's ASHAScheduler 4, tune_jobs.schedulers.PromotionASHA 3
    rf = float(scheduler.get("reduction_factor", 4 if name == "asha" else 3))
    max_t = int(scheduler.get("max_t", trials.epochs_run.max() or 1))
    rungs = []
    r = g
    while r < max_t:
        rungs.append(int(r))
        r *= rf
    rungs.append(max_t)
    counts = [int((trials.epochs_run >= r).sum()) for r in rungs]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([str(r) for r in rungs], counts, color="tab:green")
    for i, c in enumerate(counts):
        ax.text(i, c, str(c), ha="center", va="bottom")
    ax.set_xlabel("rung (epochs)")
    ax.set_ylabel("trials reaching it")
    ax.set_title(f"ASHA rung survival ({len(trials)} trials, reduction factor {rf:g})")
    fig.tight_layout()
    return fig


def pbt_schedules(history: pd.DataFrame, scheduler: dict):
    """Each PBT-mutated hyperparameter over training time, one line per trial; a marker where a
    trial took another's checkpoint (an exploit)."""
    if (scheduler or {}).get("name") != "pbt" or history.empty:
        return None
    keys = [k for k in (scheduler.get("hyperparam_mutations") or {}) if f"config/{k}" in history]
    if not keys:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.6 * len(keys)), squeeze=False)
    for ax, k in zip(axes[:, 0], keys):
        for trial, h in history.groupby("trial"):
            h = h.sort_values("epoch")
            y = pd.to_numeric(h[f"config/{k}"], errors="coerce")
            ax.step(h.epoch, y, where="post", lw=1.2, label=str(h.trial_id.iloc[0]))
            ex = h[h.restored_from_trial.notna() & (h.restored_from_trial != h.trial_id)
                   & (h.restored_from_trial != "")]
            ax.scatter(ex.epoch, pd.to_numeric(ex[f"config/{k}"], errors="coerce"), marker="v", color="k", s=20)
        if k == "lr" or (y > 0).all() and y.max() / max(y.min(), 1e-30) > 50:
            ax.set_yscale("log")
        ax.set_ylabel(k)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("epoch (black triangle: exploit, continued from another trial's checkpoint)")
    axes[0, 0].legend(fontsize=7, ncol=4)
    fig.suptitle("PBT hyperparameter schedules")
    fig.tight_layout()
    return fig


def render(trials: pd.DataFrame, history: pd.DataFrame, record, params: list[str],
           out_dir: str | Path) -> list[tuple[str, Path]]:
    """Write every figure that applies as ``out_dir/plots/NAME.png``; [(title, path)]."""
    plt = _plt()
    metric, space = record.metric, record.search_space  # an analysis.record.ExperimentRecord
    log_params = {k for k, v in space.items() if isinstance(v, dict) and "loguniform" in v} | {"lr"}
    sched = record.scheduler
    figs = [("Learning curves", "curves", learning_curves(trials, history, metric)),
            ("Parameters against the metric", "scatter", param_scatter(trials, params, metric, log_params)),
            ("Parallel coordinates", "parallel", parallel_coordinates(trials, params, metric, log_params,
                                                                   record.mode == "min")),
            ("ASHA rung survival", "asha_rungs", asha_rungs(trials, sched)),
            ("PBT schedules", "pbt", pbt_schedules(history, sched))]
    out = Path(out_dir) / "plots"
    written = []
    for title, name, fig in figs:
        if fig is None:
            continue
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append((title, path))
    return written
