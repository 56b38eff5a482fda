"""Pause-and-resume successive halving: the promotion variant of ASHA (Li et al. 2020, sec. 3;
syne-tune's ``HyperbandScheduler(type="promotion")``), as a Ray Tune scheduler.

Ray's ``ASHAScheduler`` is the stopping variant: a trial below the top 1/eta of a rung when it
gets there is stopped for good (ray-project/ray#44256), so a configuration judged at a rung that
cannot yet tell ends there. Here a trial that reaches a rung *pauses* (Tune keeps its checkpoint);
a paused trial is promoted, and resumed from that checkpoint, once it is in the top 1/eta of the
values its rung has collected; a new configuration starts only when nothing can be promoted.

Ray has no such scheduler (its ``HyperBandScheduler`` pauses too, but synchronously, in brackets
filled before any is judged), and syne-tune's cannot drive Ray Tune trials: hence this one.

A rung cuts only once it is shown to judge (``agreement``): over the trials that have both its
value and a final one (at ``max_t``), Spearman's rank correlation must reach the bar (0.8 by
default, over at least ``min_pairs`` such trials). Until then every trial that reaches the rung
goes on, and a trial paused there is resumed. On a recorded grid under a cosine schedule the rank
correlation with the final value was 0.35 after epoch 1 of 8 and 0.90 after epoch 4: a rung at
epoch 1 would cut the eventual winner (9th of 36 there). ``agreement: -1`` judges at every rung
from the start (the paper's rule).

A finite search ends as the paper's does not (it samples forever): once every configuration has
started and none is waiting, a free slot goes to the best paused trial of the highest rung (the
top ``max(1, n // eta)``), so the last trials of a search are judged by the same rule on what
there is; a slot that would still idle while other trials run resumes the best paused trial
whose run to its next rung ends, in epochs, no later than the longest of those runs (free
compute: the search ends with that run anyway); a paused trial that no such rule would ever
promote is stopped at its rung.

``finish_baseline``: the first trial (a job's baseline, which its searcher proposes first; the job
sets this when it has one) is resumed to ``max_t`` once every configuration has started, whatever
its rank: the report then compares the best and the baseline at equal budget, which a stopping
scheduler cannot (it would have ended the baseline at the rung that cut it).
"""
from __future__ import annotations

import copy
import logging
import math

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

log = logging.getLogger(__name__)


class PromotionASHA(FIFOScheduler):
    """``grace_period`` epochs to the first rung, ``reduction_factor`` (eta) between rungs, up to
    ``max_t`` epochs; ``max_concurrent`` trials run at once (a paused trial holds no slot, so the
    searcher's concurrency limit cannot be what caps them).

    Tune asks the searcher for a new trial before it asks the scheduler which trial to run, and
    starts every pending trial: so the job's ``SlotLimiter`` asks ``may_start_new`` first, and no
    new configuration is drawn while a paused trial can be promoted."""

    def __init__(self, metric: str | None = None, mode: str | None = None, time_attr: str = "training_iteration",
                 max_t: int = 100, grace_period: int = 1, reduction_factor: float = 3,
                 max_concurrent: int = 0, agreement: float = 0.8, min_pairs: int = 6,
                 finish_baseline: bool = False):
        super().__init__()
        if grace_period < 1 or reduction_factor <= 1 or max_t < grace_period:
            raise ValueError("promotion ASHA needs grace_period >= 1, reduction_factor > 1 and "
                             f"max_t >= grace_period (got {grace_period}, {reduction_factor}, {max_t})")
        self._metric, self._mode, self._time_attr = metric, mode, time_attr
        self._max_t, self._eta = int(max_t), float(reduction_factor)
        self._max_concurrent = int(max_concurrent)
        if not -1 <= agreement <= 1 or min_pairs < 3:
            raise ValueError(f"promotion ASHA needs agreement in [-1, 1] and min_pairs >= 3 "
                             f"(got {agreement}, {min_pairs})")
        self._bar, self._min_pairs = float(agreement), int(min_pairs)
        self.final: dict[str, float] = {}  # trial id -> value at max_t (lower is better)
        # rungs that have cut: they go on cutting (the agreement measured later is over the
        # survivors of the cut, a narrower range that understates it)
        self._cutting: set[int] = set()
        # rung -> ((its size, finals so far), rank_agreement): asked for every paused trial at
        # every Tune step, and recorded values never change, so it is computed again only when
        # the rung or the finals grow
        self._agreement: dict[int, tuple[tuple[int, int], tuple[float, int]]] = {}
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
        self._owed: dict[str, int] = {}  # trial id -> the rung it was pausing at when it failed (retried)
        self._finish_baseline = bool(finish_baseline)
        self.baseline: str | None = None  # the first trial added, when finish_baseline
        self.backfilled: set[str] = set()  # trials resumed into a slot that would idle (_backfill)

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

    def rank_agreement(self, rung: int) -> tuple[float, int]:
        """Spearman's rho between rung ``rung``'s values and the final ones, over the trials that
        have both (NaN below 3 of them or when either side is constant), and how many they are."""
        key = (len(self.rungs[rung]), len(self.final))
        cached = self._agreement.get(rung)
        if cached is None or cached[0] != key:
            self._agreement[rung] = cached = (key, self._spearman(rung))
        return cached[1]

    def _spearman(self, rung: int) -> tuple[float, int]:
        both = [t for t in self.rungs[rung] if t in self.final
                and math.isfinite(self.rungs[rung][t]) and math.isfinite(self.final[t])]
        x, y = [self.rungs[rung][t] for t in both], [self.final[t] for t in both]
        if len(both) < 3 or len(set(x)) < 2 or len(set(y)) < 2:  # undefined (scipy would warn)
            return math.nan, len(both)
        from scipy.stats import spearmanr

        return float(spearmanr(x, y).statistic), len(both)

    def judges(self, rung: int) -> bool:
        """Whether rung ``rung`` may cut: its ranking is shown to predict the final one."""
        if self._bar <= -1 or rung in self._cutting:
            return True
        rho, n = self.rank_agreement(rung)
        if n >= self._min_pairs and rho >= self._bar:
            self._cutting.add(rung)
            return True
        return False

    def _promotable(self, trial_id: str, rung: int, relaxed: bool) -> bool:
        if trial_id in self.promoted[rung] or trial_id in self.backfilled:
            return False
        if not self.judges(rung):
            return True
        rec = self.rungs[rung]
        k = int(len(rec) / self._eta)
        if relaxed:
            k = max(1, k)
        top = sorted(rec, key=lambda t: (rec[t], t))[:k]
        return trial_id in top

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self._chosen.discard(trial.trial_id)
        t = int(result.get(self._time_attr, 0))
        if t >= self._max_t:
            self.final[trial.trial_id] = self._score(result)
            return TrialScheduler.STOP
        tid = trial.trial_id
        owed = self._owed.pop(tid, None)  # it failed while pausing and was retried
        if t in self.milestones and tid not in self.rungs[self.milestones.index(t)]:
            rung = self.milestones.index(t)  # a rung reached (after a retry: the next one)
            self.rungs[rung][tid] = self._score(result)
        elif owed is not None:  # the pause it owes still stands
            rung = owed
        else:  # between rungs, or a rung reported again by a retried worker (judged once)
            return TrialScheduler.CONTINUE
        if result.get("done") or result.get("early_stop") or result.get("diverged"):
            return TrialScheduler.CONTINUE  # its last report (its value counts): the run ends by itself
        if self._promotable(tid, rung, relaxed=False) or (tid == self.baseline and _search_finished(tune_controller)):
            # (the baseline at the end of the search goes on to max_t: no pause to resume at once)
            self.promoted[rung].add(tid)
            return TrialScheduler.CONTINUE
        self.paused_at[tid] = rung
        _searcher(tune_controller, "on_pause", tid)
        return TrialScheduler.PAUSE

    def _forget(self, trial: Trial) -> None:
        self._chosen.discard(trial.trial_id)
        self.paused_at.pop(trial.trial_id, None)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        if result and int(result.get(self._time_attr, 0)) >= self._max_t:
            self.final[trial.trial_id] = self._score(result)
        self._forget(trial)
        self._owed.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._forget(trial)
        self._owed.pop(trial.trial_id, None)

    # what a resumed search must know (SlotLimiter saves it with the searcher's state): the
    # rungs' values, who was promoted, who waits where, the finals and the rungs that cut
    _STATE = ("rungs", "promoted", "paused_at", "final", "_owed", "_cutting", "baseline", "backfilled")

    def get_state(self) -> dict:
        return copy.deepcopy({k: getattr(self, k) for k in self._STATE})

    def set_state(self, state: dict) -> None:
        for k in self._STATE:
            if k in state:  # (a state saved before a key was added keeps the fresh default)
                setattr(self, k, copy.deepcopy(state[k]))
        self._chosen, self._agreement = set(), {}

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        """A resumed search re-adds every unfinished trial as pending. One that waited at its rung
        (its last result Tune saved is that rung's) waits there again, paused: it starts when it
        is promoted. One whose pause Tune had not saved (its saved result is older) runs again
        from its checkpoint and owes the pause, as after a failure."""
        if self._finish_baseline and self.baseline is None:
            self.baseline = trial.trial_id  # the first trial: the searcher proposes the baseline first
        rung = self.paused_at.get(trial.trial_id)
        if rung is None or trial.status != Trial.PENDING:
            return
        if int((trial.last_result or {}).get(self._time_attr, 0)) == self.milestones[rung]:
            trial.set_status(Trial.PAUSED)  # before Tune files it by status: not queued to start
        else:
            del self.paused_at[trial.trial_id]
            self._owed[trial.trial_id] = rung
            _searcher(tune_controller, "on_unpause", trial.trial_id)

    def may_start_new(self) -> bool:
        """Whether a new configuration may be drawn: not while a paused trial can be promoted."""
        return not any(self._promotable(tid, rung, relaxed=False) for tid, rung in self.paused_at.items())

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        # called when a trial fails, retried or not; one that failed while its pause was being
        # saved runs again from its checkpoint and owes that pause (after a final error the
        # entry stays, unused: Tune tells the scheduler nothing more of that trial)
        rung = self.paused_at.get(trial.trial_id)
        if rung is not None and trial.status != Trial.PAUSED:
            self._owed[trial.trial_id] = rung
            _searcher(tune_controller, "on_unpause", trial.trial_id)
        self._forget(trial)

    def _promote(self, tune_controller, trials: list[Trial], relaxed: bool) -> Trial | None:
        """The paused trial to resume: the highest rung first, the best of it first; at the end of
        the search (``relaxed``) the baseline before any (``finish_baseline``: its run to max_t is
        the longest left, and starts first)."""
        paused = {t.trial_id: t for t in trials if t.status == Trial.PAUSED and t.trial_id in self.paused_at}
        if relaxed and self.baseline in paused:
            return self._resume(tune_controller, paused[self.baseline])
        for rung in reversed(range(len(self.milestones))):
            rec = self.rungs[rung]
            for tid in sorted((i for i in paused if self.paused_at[i] == rung), key=lambda i: (rec[i], i)):
                if self._promotable(tid, rung, relaxed):
                    return self._resume(tune_controller, paused[tid])
        return None

    def _backfill(self, tune_controller, trials: list[Trial]) -> Trial | None:
        """At the end of the search, a slot nothing else would use: the paused trial (the highest
        rung first, the best of it first) whose run to its next rung, at its own seconds an epoch,
        ends before the longest run still going (its epochs after the one under way, at that run's
        seconds an epoch). It costs no wall time (the search ends with that run anyway) and turns
        an idle slot into a longer run of a good configuration; without it one slot sat idle while
        the baseline alone ran to the end (the demo: 68% of the slots busy). A trial resumed so
        goes on only the same way (``_promotable`` is false for it): free compute never extends
        the search."""
        left = 0.0
        for t in trials:
            if t.status != Trial.RUNNING:
                continue
            at = int((t.last_result or {}).get(self._time_attr, 0))
            if t.trial_id == self.baseline:
                stop = self._max_t  # resumed to the end (finish_baseline)
            else:
                stop = next((m for i, m in enumerate(self.milestones)
                             if m > at and t.trial_id not in self.promoted[i]), self._max_t)
            left = max(left, (stop - at - 1) * _epoch_seconds(t))
        paused = {t.trial_id: t for t in trials if t.status == Trial.PAUSED and t.trial_id in self.paused_at}
        for rung in reversed(range(len(self.milestones))):
            rec, at = self.rungs[rung], self.milestones[rung]
            nxt = self.milestones[rung + 1] if rung + 1 < len(self.milestones) else self._max_t
            for tid in sorted((i for i in paused if self.paused_at[i] == rung), key=lambda i: (rec[i], i)):
                if (nxt - at) * _epoch_seconds(paused[tid]) <= left:
                    log.info("promotion ASHA: %s resumed to epoch %d in a slot that would idle (%.0f s left "
                             "in the longest run)", tid, nxt, left)
                    self.backfilled.add(tid)
                    return self._resume(tune_controller, paused[tid])
        return None

    def _resume(self, tune_controller, trial: Trial) -> Trial:
        self.promoted[self.paused_at.pop(trial.trial_id)].add(trial.trial_id)
        _searcher(tune_controller, "on_unpause", trial.trial_id)
        return trial

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        trials = tune_controller.get_trials()
        by_id = {t.trial_id: t for t in trials}
        self._chosen = {i for i in self._chosen if i in by_id and by_id[i].status in (Trial.PENDING, Trial.PAUSED)}
        for i in sorted(self._chosen):  # one Tune has not started yet: the same one again
            return by_id[i]
        # Tune starts every pending trial (a retried one, or one the searcher was allowed to add)
        pending = [t for t in trials if t.status == Trial.PENDING]
        if pending:
            self._chosen.add(pending[0].trial_id)
            return pending[0]
        running = sum(t.status == Trial.RUNNING for t in trials)
        if self._max_concurrent and running >= self._max_concurrent:
            return None
        pick = self._promote(tune_controller, trials, relaxed=False)
        if pick is None and _search_finished(tune_controller):
            # every configuration has been drawn: the end of the search (see the module's note)
            pick = self._promote(tune_controller, trials, relaxed=True)
            if pick is None and running:
                pick = self._backfill(tune_controller, trials)
            if pick is None and not running:
                for t in trials:
                    if t.status == Trial.PAUSED and t.trial_id in self.paused_at:
                        self._forget(t)
                        _stop_paused(tune_controller, t)
        if pick is not None:
            self._chosen.add(pick.trial_id)
        return pick

    def debug_string(self) -> str:
        parts = []
        for i, m in enumerate(self.milestones):
            rho, n = self.rank_agreement(i)
            parts.append(f"rung {m}: {len(self.rungs[i])} reached, {len(self.promoted[i])} promoted, "
                         f"rank agreement {rho:.2f} over {n} ({'cuts' if self.judges(i) else 'does not cut yet'})")
        return "Promotion ASHA: " + "; ".join(parts)


def _searcher(tune_controller, event: str, trial_id: str) -> None:
    """Tell the job's searcher (``SlotLimiter``) that a trial paused or resumed: a paused trial
    holds no slot. Tune's search algorithm wraps it as ``.searcher``."""
    searcher = getattr(getattr(tune_controller, "search_alg", None), "searcher", None)
    hook = getattr(searcher, event, None)
    if hook is not None:
        hook(trial_id)


def _epoch_seconds(trial: Trial) -> float:
    """A trial's seconds an epoch, as its last report measured them (1 when it has none yet)."""
    s = (trial.last_result or {}).get("time_this_iter_s")
    return float(s) if s and s == s else 1.0


def _search_finished(tune_controller) -> bool:
    """Whether the searcher will draw no more configurations (Tune's ``SearchGenerator``)."""
    search = getattr(tune_controller, "search_alg", None)
    return search is None or search.is_finished()


def _stop_paused(tune_controller, trial: Trial) -> None:
    """End a paused trial at its rung. Tune 2.60's ``stop_trial`` marks TERMINATED but queues the
    trial for its experiment state only when it has an actor, and a paused one has none: the state
    file would keep it PAUSED (a resumed driver would start it again). So it is queued here."""
    tune_controller.stop_trial(trial)
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    mark = getattr(controller, "_mark_trial_to_checkpoint", None)
    if mark is not None:
        mark(trial)
