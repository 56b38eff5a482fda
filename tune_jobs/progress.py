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
        self.snap.epochs = float(epochs)
        self.live: set[str] = set()   # trials this run saw running, pending or paused
        self.ended: set[str] = set()  # trials that ended through Tune's callbacks (done, stopped, failed)

    def _line(self, trial) -> TrialLine:
        cfg = trial.config.get("train_loop_config", trial.config)
        res = trial.last_result or {}
        name = cfg.get("experiment") or (trial.trial_id[:8] + " " + ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in cfg.items() if k in self.tuned)).strip()
        planned = cfg.get("epochs", self.epochs)  # a searched epochs, else the run's
        status = _STATUS.get(trial.status)
        if status is None:  # TERMINATED: all its epochs, or stopped by the scheduler, or by an interrupt
            if res.get("epoch", 0) >= planned:
                status = "finished"
            else:  # Tune stops the trials still running at an interrupt without on_trial_complete
                status = "interrupted" if trial.trial_id in self.live and trial.trial_id not in self.ended \
                    else "early-stopped"
        return TrialLine(name, status, int(res.get("epoch", 0) or 0), float(planned),
                         float(res.get(self.snap.metric, math.nan)), self.best.get(trial.trial_id, math.nan),
                         float(res.get("time_this_iter_s", math.nan)))

    def _show(self, trials, force: bool = False) -> None:
        self.live |= {t.trial_id for t in trials if t.status in _STATUS and t.status != "ERROR"}
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
        self.ended.add(trial.trial_id)
        self._show(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended.add(trial.trial_id)
        self._show(trials, force=True)

    def on_experiment_end(self, trials, **info):
        self._show(trials, force=True)


class EpochLines(Callback):
    """What ``speechtune train`` prints in place of Ray's tables: a line per epoch, its metrics in
    the registry's formats (``epoch 2/10: train_loss 1.234  val_cer 12.30%  (33 s)``)."""

    SHOWN = ("train_loss", "val_loss", "val_cer", "val_wer", "val_seq_acc", "val_char_acc", "val_lid_acc",
             "val_mel_loss")

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from analysis.watch import _spec

        shown = "  ".join(f"{k} {format(v, _spec(k))}" for k in self.SHOWN
                          if isinstance(v := result.get(k), (int, float)) and v == v)
        print(f"epoch {result.get('epoch', '?')}/{self.epochs}: {shown}  ({result.get('time_this_iter_s', 0):.0f} s)",
              flush=True)


class TrialsDone(Callback):
    """A line per tenth of the planned trials ended (``decode-tune``'s settings), through
    ``asr_core.progress_bar`` (a bar on a terminal)."""

    def __init__(self, total: int, desc: str, unit: str):
        self.total, self.desc, self.unit = total, desc, unit
        self._bar = None  # made on first use: Tune pickles its callbacks, a stream does not pickle

    def __getstate__(self):
        return {**self.__dict__, "_bar": None}

    @property
    def bar(self):
        from asr_core.progress_bar import progress_bar

        if self._bar is None:
            self._bar = progress_bar(self.total, self.desc, self.unit)
        return self._bar

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.bar.update(1)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.bar.update(1)

    def on_experiment_end(self, trials, **info):
        self.bar.close()
