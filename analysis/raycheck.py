"""Check a report's figures against Ray's own reading of the same directory.

Ray's ``ExperimentAnalysis`` gives each trial's status and every report it made; ours must agree
on the trial count, the statuses and each trial's best value of every metric. Two differences
are by design and are told apart from real disagreements:

- ``require`` (seed 000's LID bound): our best ranking metric counts only epochs that meet it;
  Ray's reading is filtered the same way before comparing.
- a result file with a corrupt line: Ray drops all of that trial's reports, ours keeps the
  readable ones (listed as explained).
- lineage: reports a restored trial made after its checkpoint and then re-ran (a killed driver),
  or a trial restarted from scratch made before its restart (Ctrl-C before Tune's state named its
  first checkpoint), are dropped by us (``analysis.load._lineage``); Ray keeps both copies.
- a retried trial's result.json restored from a lagging storage copy lacks its first epochs;
  ours reads them from progress.csv (``analysis.load._with_progress_csv``), Ray does not.

Where the values differ only because of those last two rules, the difference is listed as
explained: our rules applied to Ray's own rows must give our value.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.load import (_lineage, _meets, _with_progress_csv, load_experiment, lower_is_better,
                           winner)
from analysis.record import read_record

# our statuses -> the Tune status the trial must have
RAY_STATUS = {"finished": "TERMINATED", "early-stopped": "TERMINATED", "diverged": "TERMINATED",
              "failed": "ERROR"}


@dataclass
class Check:
    trials_ours: int = 0
    trials_ray: int = 0
    compared: int = 0                     # (trial, metric) best values compared
    problems: list[str] = field(default_factory=list)
    explained: list[str] = field(default_factory=list)
    winner: str = ""                      # the ranking's best (analysis.load.rank), as the report names it

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (f"Ray's ExperimentAnalysis: {self.trials_ray} trials, ours {self.trials_ours}; "
                f"{self.compared} best values compared")
        if self.ok:
            return head + f"; all agree ({len(self.explained)} explained difference(s))"
        return head + f"; {len(self.problems)} disagreement(s):\n  " + "\n  ".join(self.problems)


def _close(a: float, b: float) -> bool:
    if math.isnan(a) and math.isnan(b):
        return True
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _best(df: pd.DataFrame, m: str, lower: bool) -> float:
    if m not in df:
        return math.nan
    v = pd.to_numeric(df[m], errors="coerce").dropna()
    return float(v.min() if lower else v.max()) if len(v) else math.nan


def _our_rules(df: pd.DataFrame, tdir: str) -> tuple[pd.DataFrame, str]:
    """Ray's rows with ``analysis.load``'s rules applied: epochs missing from result.json taken
    from progress.csv, rows a restore superseded dropped. Returns them and what changed."""
    rows = [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}  # NaN: not reported
            for r in df.to_dict("records")]
    filled = _with_progress_csv(rows, Path(tdir) / "progress.csv")
    why = []
    if len(filled) > len(rows):
        why.append(f"Ray's result.json lacks epoch(s) {[r.get('epoch') for r in filled[:len(filled) - len(rows)]]}, "
                   "read by ours from progress.csv")
    kept = _lineage(filled)
    if len(kept) < len(filled):
        why.append("rows superseded by a restore")
    return pd.DataFrame(kept), "; ".join(why)


def compare_with_ray(exp_dir: str | os.PathLike) -> Check:
    from ray.tune import ExperimentAnalysis

    exp_dir = os.path.abspath(str(exp_dir))
    rec = read_record(exp_dir)
    metric, mode, require = rec.metric, rec.mode, rec.require
    ours, _ = load_experiment(exp_dir)
    ea = ExperimentAnalysis(exp_dir)
    dfs = ea.trial_dataframes
    c = Check(trials_ours=len(ours), trials_ray=len(ea.trials))
    w = winner(ours, rec)
    if w is not None:
        c.winner = f"{w.trial_id} ({metric} {float(w[f'best_{metric}']):.4g})"
    if c.trials_ours != c.trials_ray:
        c.problems.append(f"trial count: ours {c.trials_ours}, Ray {c.trials_ray}")
    by_id = {r.trial_id: r for _, r in ours.iterrows()}
    metrics = [col.removeprefix("best_") for col in ours.columns
               if col.startswith("best_") and not col.endswith("_epoch")]
    for t in ea.trials:
        row = by_id.get(t.trial_id)
        if row is None:
            c.problems.append(f"{t.trial_id}: in Ray's reading, not in ours")
            continue
        if RAY_STATUS.get(row.status, t.status) != t.status:
            c.problems.append(f"{t.trial_id}: status ours {row.status}, Ray {t.status}")
        df = dfs.get(t.trial_id, pd.DataFrame())
        if df.empty and int(row.epochs_run or 0) > 0:
            # Ray skips a result.json it cannot parse whole; ours keeps its readable lines
            c.explained.append(f"{t.trial_id}: Ray read no reports (unparsable result file); "
                               f"ours kept {int(row.epochs_run)} epoch(s)")
            continue
        ruled, why = _our_rules(df, os.path.join(exp_dir, row.trial))
        for m in metrics:
            lower = lower_is_better(m, metric, mode)
            rows, rows_ruled = df, ruled
            if m == metric and require and not df.empty:
                rows = df[[_meets(r, require) for r in df.to_dict("records")]]
                rows_ruled = ruled[[_meets(r, require) for r in ruled.to_dict("records")]]
            want, got = _best(rows, m, lower), float(row[f"best_{m}"])
            if m not in df and math.isnan(got):
                continue
            c.compared += 1
            if _close(want, got):
                continue
            if why and _close(_best(rows_ruled, m, lower), got):
                c.explained.append(f"{t.trial_id} {m}: Ray {want}, ours {got} ({why})")
            else:
                c.problems.append(f"{t.trial_id} {m}: ours {got}, Ray {want}")
    return c
