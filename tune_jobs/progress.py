"""What `speechtune tune` prints while the search runs: the compact view of ``speechtune watch``
(analysis.watch), built from Tune's live trials instead of Ray's full status tables (those stay
available with ``speechtune tune --ray-verbose``)."""
from __future__ import annotations

import math
import time

from ray.tune import Callback

from analysis.watch import Snapshot, TrialLine, render

_STATUS = {"RUNNING": "running", "PENDING": "pending", "PAUSED": "paused", "ERROR": "failed"}


class CompactProgress(Callback):
    """Prints the view when a trial starts or ends, and at most every ``every_s`` seconds."""

    def __init__(self, name: str, metric: str, mode: str, planned: int, max_concurrent: int, tuned: list[str],
                 epochs: int, every_s: float = 30.0):
        self.snap = Snapshot(name, metric, mode, planned, max_concurrent, started=True)
        self.tuned, self.epochs, self.every_s = tuned, epochs, every_s
        self.best: dict[str, float] = {}
        self.t0 = time.time()
        self.last = 0.0

    def _line(self, trial) -> TrialLine:
        cfg = trial.config.get("train_loop_config", trial.config)
        res = trial.last_result or {}
        name = cfg.get("experiment") or (trial.trial_id[:8] + " " + ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in cfg.items() if k in self.tuned)).strip()
        planned = cfg.get("epochs", self.epochs)  # a searched epochs, else the run's
        status = _STATUS.get(trial.status)
        if status is None:  # TERMINATED: all its epochs, or stopped by the scheduler
            status = "finished" if res.get("epoch", 0) >= planned else "early-stopped"
        return TrialLine(name, status, int(res.get("epoch", 0) or 0), float(planned),
                         float(res.get(self.snap.metric, math.nan)), self.best.get(trial.trial_id, math.nan),
                         float(res.get("time_this_iter_s", math.nan)))

    def _show(self, trials, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last < self.every_s:
            return
        from rich.console import Console

        self.last = now
        self.snap.trials = [self._line(t) for t in trials]
        self.snap.elapsed_s = now - self.t0
        Console().print(render(self.snap))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        v = result.get(self.snap.metric)
        if isinstance(v, (int, float)) and v == v:
            old = self.best.get(trial.trial_id, math.nan)
            better = old != old or (v < old if self.snap.mode == "min" else v > old)
            self.best[trial.trial_id] = float(v) if better else old
        self._show(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._show(trials, force=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._show(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._show(trials, force=True)

    def on_experiment_end(self, trials, **info):
        self._show(trials, force=True)
