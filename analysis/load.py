"""Load a Tune experiment directory into a trials table and a history table.

A metric a trial never reported is NaN, never 0. A corrupt line of ``result.json`` is skipped
with a warning naming the file and line; a trial that failed before reporting stays in the
table with status ``failed`` and its error.
"""
from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
from pathlib import Path

import pandas as pd

from analysis.record import ExperimentRecord, read_record

log = logging.getLogger(__name__)
# every metric a family reports (asr_core.metrics, models/tts_acoustic.py, the loop)
METRICS = ("val_cer", "val_wer", "val_loss", "train_loss", "val_char_acc", "val_seq_acc", "val_levenshtein",
           "val_lid_acc", "val_mel_loss", "val_stop_acc", "val_att_diag", "steps_to_target", "val_mel_loss_auc")
# what a report carries besides metrics: Tune's bookkeeping and the loop's own
NOT_METRICS = {"timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date",
               "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "time_since_restore",
               "iterations_since_restore", "config", "should_checkpoint", "experiment_tag", "epoch", "step",
               "diverged", "diverged_step", "diverged_value", "restored_from_trial", "restored_from_epoch",
               "restore_note",
               "early_stop", "best_epoch", "cpu_s", "epoch_time_s", "utts_per_s", "lr", "model_params",
               "experiment_id", "num_nodes"}
# statuses of a trial that is never a search's result: its values up to the failure or the
# divergence stay in the tables, but nothing is ranked, carried, tested or named best from them
CANNOT_WIN = ("failed", "diverged")


def rank(trials: pd.DataFrame, record: ExperimentRecord) -> pd.DataFrame:
    """The one ranking of an experiment's trials, best first: those that can win (not failed, not
    diverged, with a value of the job's metric; ``best_{metric}`` counts only the epochs that meet
    the job's ``require`` bounds, as ``load_experiment`` computes it). Ties keep the order of the
    trial directories. The report, the study's winners, the best checkpoint (test evaluation,
    ``evaluate``), decode-tune, ``check`` and ``watch`` all name the winner from it."""
    metric, mode = record.metric, record.mode
    col = f"best_{metric}"
    if trials.empty or col not in trials:
        return trials.iloc[0:0]
    ok = trials[trials[col].notna() & ~trials.status.isin(CANNOT_WIN)]
    return ok.sort_values(col, ascending=(mode == "min"), kind="stable")


def winner(trials: pd.DataFrame, record: ExperimentRecord):
    """The ranking's first trial (a row of ``trials``), or None when no trial can win."""
    ok = rank(trials, record)
    return ok.iloc[0] if not ok.empty else None


def tuned_params(exp_dir: Path, trials: pd.DataFrame, record: ExperimentRecord | None = None) -> list[str]:
    """The config columns a ranking shows: the experiment name, preset, searched and tuned keys."""
    rec = record if record is not None else read_record(exp_dir)
    named = rec.trials
    keys = dict.fromkeys(["experiment", *(["preset"] if any("preset" in p for p in named.values()) else []),
                          *rec.searched])
    cols = [f"config/{k}" for k in keys if f"config/{k}" in trials]
    if not cols:  # no record: the config columns that vary across trials
        cols = [c for c in trials if c.startswith("config/") and trials[c].astype(str).nunique() > 1]
    return cols


def lower_is_better(metric: str, job_metric: str | None = None, job_mode: str = "min") -> bool:
    """The direction of ``metric``: the job's pair for its metric, else the metric registry
    (``asr_core.metrics.mode_of``, which also rules on names no family declares)."""
    from asr_core.metrics import mode_of

    return mode_of(metric, job_metric, job_mode, guess=True) == "min"


def discover_metrics(rows: list[dict]) -> list[str]:
    """Numeric keys a trial reported that are neither Tune's bookkeeping nor the loop's."""
    found: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            if k in NOT_METRICS or k.startswith(("config/", "best_")) or isinstance(v, bool):
                continue
            if isinstance(v, (int, float)) or (isinstance(v, str) and v.lower() in ("nan", "inf", "-inf")):
                found[k] = None
    return list(found)


def trial_number(name: str) -> int:
    """The order Tune created a trial in, from its directory name
    (``{trainable}_{trial id}_{number}_{params}_{date}``); large when the name has none."""
    m = re.match(r"[^_]+_[^_]+_(\d+)(?:_|$)", name)
    return int(m.group(1)) if m else 1 << 30


def _trial_dirs(exp_dir: Path) -> list[Path]:
    return sorted(p.parent for p in exp_dir.glob("*/params.json"))


def tune_state_file(exp_dir: Path) -> Path | None:
    """Tune's newest state file, chosen as Tune chooses it on restore (``_find_newest_experiment_checkpoint``):
    by the start time in its name. Not by mtime: a resumed search syncs the earlier runs' state files up
    again at its end, so an older file can be the newest on disk."""
    files = glob.glob(str(exp_dir / "experiment_state-*.json"))
    return Path(max(files, key=os.path.basename)) if files else None


def tune_last_results(exp_dir: Path) -> dict[str, dict]:
    """trial dir name -> the last result Tune recorded for it in its state file (its epoch, the
    checkpoint it carried...); {} while the file is missing, unreadable or being written."""
    out: dict[str, dict] = {}
    newest = tune_state_file(exp_dir)
    try:
        state = json.loads(newest.read_text()) if newest else {}
    except (OSError, json.JSONDecodeError):
        return out
    for entry in state.get("trial_data", []):
        try:
            t, meta = (json.loads(entry[0]), json.loads(entry[1]))
            name = (t.get("storage") or {}).get("trial_dir_name") or t.get("relative_logdir")
            if name:
                out[os.path.basename(str(name))] = meta.get("last_result") or {}
        except (TypeError, ValueError, IndexError, AttributeError, json.JSONDecodeError):
            continue
    return out


def _tune_last_epochs(exp_dir: Path) -> dict[str, int]:
    """trial dir name -> the epoch of the last result Tune recorded in its state file."""
    return {name: int(r["epoch"]) for name, r in tune_last_results(exp_dir).items()
            if isinstance(r.get("epoch"), (int, float))}


def tune_statuses(exp_dir: Path) -> dict[str, str]:
    """trial dir name -> Tune status (TERMINATED, ERROR, RUNNING, PENDING...) from Tune's state file."""
    out: dict[str, str] = {}
    newest = tune_state_file(exp_dir)
    if newest is None:
        return out
    try:
        state = json.loads(newest.read_text())
    except (OSError, json.JSONDecodeError) as e:
        log.warning("%s: unreadable Tune state (%s); statuses inferred from trial files", newest, e)
        return out
    for entry in state.get("trial_data", []):
        try:
            t = json.loads(entry[0]) if isinstance(entry, (list, tuple)) else entry
            name = t.get("storage", {}).get("trial_dir_name") if isinstance(t.get("storage"), dict) else None
            name = name or t.get("relative_logdir") or t.get("trial_dir_name")
            if name:
                out[os.path.basename(str(name))] = t.get("status", "")
        except (TypeError, ValueError, json.JSONDecodeError):
            continue
    return out


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested result dicts flattened with '/' as Tune does in progress.csv
    (``{"val_metrics": {"acc": 1}}`` -> ``val_metrics/acc``), so a misplaced metric is found by name."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "config":
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _read_results(path: Path) -> list[dict]:
    """The reports in a trial's result.json; a corrupt or half-written line is skipped, and one
    warning names the file and the lines."""
    rows, bad = [], []
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad.append(lineno)
                continue
            if isinstance(row, dict):
                rows.append(_flat(row))
            else:
                bad.append(lineno)
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        log.warning("%s: corrupt result line(s) %s skipped", path, shown)
    return rows


def _with_progress_csv(rows: list[dict], csv: Path) -> list[dict]:
    """Ray 2.60 restores a retried trial's result.json from the storage copy, which lags the
    driver's own; reports made between the last sync and the failure vanish from it, but not from
    progress.csv. The epochs missing before the first report are taken from there."""
    first = rows[0].get("epoch") if rows else None
    if not csv.is_file() or (rows and (first is None or first <= 1)):
        return rows
    try:
        prog = pd.read_csv(csv)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        log.warning("%s: unreadable (%s)", csv, e)
        return rows
    if "epoch" not in prog:
        return rows
    before = prog[prog.epoch < (first if first is not None else math.inf)]
    lost = [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
            for r in before.to_dict("records")]
    if lost:
        log.warning("%s: epochs %s missing from result.json were read from progress.csv",
                    csv.parent, [r["epoch"] for r in lost])
    return lost + rows


def _lineage(rows: list[dict]) -> list[dict]:
    """The reports on the line of the trial's final model. A trial restored from a checkpoint
    (resumed experiment, retried worker, PBT exploit) reports ``restored_from_epoch``; reports it
    made after that epoch before the restore belong to a run that was lost (the driver died
    before Tune saved their checkpoint) and are re-run, so they are dropped, not counted twice.
    A trial restarted from scratch (Tune had taken in a report but its state saved at Ctrl-C did
    not yet name that report's checkpoint: seen in CI) reports no restore, only an epoch it has
    reported before; one run never repeats an epoch, so the earlier run's reports from that epoch
    on are dropped the same way."""
    out: list[dict] = []
    for r in rows:
        back = r.get("restored_from_epoch")
        epoch = r.get("epoch")
        if back is not None and out:
            out = [o for o in out if (o.get("epoch") or 0) <= back]
        elif epoch is not None and out and (out[-1].get("epoch") or 0) >= epoch:
            out = [o for o in out if (o.get("epoch") or 0) < epoch]
        out.append(r)
    return out


def _flatten_config(params: dict) -> dict:
    cfg = params.get("train_loop_config", params)
    return {k: v for k, v in cfg.items() if not isinstance(v, (dict, list))}


def as_float(v) -> float:
    t = type(v)
    if t is float:  # the common case first: this runs once per metric per report
        return v
    if t is int:
        return float(v)
    if v is None:  # a metric the report lacks; cheaper than the exception below
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _meets(row: dict, require: dict) -> bool:
    for m, bound in require.items():
        v = as_float(row.get(m))
        if math.isnan(v) or ("min" in bound and v < bound["min"]) or ("max" in bound and v > bound["max"]):
            return False
    return True


class MetricNotFound(KeyError):
    """The job's ranking metric is in no trial's reports (seed 001's bug: a wrong key read as 0)."""

    def __str__(self) -> str:
        return str(self.args[0])


def _status(rows: list[dict], error: str, planned, tune_status: str, tune_epoch: int = 0) -> tuple[str, str]:
    """A trial's status, from Tune's: how far it got is the larger of its result.json's last epoch
    and the last result in Tune's state (a truncated result.json does not make a finished trial
    look early-stopped)."""
    last = rows[-1] if rows else {}
    last_epoch = max(max((r.get("epoch", 0) or 0 for r in rows), default=0), tune_epoch or 0)
    if last.get("diverged"):
        # the loop's last report of a diverged trial (asr_core.train.loop.run_epochs)
        return "diverged", (f"loss became {last.get('diverged_value')} at step {last.get('diverged_step')} "
                            f"(epoch {last.get('epoch')})")
    if planned is not None and last_epoch >= int(planned) and tune_status != "ERROR":
        # an error before it was retried (max_failures) stays in ``error``
        return "finished", f"retried after: {error}" if error else ""
    if error or tune_status == "ERROR":
        return "failed", error or "Tune marked it ERROR (no error.txt)"
    if tune_status == "TERMINATED":
        return "early-stopped", ""
    return "incomplete", ""


def load_experiment(exp_dir: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (trials, history). One row per trial / per reported epoch.

    ``exp_dir`` may be an object-store URI (``s3://...``): it is read through a local copy.
    Every metric any trial reported gets ``best_M``, ``best_M_epoch`` and ``last_M`` columns (NaN
    where a trial did not report it); the family metrics in ``METRICS`` always have them.
    Cost columns: ``cost_wall_s`` (the trial's wall time, all its runs), ``cost_cpu_s`` (CPU
    seconds its workers used), ``cost_cpu_reserved_s`` / ``cost_gpu_s`` (wall time x the CPUs /
    GPUs the trial held) and ``time_to_target_s`` (wall time until ``steps_to_target`` was met).
    A job's ``require`` bounds (``val_lid_acc >= 0.9``) decide which epochs may count for the
    ranking metric: a trial with none is ranked last and marked ``feasible`` False.
    Raises ``MetricNotFound`` when trials reported but none of them the ranking metric.
    """
    from asr_core import storage as store

    exp_dir = store.local_copy(exp_dir)
    if not exp_dir.is_dir():
        raise FileNotFoundError(f"experiment directory not found: {exp_dir}")
    record = read_record(exp_dir)
    metric, mode = record.metric, record.mode
    statuses, last_epochs = tune_statuses(exp_dir), _tune_last_epochs(exp_dir)
    loaded = _trial_files(exp_dir)
    found = discover_metrics([r for _, _, rows in loaded for r in rows])
    metrics = tuple(dict.fromkeys((*METRICS, metric, *found)))
    numeric = (*metrics, "epoch_time_s", "utts_per_s", "lr", "cpu_s", "time_this_iter_s", "restored_from_epoch",
               "num_nodes")
    trials, history = [], []
    for tdir, params, rows in loaded:
        cfg = {**_flatten_config(record.params), **_flatten_config(params)}
        trial_id = rows[0].get("trial_id") if rows else tdir.name.split("_")[1] if "_" in tdir.name else tdir.name
        nums = [{k: as_float(r.get(k)) for k in numeric} for r in rows]  # each value converted once
        history += _history_rows(tdir.name, trial_id, rows, nums, cfg, record.searched)
        row = {"trial": tdir.name, "trial_id": trial_id,
               **_status_row(tdir, rows, cfg.get("epochs", record.epochs), statuses.get(tdir.name, ""),
                             last_epochs.get(tdir.name, 0)),
               **_cost_row(rows, record.resources, trial_id),
               "feasible": any(_meets(r, record.require) for r in rows) if record.require else True,
               **_best_row(rows, nums, metrics, record),
               **{f"config/{k}": v for k, v in cfg.items()}}
        trials.append(row)
    if history and metric not in found:
        raise MetricNotFound(
            f"ranking metric '{metric}' is absent from every trial of {exp_dir}; "
            f"the trials reported: {', '.join(sorted(found)) or 'no metrics'}")
    tdf = pd.DataFrame(trials)
    hdf = pd.DataFrame(history)
    if not tdf.empty:
        # ties (and trials without the metric) keep a stable order: by trial directory name
        tdf = tdf.sort_values(by=[f"best_{metric}"], ascending=(mode == "min"), na_position="last",
                              kind="stable").reset_index(drop=True)
    return tdf, hdf


def _trial_files(exp_dir: Path) -> list[tuple[Path, dict, list[dict]]]:
    """Each trial directory with its params and its reports (progress.csv filling what
    result.json lacks; rows a restore superseded dropped); an unreadable params.json skips it."""
    loaded = []
    for tdir in _trial_dirs(exp_dir):
        try:
            params = json.loads((tdir / "params.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            log.warning("%s: unreadable params.json (%s); trial skipped", tdir, e)
            continue
        rows = _lineage(_with_progress_csv(_read_results(tdir / "result.json"), tdir / "progress.csv"))
        loaded.append((tdir, params, rows))
    return loaded


def _history_rows(trial: str, trial_id: str, rows: list[dict], nums: list[dict], cfg: dict,
                  tuned: list[str]) -> list[dict]:
    """One history row per report, with the tuned values in force at it (PBT changes them)."""
    out = []
    for r, n in zip(rows, nums):
        h = {"trial": trial, "trial_id": trial_id, "epoch": r.get("epoch", r.get("training_iteration")), **n,
             "restored_from_trial": r.get("restored_from_trial"), "time_total_s": as_float(r.get("time_total_s"))}
        rcfg = _flatten_config(r.get("config") or {}) if isinstance(r.get("config"), dict) else {}
        for k in tuned:
            v = rcfg.get(k, cfg.get(k))
            h[f"config/{k}"] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
        out.append(h)
    return out


def _status_row(tdir: Path, rows: list[dict], planned, tune_status: str, tune_epoch: int) -> dict:
    """The trial's status and error, its epochs run and planned, its size and total time."""
    err_file = tdir / "error.txt"
    error = err_file.read_text(errors="replace").strip().splitlines() if err_file.is_file() else []
    error = error[-1] if error else ""
    last_epoch = max((r.get("epoch", 0) or 0 for r in rows), default=0)
    if tune_epoch > last_epoch:
        log.warning("%s: result.json holds epochs up to %d but Tune's state records epoch %d: the file is "
                    "truncated; the trial keeps the status Tune gave it", tdir, last_epoch, tune_epoch)
    status, error = _status(rows, error, planned, tune_status, tune_epoch)
    return {"status": status, "error": error, "epochs_run": last_epoch, "epochs_planned": planned,
            "time_total_s": as_float(rows[-1].get("time_total_s")) if rows else math.nan,
            "model_params": as_float(next((r["model_params"] for r in reversed(rows) if "model_params" in r), None))}


def _cost_row(rows: list[dict], res, trial_id: str) -> dict:
    """When the trial ran and what it cost: Tune's report timestamps (the first report's
    time_total_s reaches back to the trial's start; the search's utilisation of its slots is read
    from these), wall and CPU seconds, the reserved CPUs and GPUs, time to target, exploits."""
    row = {}
    stamps = [(as_float(r.get("timestamp")), as_float(r.get("time_total_s"))) for r in rows]
    stamps = [(ts, tt) for ts, tt in stamps if ts == ts]
    row["started_at"] = stamps[0][0] - (stamps[0][1] if stamps[0][1] == stamps[0][1] else 0.0) \
        if stamps else math.nan
    row["ended_at"] = stamps[-1][0] if stamps else math.nan
    wall = [as_float(r.get("time_this_iter_s")) for r in rows]
    row["cost_wall_s"] = math.fsum(w for w in wall if not math.isnan(w)) if rows else math.nan
    row["cost_cpu_s"] = math.fsum(c for c in (as_float(r.get("cpu_s")) for r in rows) if not math.isnan(c)) \
        if any("cpu_s" in r for r in rows) else math.nan
    row["cost_cpu_reserved_s"] = row["cost_wall_s"] * as_float(res.cpus_per_trial)
    row["cost_gpu_s"] = row["cost_wall_s"] * as_float(res.gpus_per_trial)
    hit = [i for i, r in enumerate(rows) if not math.isnan(as_float(r.get("steps_to_target")))]
    row["time_to_target_s"] = math.fsum(w for w in wall[:hit[0] + 1] if not math.isnan(w)) if hit else math.nan
    row["exploits"] = sum(1 for r in rows if r.get("restored_from_trial") not in (None, "", trial_id))
    return row


def _best_row(rows: list[dict], nums: list[dict], metrics: tuple, record: ExperimentRecord) -> dict:
    """``best_M``, ``best_M_epoch`` and ``last_M`` of every metric (NaN where not reported); for
    the ranking metric only the epochs that meet the job's ``require`` bounds count."""
    metric, mode, require = record.metric, record.mode, record.require
    row = {}
    for m in metrics:
        ok = (lambda r: _meets(r, require)) if (m == metric and require) else (lambda r: True)
        vals = [(n[m], r.get("epoch")) for r, n in zip(rows, nums) if n[m] == n[m] and ok(r)]  # not NaN
        if vals:
            pick = min(vals) if lower_is_better(m, metric, mode) else max(vals, key=lambda v: v[0])
            row[f"best_{m}"], row[f"best_{m}_epoch"] = pick
            row[f"last_{m}"] = vals[-1][0]
        else:
            row[f"best_{m}"] = row[f"best_{m}_epoch"] = row[f"last_{m}"] = math.nan
    return row


def save_tables(trials: pd.DataFrame, history: pd.DataFrame, out_dir: str | os.PathLike) -> None:
    """``trials.parquet`` and ``history.parquet``. Config columns mix types across trials (a
    parameter absent from some named trials), so object columns are stored as strings where
    pyarrow cannot give them one type."""
    out = Path(out_dir)
    for df, name in ((trials, "trials.parquet"), (history, "history.parquet")):
        df = df.copy()
        for c in df.columns:
            if df[c].dtype == object:
                kinds = {type(v) for v in df[c] if v is not None and not (isinstance(v, float) and math.isnan(v))}
                if len(kinds) > 1 and not kinds <= {int, float}:
                    df[c] = df[c].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v))
                                      else str(v))
        df.to_parquet(out / name, index=False)


def best_checkpoint(exp_dir: str | os.PathLike, metric: str | None = None, mode: str | None = None,
                    trial: str | None = None, exclude: str | None = None) -> Path:
    """The kept checkpoint with the best ``metric`` (from each checkpoint's meta.json) of one
    ``trial`` (its directory name), or else of the ranking's best trial (``rank``; but
    ``exclude``) that has one: a failed or diverged trial's earlier checkpoint is never the
    search's. Default: the runs' selection pair (the job's metric, or ``M`` for a job ranked by
    ``M_auc``). A checkpoint whose ``state.pt`` is missing or not the size it was written at is
    skipped, with a warning."""
    from asr_core.train.checkpoint_files import state_size_problem

    exp_dir = Path(exp_dir)
    record = read_record(exp_dir)
    metric, mode = metric or record.selection[0], mode or record.selection[1]
    if trial is not None:
        order = [trial]
    else:
        order = [t for t in rank(load_experiment(exp_dir)[0], record).trial if t != exclude]
    for name in order:
        best, best_val = None, None
        for meta_path in exp_dir.glob(f"{glob.escape(name)}/checkpoint_*/meta.json"):
            try:
                meta = json.loads(meta_path.read_text())
                ms = meta["metrics"]
            except (OSError, json.JSONDecodeError, KeyError):
                continue
            broken = state_size_problem(meta_path.parent, meta)
            if broken:  # a truncated checkpoint is no candidate (issue 25)
                log.warning("%s: not a candidate for the best checkpoint", broken)
                continue
            if not _meets(ms, record.require):
                continue  # a checkpoint that misses a required bound cannot be the best
            v = as_float(ms.get(metric))
            if math.isnan(v):
                continue
            if best_val is None or (v < best_val if mode == "min" else v > best_val):
                best, best_val = meta_path.parent, v
        if best is not None:
            return best
    raise FileNotFoundError(f"no checkpoint with metric '{metric}' under {exp_dir}"
                            + ("" if trial else " of a trial that can win (not failed, not diverged)"))
