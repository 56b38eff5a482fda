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
    rec = read_job_record(exp_dir)
    named = rec.get("trials") or {}
    keys = dict.fromkeys(["experiment", *(["preset"] if any("preset" in p for p in named.values()) else []),
                          *(rec.get("search_space") or {}), *(rec.get("tuned") or [])])
    cols = [f"config/{k}" for k in keys if f"config/{k}" in trials]
    if not cols:  # no record: the config columns that vary across trials
        cols = [c for c in trials if c.startswith("config/") and trials[c].astype(str).nunique() > 1]
    return cols


def write_report(exp_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 extra: dict | None = None) -> Path:
    """Write ``report.md``, ``trials.parquet``, ``history.parquet`` into ``out_dir`` (default: exp_dir;
    for an experiment in object storage, the files are also uploaded next to it)."""
    from analysis import store

    remote = str(exp_dir) if store.is_remote(exp_dir) else None
    exp_dir = store.local_copy(exp_dir)
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
    lines += [f"- experiment: `{remote or exp_dir}`",
              f"- family: `{rec.get('family', 'n/a')}`, ranked by `{metric}` ({rec.get('mode', 'min')})",
              f"- trials: {len(trials)} ({', '.join(f'{n} {s}' for s, n in trials.status.value_counts().items())})"
              if not trials.empty else "- trials: 0"]
    if extra:
        for k, v in extra.items():
            lines.append(f"- {k}: {v}")
    phase = rec.get("phase") or {}
    if phase:
        lines.append(f"- study `{phase.get('study')}`, phase {phase.get('index', 0) + 1}: `{phase.get('name')}`")
        for k, c in (phase.get("carried") or {}).items():
            lines.append(f"  - `{k}` = {c['value']} (<OPT>: best of phase `{c['phase']}`, trial `{c['trial']}`, "
                         f"{c['metric']} {_fmt(c['metric_value'])})")
        if phase.get("init_checkpoint"):
            lines.append(f"  - every trial starts from `{phase['init_checkpoint']}`")
    if rec.get("require"):
        lines.append(f"- required: {', '.join(f'{m} {b}' for m, b in rec['require'].items())}; "
                     f"{int((~trials.feasible).sum()) if 'feasible' in trials else 0} trial(s) never met it "
                     "and cannot win")
    if not trials.empty and "cost_wall_s" in trials:
        lines.append(f"- cost: {trials.cost_wall_s.sum():.0f} trial-seconds of wall time, "
                     f"{trials.cost_cpu_s.sum():.0f} CPU-seconds used of {trials.cost_cpu_reserved_s.sum():.0f} "
                     f"reserved, {trials.cost_gpu_s.sum():.0f} GPU-seconds")
        if trials.time_to_target_s.notna().any():
            lines.append(f"- fastest to target: {trials.time_to_target_s.min():.0f} s of trial wall time")
        if int(trials.exploits.sum()):
            lines.append(f"- PBT exploits: {int(trials.exploits.sum())} (a trial continued from another's checkpoint)")
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
    (out / "report.json").write_text(json.dumps({"experiment": str(remote or exp_dir), "extra": extra or {}},
                                                indent=1))
    if remote and out_dir is None:
        import pyarrow.fs as pafs

        fs, root = store.resolve(remote)
        for name in ("report.md", "report.json", "trials.parquet", "history.parquet"):
            pafs.copy_files(str(out / name), f"{root}/{name}", destination_filesystem=fs)
    return path


def write_study_report(study_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """A staged study: each phase's report, and ``study.md`` listing the phases in order with the
    values each carried forward (and where they came from)."""
    from analysis import store

    text = store.read_text(store.join(str(study_dir), "study.json"))
    if text is None:
        raise FileNotFoundError(f"no study.json in {study_dir}")
    state = json.loads(text)
    local = store.local_copy(study_dir) if store.is_remote(study_dir) else Path(study_dir)
    out = Path(out_dir or local)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Study: {state.get('study')}", "", "| phase | trials | best | chosen (carried forward) |",
             "|---|---|---|---|"]
    for name, ph in state.get("phases", {}).items():
        if ph.get("status") != "done":
            lines.append(f"| `{name}` | - | {ph.get('status')} | - |")
            continue
        write_report(ph["exp"], out / name if out_dir else None)
        best = ph["best"]
        chosen = ", ".join(f"`{k}`={c['value']}" for k, c in ph.get("winners", {}).items())
        lines.append(f"| [`{name}`]({name}/report.md) | {ph.get('trials')} | {best['metric']} "
                     f"{_fmt(best['value'])} (trial `{best['trial']}`) | {chosen} |")
    path = out / "study.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
