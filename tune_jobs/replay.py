"""What-if replay: the recorded learning curves of a finished search (``analysis.replay.Curves``),
run again through the same Ray Tune schedulers and searchers a real search uses
(``tune_jobs.registry``), with nothing trained. A replayed trial "trains" an epoch by waiting, on
a simulated clock, the seconds that epoch took when it was recorded, and reports the value
recorded for it; the scheduler decides after each report (continue, stop, pause) and the
searcher proposes the next configuration from what it has seen, exactly as under Tune's
controller, with ``slots`` trials at a time.

So one recorded run of every configuration to the end (a grid under FIFO) answers, for any
scheduler and searcher, and over as many seeds as wanted: how much compute it would have spent
and how good a configuration it would have found. syne-tune calls this a simulated backend over
a tabulated benchmark; Ray Tune has none, so the event loop is written here (about 60 lines),
while every decision is made by Ray's own classes. What is measured over the replays is
``analysis.replay``'s.
"""
from __future__ import annotations

import heapq
import itertools

from analysis.replay import Curves, Run, summarize

# scheduler options of a replay (epochs are Tune's training iterations); the recorded epochs set max_t
SCHEDULER_OPTIONS = {"asha": {"grace_period": 1, "reduction_factor": 3},
                     "promotion": {"grace_period": 1, "reduction_factor": 3},
                     "hyperband": {"grace_period": 1, "reduction_factor": 3, "brackets": 3},
                     "median": {"grace_period": 1}, "fifo": {}}


# -- the simulated Tune controller ------------------------------------------------------------
class _Trial:
    """What Tune's schedulers read of a trial: its id, config, status and last result."""
    PENDING, RUNNING, PAUSED, TERMINATED = "PENDING", "RUNNING", "PAUSED", "TERMINATED"

    def __init__(self, trial_id: str, config: dict, index: int):
        self.trial_id, self.config, self.index = trial_id, config, index
        self.status, self.last_result, self.epoch = self.PENDING, {}, 0
        self.is_saving = False  # Ray's HyperBand asks (a replayed pause saves at once)

    def __repr__(self) -> str:
        return self.trial_id


class _Controller:
    """What Tune's controller offers a scheduler: the trials, ``stop_trial`` (promotion ASHA ends
    a paused trial it will never promote) and the search algorithm (whose ``searcher`` hears of
    pauses, as under Tune)."""

    def __init__(self, policy=None):
        self.trials: list[_Trial] = []
        self.policy = policy
        self.searcher = getattr(policy, "searcher", None)
        self.search_done = False  # the replay's loop says when no new configuration will come

    def get_trials(self) -> list[_Trial]:
        return self.trials

    def get_live_trials(self) -> list[_Trial]:
        return [t for t in self.trials if t.status != _Trial.TERMINATED]

    @property
    def search_alg(self):
        return self  # as Tune's SearchGenerator: ``searcher`` and ``is_finished``

    def is_finished(self) -> bool:
        return self.search_done

    def stop_trial(self, trial: _Trial) -> None:
        """A paused or pending trial, ended without running again; as Tune's ``stop_trial``, the
        searcher is told without a result."""
        self.policy.scheduler.on_trial_remove(self, trial)
        self.policy.searcher.on_trial_complete(trial.trial_id, None)
        trial.status = _Trial.TERMINATED


class RayPolicy:
    """A Tune scheduler and searcher from the registry, as a real search makes them."""

    def __init__(self, curves: Curves, scheduler: str, searcher: str, seed: int, slots: int,
                 options: dict | None = None):
        from ray import tune

        from tune_jobs.registry import make_scheduler, make_searcher

        self.curves, self.name = curves, (scheduler, searcher)
        opts = {**SCHEDULER_OPTIONS[scheduler], **(options or {})}
        if scheduler not in ("fifo", "median"):
            opts["max_t"] = curves.epochs
        # a replay's first configuration is a job's baseline only when the options say so
        self.scheduler = make_scheduler(scheduler, metric=curves.metric, mode=curves.mode, max_concurrent=slots,
                                        baseline=bool(opts.get("finish_baseline")), **opts)
        levels = curves.levels()
        if not curves.is_product() or searcher == "grid":
            # the recorded configurations themselves (a grid runs them in the order recorded)
            levels = {"__config": list(range(len(curves.configs)))}
        self.levels = levels
        space = {} if searcher == "grid" else {p: tune.choice(v) for p, v in levels.items()}
        self.searcher = make_searcher(searcher, metric=curves.metric, mode=curves.mode, seed=seed, space=space,
                                      grid=levels if searcher == "grid" else {}, trials={}, points=[],
                                      constraints=[], fixed={}, max_concurrent=slots, scheduler=self.scheduler)

    def index(self, config: dict) -> int:
        from tune_jobs.searchers import NS

        flat = config[NS]
        return int(flat["__config"]) if "__config" in flat else self.curves.index(flat)


class _Simulation:
    """One replay's state: the policy, the simulated controller, the events (an epoch's end, at
    its simulated time) and the limits on trials and trial-seconds."""

    def __init__(self, curves: Curves, pol, run: Run, slots: int, max_trials: int, budget_s: float):
        self.curves, self.pol, self.run, self.slots = curves, pol, run, slots
        self.max_trials, self.budget_s = max_trials, budget_s
        self.ctl, self.events, self.now, self.running, self.finished = _Controller(pol), [], 0.0, 0, False
        self.order = itertools.count()

    def schedule_epoch(self, trial: _Trial) -> None:
        heapq.heappush(self.events, (self.now + self.curves.seconds[trial.index, trial.epoch], next(self.order), trial))

    def _draw(self) -> None:
        """A new configuration from the searcher, when nothing is pending and the limits allow."""
        from ray.tune.search import Searcher

        run, ctl = self.run, self.ctl
        pending = any(t.status == _Trial.PENDING for t in ctl.trials)
        if not pending and not self.finished and run.trials < self.max_trials and run.seconds < self.budget_s:
            tid = f"replay_{run.trials:05d}"
            cfg = self.pol.searcher.suggest(tid)
            if cfg == Searcher.FINISHED:
                self.finished = True
            elif cfg is not None:
                trial = _Trial(tid, cfg, self.pol.index(cfg))
                ctl.trials.append(trial)
                self.pol.scheduler.on_trial_add(ctl, trial)
                run.trials += 1
        ctl.search_done = self.finished or run.trials >= self.max_trials or run.seconds >= self.budget_s

    def start_more(self) -> None:
        """Fill the free slots with what the scheduler chooses to run."""
        while self.running < self.slots:
            self._draw()
            trial = self.pol.scheduler.choose_trial_to_run(self.ctl)
            if trial is None:
                return
            trial.status = _Trial.RUNNING
            self.running += 1
            self.schedule_epoch(trial)

    def epoch_ends(self, trial: _Trial) -> bool:
        """The recorded value of the trial's next epoch, reported to the scheduler and the
        searcher as under Tune; True when the trial goes on running (its slot stays taken)."""
        from ray.tune.schedulers import TrialScheduler

        curves, run, pol = self.curves, self.run, self.pol
        e = trial.epoch
        value, secs = float(curves.values[trial.index, e]), float(curves.seconds[trial.index, e])
        trial.epoch += 1
        run.epochs += 1
        run.seconds += secs
        lower = curves.mode == "min"
        if value == value and (run.best != run.best or (value < run.best if lower else value > run.best)):
            run.best, run.incumbent = value, trial.index
        run.trace.append((run.seconds, run.best, run.incumbent))
        result = {"training_iteration": trial.epoch, curves.metric: value, "time_this_iter_s": secs,
                  "trial_id": trial.trial_id, "config": trial.config}
        trial.last_result = result
        done = trial.epoch >= curves.epochs
        decision = pol.scheduler.on_trial_result(self.ctl, trial, result)
        if done and decision != TrialScheduler.STOP:
            # as under Tune: the last report goes to both like every other, then the run ends
            pol.searcher.on_trial_result(trial.trial_id, result)
        if done or decision == TrialScheduler.STOP:
            pol.scheduler.on_trial_complete(self.ctl, trial, result)
            pol.searcher.on_trial_complete(trial.trial_id, result)
            trial.status = _Trial.TERMINATED
        elif decision == TrialScheduler.PAUSE:
            pol.searcher.on_trial_result(trial.trial_id, result)
            trial.status = _Trial.PAUSED
        else:
            pol.searcher.on_trial_result(trial.trial_id, result)
            return True
        self.running -= 1
        return False


def replay(curves: Curves, scheduler: str = "asha", searcher: str = "random", seed: int = 0, slots: int = 2,
           max_trials: int | None = None, budget_s: float | None = None, policy=None,
           options: dict | None = None) -> Run:
    """One simulated search over ``curves``: at most ``max_trials`` trials (default: as many as
    recorded configurations) and ``budget_s`` trial-seconds (default: running all of them to the
    end); ``options`` over the scheduler's (``grace_period``...). ``policy`` replaces the Ray one
    (the benchmark's Optuna peer has the same methods)."""
    pol = policy or RayPolicy(curves, scheduler, searcher, seed, slots, options)
    run = Run(scheduler, searcher, seed)
    sim = _Simulation(curves, pol, run, slots, max_trials or len(curves.configs),
                      budget_s if budget_s is not None else curves.total_seconds())
    sim.start_more()
    while sim.events:
        sim.now, _, trial = heapq.heappop(sim.events)
        if sim.epoch_ends(trial):
            sim.schedule_epoch(trial)
        else:
            sim.start_more()
    run.wall = sim.now
    return run


def replay_table(curves: Curves, methods: list[tuple[str, str]], repeats: int = 10, slots: int = 2,
                 max_trials: int | None = None, within: float = 0.05, policies: dict | None = None,
                 options: dict | None = None) -> list[dict]:
    """One row per (scheduler, searcher): ``summarize`` over ``repeats`` seeds. ``policies`` maps
    extra method names to ``seed -> policy`` factories (the benchmark's Optuna peer)."""
    rows = []
    for sched, search in methods:
        make = (policies or {}).get((sched, search))
        opts = {k: v for k, v in (options or {}).items() if sched not in ("fifo", "median") or k == "grace_period"}
        runs = [replay(curves, sched, search, seed=s, slots=slots, max_trials=max_trials,
                       policy=make(s) if make else None, options=opts if sched != "fifo" else None)
                for s in range(repeats)]
        rows.append({"scheduler": sched, "searcher": search, **summarize(runs, curves, within)})
    return rows
