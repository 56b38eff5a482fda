"""A job's bars: what its author would call working (a seed's own target, at the job's scale),
checked against the experiment after the run. ``make demo-seeds`` ends with the closing table
``speechtune bars`` prints, a row per job whose last column is ``met`` or ``not met``.

In a job file (or one of its profiles), figure -> ``"OP VALUE"``; ``PHASE.figure`` reads a staged
study's phase (default: its last)::

    bars:
      test_wer: "< 0.60"          # the best checkpoint on the test split (test_scores.json)
      val_lid_acc: "> 0.90"       # the winning trial's value at the epoch that ranked it
      finetune.gain: "> 0"        # a phase started from the previous phase's best checkpoint: how
                                  # much it improved on that start (in the better direction)
      wall_s: "<= 900"            # the whole `speechtune tune` command, synthesis to report

Figures (``FIGURES``, or any metric the family reports): every value is read from the experiment
directory (its record, Tune's results, ``test_scores.json``, ``study.json``), never typed in. A
figure the experiment does not hold is NaN, and a NaN never meets a bar.
"""
from __future__ import annotations

import json
import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
FIGURES = {
    "test_cer": "test CER of the best checkpoint",
    "test_wer": "test WER of the best checkpoint",
    "trials": "trials run",
    "failed": "trials failed",
    "exploits": "PBT exploits (a trial continued from another's checkpoint)",
    "gain": "improvement on the checkpoint the phase started from",
    "wall_s": "wall time of the whole command, s",
}
_BAR = re.compile(r"^\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Bar:
    figure: str        # a FIGURES key or a metric the trials report (val_cer, val_lid_acc, steps_to_target)
    op: str            # one of OPS
    value: float
    phase: str = ""    # a staged study's phase ("" = the last; a job without phases has one)

    @property
    def name(self) -> str:
        return f"{self.phase}.{self.figure}" if self.phase else self.figure

    def met(self, x: float) -> bool:
        return x == x and OPS[self.op](x, self.value)  # NaN: not met

    def __str__(self) -> str:
        return f"{self.op} {_fmt(self.figure, self.value)}"


def parse_bars(raw, where: str, is_metric=lambda name: False) -> tuple[Bar, ...]:
    """``bars`` as written -> Bars. ``where(key)`` names the line of ``bars.key``; ``is_metric``
    says whether the family reports a metric of that name. Raises ValueError(where, message)."""
    if not raw:
        return ()
    if not isinstance(raw, dict):
        raise BarError(where(""), "'bars' maps a figure to a bar, e.g. {test_wer: \"< 0.60\"}")
    out = []
    for key, text in raw.items():
        phase, _, figure = str(key).rpartition(".")
        m = _BAR.match(str(text)) if isinstance(text, str) else None
        if m is None:
            raise BarError(where(key), f"bars.{key}: a bar is a comparison and a number, e.g. \"< 0.60\" or "
                                       f"\">= 0.9\", got {text!r}")
        try:
            value = float(m.group(2))
        except ValueError:
            raise BarError(where(key), f"bars.{key}: {m.group(2)!r} is not a number") from None
        if figure not in FIGURES and not is_metric(figure):
            raise BarError(where(key), f"bars.{key}: unknown figure '{figure}'; known: {sorted(FIGURES)} "
                                       f"or a metric the family reports")
        out.append(Bar(figure, m.group(1), value, phase))
    return tuple(out)


class BarError(ValueError):
    def __init__(self, where: str, message: str):
        self.where, self.message = where, message
        super().__init__(f"{where}: {message}")


def _fmt(figure: str, v: float) -> str:
    if v != v:
        return "NaN"
    if figure == "wall_s":
        return f"{v:.0f} s"
    if figure in ("trials", "failed", "exploits", "steps_to_target"):
        return f"{v:.0f}"
    if figure.endswith(("cer", "wer")):
        return f"{100 * v:.2f}%"
    return f"{v:.4g}"


# --- figures of an experiment ------------------------------------------------------------------

def experiment_figures(exp_dir: str | Path, start_value: float = math.nan) -> dict[str, float]:
    """Every figure of one experiment (FIGURES and the winner's metrics). ``start_value``: the
    previous phase's best, the start of an experiment that began from its checkpoint (a phase
    with ``init_from: best``; ignored otherwise)."""
    from analysis.load import as_float, load_experiment, lower_is_better, winner
    from analysis.record import read_record

    exp = Path(exp_dir)
    record = read_record(exp)
    trials, history = load_experiment(exp)
    out: dict[str, float] = {"trials": float(len(trials)),
                             "failed": float((trials.status == "failed").sum()) if len(trials) else 0.0,
                             "exploits": float(trials.exploits.sum()) if "exploits" in trials else math.nan,
                             "wall_s": _seconds(record.outcome.get("job wall time"))}
    best = winner(trials, record)
    if best is not None:
        # the winner's metrics at the epoch that ranked it (its best epoch by the job's metric)
        epoch = best.get(f"best_{record.metric}_epoch")
        rows = history[(history.trial == best["trial"]) & (history.epoch == epoch)] if len(history) else history
        row = rows.iloc[-1] if len(rows) else None
        for col in trials.columns:
            if col.startswith("best_") and not col.endswith("_epoch"):
                m = col[len("best_"):]
                v = row[m] if row is not None and m in row.index else best[col]
                out[m] = as_float(v)
        if "best_steps_to_target" in best:  # the first step at which the target was met, whichever epoch ranked
            out["steps_to_target"] = as_float(best["best_steps_to_target"])
        if start_value == start_value and record.phase.get("init_checkpoint"):
            v = out.get(record.metric, math.nan)
            out["gain"] = (start_value - v) if lower_is_better(record.metric, record.metric, record.mode) \
                else (v - start_value)
    scores = exp / "test_scores.json"
    s = json.loads(scores.read_text()) if scores.is_file() else {}
    for unit in ("cer", "wer"):
        if f"best_{unit}" in s:
            out[f"test_{unit}"] = as_float(s[f"best_{unit}"]["rate"])
        else:  # no comparison with a baseline was made: the test figure the record's outcome keeps
            out[f"test_{unit}"] = _percent(record.outcome.get(f"test {unit.upper()}"))
    return out


def job_figures(exp_root: str | Path, phases: list[str]) -> dict[str, dict[str, float]]:
    """phase -> figures ("" for a job without phases). A study's ``wall_s`` is its own (study.json),
    each phase's figures its experiment's; a phase that has not run has none."""
    from analysis.load import as_float

    root = Path(exp_root)
    if not phases:
        return {"": experiment_figures(root) if root.is_dir() else {}}
    state_file = root / "study.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {"phases": {}}
    out: dict[str, dict[str, float]] = {}
    prev_best = math.nan
    for name in phases:
        ph = state["phases"].get(name, {})
        exp = root / name
        if ph.get("status") != "done" or not exp.is_dir():
            out[name] = {}
            prev_best = math.nan
            continue
        out[name] = experiment_figures(exp, start_value=prev_best)
        prev_best = as_float(ph.get("best", {}).get("value"))
    out[""] = {"wall_s": _seconds(state.get("wall time"))}
    return out


def check(bars: tuple[Bar, ...], figures: dict[str, dict[str, float]], last_phase: str) -> list[tuple[Bar, float]]:
    """Each bar with the figure it reads (NaN where the experiment holds none)."""
    out = []
    for b in bars:
        if b.figure == "wall_s" and not b.phase:
            v = figures.get("", {}).get("wall_s", math.nan)
        else:
            v = figures.get(b.phase or last_phase, {}).get(b.figure, math.nan)
        out.append((b, v))
    return out


def closing_row(job_name: str, checked: list[tuple[Bar, float]]) -> dict:
    """One row of the closing table: seed, job, wall time, the bars' figures, values and bars, met."""
    m = re.match(r"seed(\d+)", job_name)
    wall = next((v for b, v in checked if b.figure == "wall_s" and not b.phase), math.nan)
    rest = [(b, v) for b, v in checked if not (b.figure == "wall_s" and not b.phase)]
    return {"seed": m.group(1) if m else "-", "job": job_name,
            "wall": _fmt("wall_s", wall) + "".join(f" ({b})" for b, _ in checked if b.figure == "wall_s" and not b.phase),
            "metric": "; ".join(b.name for b, _ in rest),
            "value": "; ".join(_fmt(b.figure, v) for b, v in rest),
            "bar": "; ".join(str(b) for b, _ in rest),
            "met": "met" if checked and all(b.met(v) for b, v in checked) else "not met",
            "bars": [{"figure": b.name, "op": b.op, "bar": b.value, "value": v, "met": b.met(v)} for b, v in checked]}


def format_closing_table(rows: list[dict]) -> str:
    cols = ("seed", "job", "wall", "metric", "value", "bar", "met")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _seconds(text) -> float:
    if text is None:
        return math.nan
    m = re.match(r"\s*([0-9.]+)\s*s", str(text))
    return float(m.group(1)) if m else math.nan


def _percent(text) -> float:
    m = re.match(r"\s*([0-9.]+)%", str(text)) if text is not None else None
    return float(m.group(1)) / 100 if m else math.nan

