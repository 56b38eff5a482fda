"""Pause-and-resume successive halving: the promotion variant of ASHA (Li et al. 2020, sec. 3;
syne-tune's ``HyperbandScheduler(type="promotion")``), as a Ray Tune scheduler.

Ray's ``ASHAScheduler`` is the stopping variant: a trial below the top 1/eta of a rung when it
gets there is stopped for good (ray-project/ray#44256), so a configuration judged at a rung that
cannot yet tell ends there. Here a trial that reaches a rung *pauses* (Tune keeps its checkpoint);
a paused trial is promoted, and resumed from that checkpoint, once it is in the top 1/eta of the
values its rung has collected; a new configuration starts only when nothing can be promoted.

Ray has no such scheduler (its ``HyperBandScheduler`` pauses too, but synchronously, in brackets
filled before any is judged), and syne-tune's cannot drive Ray Tune trials: hence this one.

A finite search ends as the paper's does not (it samples forever): once every configuration has
started and none is waiting, a free slot goes to the best paused trial of the highest rung (the
top ``max(1, n // eta)``), so the last trials of a search are judged by the same rule on what
there is; a paused trial that no such rule would ever promote is stopped at its rung.
"""
from __future__ import annotations

import math

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler


class PromotionASHA(FIFOScheduler):
    """``grace_period`` epochs to the first rung, ``reduction_factor`` (eta) between rungs, up to
    ``max_t`` epochs; ``max_concurrent`` trials run at once (a paused trial holds no slot, so the
    searcher's concurrency limit cannot be what caps them); ``num_samples`` configurations in all."""

    def __init__(self, metric: str | None = None, mode: str | None = None, time_attr: str = "training_iteration",
                 max_t: int = 100, grace_period: int = 1, reduction_factor: float = 3,
                 max_concurrent: int = 0, num_samples: int = 0):
        super().__init__()
        if grace_period < 1 or reduction_factor <= 1 or max_t < grace_period:
            raise ValueError("promotion ASHA needs grace_period >= 1, reduction_factor > 1 and "
                             f"max_t >= grace_period (got {grace_period}, {reduction_factor}, {max_t})")
        self._metric, self._mode, self._time_attr = metric, mode, time_attr
        self._max_t, self._eta = int(max_t), float(reduction_factor)
        self._max_concurrent, self._num_samples = int(max_concurrent), int(num_samples)
        # rung milestones: grace, grace*eta, ... below max_t (reaching max_t ends the trial)
        self.milestones: list[int] = []
        r = int(grace_period)
        while r < self._max_t:
            self.milestones.append(r)
            r = max(r + 1, int(round(r * self._eta)))
        self.rungs: list[dict[str, float]] = [{} for _ in self.milestones]  # trial id -> value (lower is better)
        self.promoted: list[set[str]] = [set() for _ in self.milestones]
        self.paused_at: dict[str, int] = {}  # trial id -> the rung it waits at
        self._chosen: set[str] = set()  # trials handed to Tune to start, not yet running

    def set_search_properties(self, metric, mode, **spec) -> bool:
        if self._metric and metric and metric != self._metric or self._mode and mode and mode != self._mode:
            return False
        self._metric, self._mode = self._metric or metric, self._mode or mode
        return True

    def _score(self, result: dict) -> float:
        v = result.get(self._metric)
        v = float("nan") if v is None else float(v)
        if v != v:  # a missing or NaN value ranks last
            return math.inf
        return -v if self._mode == "max" else v

    def _promotable(self, trial_id: str, rung: int, relaxed: bool) -> bool:
        if trial_id in self.promoted[rung]:
            return False
        rec = self.rungs[rung]
        k = len(rec) // int(self._eta) if self._eta == int(self._eta) else int(len(rec) / self._eta)
        if relaxed:
            k = max(1, k)
        top = sorted(rec, key=lambda t: (rec[t], t))[:k]
        return trial_id in top

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self._chosen.discard(trial.trial_id)
        t = int(result.get(self._time_attr, 0))
        if t >= self._max_t:
            return TrialScheduler.STOP
        if t not in self.milestones:
            return TrialScheduler.CONTINUE
        rung = self.milestones.index(t)
        if trial.trial_id in self.rungs[rung]:  # reported again (a retried worker): judged once
            return TrialScheduler.CONTINUE
        self.rungs[rung][trial.trial_id] = self._score(result)
        if self._promotable(trial.trial_id, rung, relaxed=False):
            self.promoted[rung].add(trial.trial_id)
            return TrialScheduler.CONTINUE
        self.paused_at[trial.trial_id] = rung
        _searcher(tune_controller, "on_pause", trial.trial_id)
        return TrialScheduler.PAUSE

    def _forget(self, trial: Trial) -> None:
        self._chosen.discard(trial.trial_id)
        self.paused_at.pop(trial.trial_id, None)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._forget(trial)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._forget(trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._forget(trial)

    def _promote(self, tune_controller, trials: list[Trial], relaxed: bool) -> Trial | None:
        """The paused trial to resume: the highest rung first, the best of it first."""
        paused = {t.trial_id: t for t in trials if t.status == Trial.PAUSED and t.trial_id in self.paused_at}
        for rung in reversed(range(len(self.milestones))):
            rec = self.rungs[rung]
            for tid in sorted((i for i in paused if self.paused_at[i] == rung), key=lambda i: (rec[i], i)):
                if self._promotable(tid, rung, relaxed):
                    self.promoted[rung].add(tid)
                    del self.paused_at[tid]
                    _searcher(tune_controller, "on_unpause", tid)
                    return paused[tid]
        return None

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        trials = tune_controller.get_trials()
        by_id = {t.trial_id: t for t in trials}
        self._chosen = {i for i in self._chosen if i in by_id and by_id[i].status in (Trial.PENDING, Trial.PAUSED)}
        for i in sorted(self._chosen):  # one Tune has not started yet: the same one again
            return by_id[i]
        running = sum(t.status == Trial.RUNNING for t in trials)
        if self._max_concurrent and running >= self._max_concurrent:
            return None
        pending = [t for t in trials if t.status == Trial.PENDING]
        pick = self._promote(tune_controller, trials, relaxed=False) or (pending[0] if pending else None)
        if pick is None and (not self._num_samples or len(trials) >= self._num_samples):
            # every configuration has started: the end of the search (see the module's note)
            pick = self._promote(tune_controller, trials, relaxed=True)
            if pick is None and not running:
                for t in trials:
                    if t.status == Trial.PAUSED and t.trial_id in self.paused_at:
                        self._forget(t)
                        _stop_paused(tune_controller, t)
        if pick is not None:
            self._chosen.add(pick.trial_id)
        return pick

    def debug_string(self) -> str:
        return "Promotion ASHA: " + ", ".join(
            f"rung {m}: {len(r)} judged, {len(p)} promoted" for m, r, p in zip(self.milestones, self.rungs, self.promoted))


def _searcher(tune_controller, event: str, trial_id: str) -> None:
    """Tell the job's searcher (``SlotLimiter``) that a trial paused or resumed: a paused trial
    holds no slot. Tune's search algorithm wraps it as ``.searcher``."""
    searcher = getattr(getattr(tune_controller, "search_alg", None), "searcher", None)
    hook = getattr(searcher, event, None)
    if hook is not None:
        hook(trial_id)


def _stop_paused(tune_controller, trial: Trial) -> None:
    """End a paused trial at its rung. Tune 2.60's ``stop_trial`` marks TERMINATED but queues the
    trial for its experiment state only when it has an actor, and a paused one has none: the state
    file would keep it PAUSED (a resumed driver would start it again). So it is queued here."""
    tune_controller.stop_trial(trial)
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    mark = getattr(controller, "_mark_trial_to_checkpoint", None)
    if mark is not None:
        mark(trial)
