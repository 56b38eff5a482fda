"""A live view of a search, from its experiment directory alone (local, or in object storage, read
on a laptop while the search runs on a cluster): every trial with a readable name, its status and
epoch, the job's metric now and at its best, time per epoch; for the search, trials done / running
/ pending, the best so far, elapsed and estimated remaining time, and how busy its slots are.
Rendered with rich; ``speechtune watch EXP`` refreshes it, ``--once`` prints it once.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from analysis.load import CANNOT_WIN, as_float, load_experiment, rank, tune_state_file, tune_statuses
from analysis.record import read_record

# Tune's statuses as the view names them (a finished trial's own status comes from the analysis)
_LIVE = {"RUNNING": "running", "PENDING": "pending", "PAUSED": "paused"}


@dataclass
class TrialLine:
    name: str
    status: str
    epoch: int
    planned: float
    now: float
    best: float
    epoch_s: float


@dataclass
class Snapshot:
    experiment: str
    metric: str
    mode: str
    planned: int
    max_concurrent: int
    trials: list[TrialLine] = field(default_factory=list)
    elapsed_s: float = math.nan
    started: bool = False
    leader: int | None = None  # the index in ``trials`` of the ranking's best (analysis.load.rank)
    epochs: float = math.nan  # a trial's planned epochs, for those not yet created

    def count(self, *statuses: str) -> int:
        return sum(t.status in statuses for t in self.trials)

    @property
    def done(self) -> int:
        return self.count("finished", "early-stopped", *CANNOT_WIN)

    @property
    def running(self) -> int:
        return self.count("running")

    @property
    def pending(self) -> int:
        return max(0, self.planned - self.done - self.running)

    @property
    def best(self) -> TrialLine | None:
        """The best so far, as the report will name it: a failed or diverged trial never is."""
        return None if self.leader is None else self.trials[self.leader]

    @property
    def remaining_s(self) -> float:
        """The epochs left, timed: each running trial's at its own time per epoch; each pending or
        paused one's, and those of planned trials not yet created (the job's epochs), at the mean
        time per epoch (an interrupted one's too: a resume runs them); shared over the slots, and never less than the longest running trial's
        (NaN before any epoch is timed). Paused trials are counted in full: a promotion scheduler
        resumes most of them, a stopping one none."""
        timed = [t.epoch_s for t in self.trials if not math.isnan(t.epoch_s)]
        if not timed:
            return math.nan
        per = sum(timed) / len(timed)

        def left(t: TrialLine) -> float:
            planned = t.planned if not math.isnan(t.planned) else self.epochs
            return max(0.0, planned - t.epoch) if not math.isnan(planned) else 0.0

        running = [left(t) * (t.epoch_s if not math.isnan(t.epoch_s) else per) for t in self.trials
                   if t.status == "running"]
        waiting = sum(left(t) for t in self.trials if t.status in ("pending", "paused", "interrupted", "incomplete"))
        unlisted = max(0, self.planned - len(self.trials)) * (0.0 if math.isnan(self.epochs) else self.epochs)
        total = sum(running) + (waiting + unlisted) * per
        return max(total / max(1, self.max_concurrent), max(running, default=0.0))


def snapshot(exp_dir: str | os.PathLike, copy_to: str | os.PathLike | None = None) -> Snapshot:
    """What the experiment directory says now (an object-store URI is downloaded again, into
    ``copy_to`` when given, so that a refreshing view reuses one folder)."""
    from asr_core import storage as store

    local = Path(store.local_copy(exp_dir, copy_to) if store.is_remote(exp_dir) else exp_dir)
    record = read_record(local)
    metric, mode = record.metric, record.mode
    snap = Snapshot(str(exp_dir), metric, mode, record.num_trials, record.max_concurrent or 1,
                    epochs=as_float(record.epochs))
    # a search whose driver was interrupted: what Tune saved as running runs no more
    interrupted = "interrupted" in str(record.outcome.get("status", ""))
    state = tune_state_file(local)
    if state is None and not list(local.glob("*/params.json")):
        return snap
    snap.started = True
    trials, history = load_experiment(local)
    live = tune_statuses(local)
    tuned = [k for k in record.searched if f"config/{k}" in trials]
    lead = rank(trials, record)
    lead = lead.index[0] if not lead.empty else None
    for i, r in trials.iterrows():
        if i == lead:
            snap.leader = len(snap.trials)
        # a search's first seconds: trials started, none has reported yet (no history columns)
        h = history[history.trial_id == r.trial_id] if "trial_id" in history else history
        name = r.get("config/experiment")
        if not isinstance(name, str) or not name:
            values = ", ".join(f"{k}={_short(r[f'config/{k}'])}" for k in tuned)
            name = f"{str(r.trial_id)[:8]}" + (f" {values}" if values else "")
        status = _LIVE.get(live.get(r.trial, ""), r.status)
        if interrupted and status in ("running", "incomplete"):
            status = "interrupted"
        now = float(h[metric].iloc[-1]) if metric in h and len(h) else math.nan
        snap.trials.append(TrialLine(name, status, int(r.epochs_run or 0), as_float(r.epochs_planned), now,
                                     as_float(r.get(f"best_{metric}")),
                                     float(h["time_this_iter_s"].mean()) if "time_this_iter_s" in h and len(h)
                                     else math.nan))
    snap.elapsed_s = _elapsed(local, over=snap.planned > 0 and snap.done >= snap.planned)
    return snap


def _elapsed(local: Path, over: bool) -> float:
    """From the start Tune recorded in its first state file to now, or, for a search that is over,
    to the end of its last run (start + total time of the newest state file)."""
    import json

    files = sorted(local.glob("experiment_state-*.json"), key=lambda p: p.name)
    try:
        first, last = (json.loads(files[i].read_text()).get("runner_data", {}) for i in (0, -1))
        end = last["_start_time"] + last["_total_time"] if over else time.time()
        return max(0.0, end - first["_start_time"])
    except (IndexError, KeyError, TypeError, ValueError, OSError):
        return math.nan


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _fmt(v: float, spec: str = ".4g") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _spec(metric: str) -> str:
    """The metric's format from the registry (rates as percentages), else 4 significant digits."""
    from asr_core.metrics import KNOWN, derived

    m = derived(metric, KNOWN)
    return m.fmt if m is not None and not m.fmt.endswith("d") else ".4g"


def _clock(s: float) -> str:
    if s != s:
        return "-"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


STYLE = {"running": "bold cyan", "pending": "dim", "finished": "green", "early-stopped": "yellow",
         "failed": "bold red", "diverged": "bold red", "paused": "magenta", "interrupted": "bold yellow"}


def render(snap: Snapshot):
    """The view as a rich renderable: the search's summary line over the trials' table."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    if not snap.started:
        return Text(f"{snap.experiment}: no trial has started yet (planned: {snap.planned})")
    best = snap.best
    head = Text.assemble(
        (f"{snap.experiment}", "bold"), f"  ranked by {snap.metric} ({snap.mode})\n",
        f"trials: {snap.done} done, {snap.running} running, {snap.pending} pending of {snap.planned}   ",
        f"best so far: {_fmt(best.best, _spec(snap.metric)) if best else '-'}{f' ({best.name})' if best else ''}\n",
        f"elapsed {_clock(snap.elapsed_s)}, remaining ~{_clock(snap.remaining_s)}, "
        f"slots in use {snap.running}/{snap.max_concurrent}")
    table = Table(show_edge=False, header_style="bold")
    spec = _spec(snap.metric)
    rows = []
    for t in snap.trials:
        planned = f"/{int(t.planned)}" if t.planned == t.planned else ""
        rows.append((t.name, t.status, f"{t.epoch}{planned}", _fmt(t.now, spec), _fmt(t.best, spec),
                     _fmt(t.epoch_s, ".1f")))
    # a narrow console wraps a trial's name between its values and a header between its words,
    # never inside a value (rich cut "lstm_hidden=160" to "16…"): each column is at least as wide
    # as the longest value in it
    cols = (("trial", "left"), ("status", "left"), ("epoch", "right"), (f"{snap.metric} now", "right"),
            (f"best {snap.metric}", "right"), ("s/epoch", "right"))
    for i, (col, justify) in enumerate(cols):
        widest = max(len(w) for text in (col, *(r[i] for r in rows)) for w in text.split())
        table.add_column(col, justify=justify, min_width=widest, overflow="fold")
    for r in rows:
        table.add_row(r[0], Text(r[1], style=STYLE.get(r[1], "")), *r[2:])
    return Group(head, table)


def watch(exp_dir: str, once: bool = False, interval: float = 5.0) -> int:
    """Print the view once, or refresh it until every planned trial is done (Ctrl-C ends it early)."""
    from rich.console import Console
    from rich.live import Live

    import shutil
    import tempfile

    console = Console()
    copy_to = tempfile.mkdtemp(prefix="speechtune-watch-")
    try:
        if once:
            console.print(render(snapshot(exp_dir, copy_to)))
            return 0
        with Live(render(snapshot(exp_dir, copy_to)), console=console, refresh_per_second=1) as live:
            while True:
                snap = snapshot(exp_dir, copy_to)
                live.update(render(snap))
                if snap.started and snap.planned and snap.done >= snap.planned:
                    return 0
                time.sleep(interval)
    finally:
        shutil.rmtree(copy_to, ignore_errors=True)
