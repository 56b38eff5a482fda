"""Report v0: ranking table (Markdown) plus trials/history Parquet, from the experiment directory."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from analysis.load import load_experiment, read_job_record


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def tuned_params(exp_dir: Path, trials: pd.DataFrame) -> list[str]:
    space = read_job_record(exp_dir).get("search_space") or {}
    cols = [f"config/{k}" for k in space if f"config/{k}" in trials]
    if not cols:  # no record: the config columns that vary across trials
        cols = [c for c in trials if c.startswith("config/") and trials[c].astype(str).nunique() > 1]
    return cols


def write_report(exp_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 extra: dict | None = None) -> Path:
    """Write ``report.md``, ``trials.parquet``, ``history.parquet`` into ``out_dir`` (default: exp_dir)."""
    exp_dir = Path(exp_dir)
    out = Path(out_dir or exp_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials, history = load_experiment(exp_dir)
    trials.to_parquet(out / "trials.parquet", index=False)
    history.to_parquet(out / "history.parquet", index=False)
    rec = read_job_record(exp_dir)
    metric = rec.get("metric", "val_cer")
    params = tuned_params(exp_dir, trials)
    broken = trials.status.isin(["failed", "diverged"]) if not trials.empty else None
    ok = trials[~broken] if not trials.empty else trials
    failed = trials[broken] if not trials.empty else trials
    lines = [f"# Tuning report: {rec.get('name', exp_dir.name)}", ""]
    lines += [f"- experiment: `{exp_dir}`",
              f"- family: `{rec.get('family', 'n/a')}`, ranked by `{metric}` ({rec.get('mode', 'min')})",
              f"- trials: {len(trials)} ({', '.join(f'{n} {s}' for s, n in trials.status.value_counts().items())})"
              if not trials.empty else "- trials: 0"]
    if extra:
        for k, v in extra.items():
            lines.append(f"- {k}: {v}")
    lines += ["", "## Ranking", ""]
    own = metric not in ("val_cer", "val_wer") and f"best_{metric}" in trials
    # bilingual runs: the language-identification accuracy sits beside the error rates
    lid = metric != "val_lid_acc" and "best_val_lid_acc" in trials and bool(trials["best_val_lid_acc"].notna().any())
    head = ["rank", "trial", "best val CER", "best val WER", *(["best val LID acc"] if lid else []),
            *([f"best {metric}"] if own else []),
            f"epoch of best {metric}", "epochs", "status", *[c.removeprefix("config/") for c in params]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, (_, r) in enumerate(ok.iterrows(), start=1):
        lines.append("| " + " | ".join([
            str(rank), f"`{r.trial_id}`", _pct(r.best_val_cer), _pct(r.best_val_wer),
            *([_pct(r.best_val_lid_acc)] if lid else []), *([_fmt(r[f"best_{metric}"])] if own else []), _fmt(r[f"best_{metric}_epoch"]), _fmt(r.epochs_run), r.status, *[_fmt(r[c]) for c in params]]) + " |")
    for _, r in failed.iterrows():
        lines.append("| " + " | ".join(["-", f"`{r.trial_id}`", r.status.upper(), "-", *(["-"] if lid else []),
                                        *(["-"] if own else []), "-",
                                        _fmt(r.epochs_run),
                                        f"{r.status}: {r.error[:120]}", *[_fmt(r[c]) for c in params]]) + " |")
    lines += ["", "Statuses: finished = ran all planned epochs; early-stopped = stopped by the scheduler; "
              "diverged = its loss became NaN or infinite (the step is given); "
              "failed = raised an error (both listed last with their reason). A metric a trial never reported "
              "shows as n/a.", ""]
    lines += ["Files: `trials.parquet` (one row per trial), `history.parquet` (one row per reported epoch).", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    (out / "report.json").write_text(json.dumps({"experiment": str(exp_dir), "extra": extra or {}}, indent=1))
    return path
