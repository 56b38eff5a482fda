"""The benchmark's peers behind the replay's calls (tune_jobs.replay): each is a policy with the
searcher and scheduler methods the replay makes of Tune's (``suggest``, ``on_trial_result``,
``on_trial_complete``, ``on_trial_add``, ``choose_trial_to_run``), so every method runs on the same
curves, the same simulated clock and the same slots.

- Optuna 5: its TPE sampler with its Hyperband pruner, through ask/tell.
- syne-tune 0.13 (the last release with MOBSTER, Hyper-Tune and DyHPO; 0.14+ dropped them): its
  schedulers' own ``suggest`` / ``on_trial_result`` / ``on_trial_complete`` / ``on_trial_remove``,
  called as its ``Tuner`` calls them (a paused trial is resumed when its ``suggest`` says so).
- Ray's ``TuneBOHB`` + ``HyperBandForBOHB`` (hpbandster, ConfigSpace): Ray's own objects, as a
  real Ray search makes them.

All are benchmark-only dependencies (the ``bench`` extra), imported here only.
"""
from __future__ import annotations

from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from tune_jobs.searchers import NS


class _Policy:
    """One object in both roles, as the replay calls them: the scheduler's calls carry the
    controller first (3 arguments), the searcher's do not."""

    CONTINUE, PAUSE, STOP = TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP

    def __init__(self, curves):
        self.curves = curves
        # a table that is no full product (a CURVES file, trials left out): its configurations
        # by number, as tune_jobs.replay.RayPolicy does
        self.levels = curves.levels() if curves.is_product() else {"__config": list(range(len(curves.configs)))}
        self.searcher = self.scheduler = self

    def index(self, config: dict) -> int:
        flat = config.get(NS, config)
        return int(flat["__config"]) if "__config" in flat else self.curves.index(flat)

    def on_trial_add(self, ctl, trial) -> None:
        pass

    def choose_trial_to_run(self, ctl):
        return next((t for t in ctl.get_trials() if t.status == "PENDING"), None)


class OptunaPolicy(_Policy):
    """Optuna's TPE sampler and Hyperband pruner (ask/tell)."""

    def __init__(self, curves, seed: int):
        import optuna

        super().__init__(curves)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(
            study_name=f"replay-{seed}",  # Hyperband assigns brackets by a hash of the name: fixed per seed
            direction="minimize" if curves.mode == "min" else "maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=curves.epochs, reduction_factor=3))
        self.trials, self.told = {}, set()

    def suggest(self, trial_id: str) -> dict:
        t = self.study.ask()
        self.trials[trial_id] = t
        return {NS: {p: t.suggest_categorical(p, v) for p, v in self.levels.items()}}

    def on_trial_result(self, *args):
        if len(args) == 2:  # the searcher's call: the scheduler's decided
            return None
        _, trial, result = args
        t = self.trials[trial.trial_id]
        t.report(result[self.curves.metric], step=result["training_iteration"])
        if t.should_prune():
            import optuna

            self.study.tell(t, state=optuna.trial.TrialState.PRUNED)
            self.told.add(trial.trial_id)
            return self.STOP
        return self.CONTINUE

    def on_trial_complete(self, *args, **kw):
        if len(args) < 3:
            return
        _, trial, result = args
        if trial.trial_id not in self.told:
            self.study.tell(self.trials[trial.trial_id], result[self.curves.metric])
            self.told.add(trial.trial_id)


# syne-tune 0.13 baselines by the benchmark's names, with the options that differ from theirs
SYNETUNE = {
    "synetune-asha-promotion": ("ASHA", {"type": "promotion"}),
    "synetune-mobster": ("MOBSTER", {}),
    "synetune-hypertune": ("HyperTune", {}),
    # DyHPO's rungs are linearly spaced, one epoch apart (its own advice: grace == increment)
    "synetune-dyhpo": ("DyHPO", {"grace_period": 1, "rung_increment": 1}),
    "synetune-bohb": ("BOHB", {}),
}


class SyneTunePolicy(_Policy):
    """A syne-tune scheduler on the replay's clock. Its ``suggest`` either starts a new
    configuration or names a paused trial to resume; the replay asks for new configurations only
    when a slot is free and none is pending, so a resume it names is held until the replay asks
    which trial to run."""

    def __init__(self, curves, seed: int, name: str):
        import logging

        from syne_tune.config_space import choice
        from syne_tune.optimizer import baselines

        super().__init__(curves)
        for noisy in ("syne_tune", "autograd"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        cls, opts = SYNETUNE[name]
        space = {p: choice(list(v)) for p, v in self.levels.items()} | {"epochs": curves.epochs}
        self.st = getattr(baselines, cls)(space, metric=curves.metric, mode=curves.mode, resource_attr="epoch",
                                          max_resource_attr="epochs", random_seed=seed, **opts)
        self.ids: dict[str, object] = {}  # replay trial id -> syne-tune Trial
        self.by_st: dict[int, str] = {}
        self.resume: str | None = None
        self.stopped: set[str] = set()  # its last decision was STOP

    def _trial(self, trial_id: str, config: dict):
        from datetime import datetime

        from syne_tune.backend.trial_status import Trial

        t = Trial(trial_id=len(self.ids), config=config, creation_time=datetime.now())
        self.ids[trial_id], self.by_st[t.trial_id] = t, trial_id
        return t

    def suggest(self, trial_id: str):
        s = self.st.suggest(trial_id=len(self.ids))
        if s is None:  # its Tuner stops here: it starts and resumes nothing more
            return Searcher.FINISHED
        if not s.spawn_new_trial_id:  # resume a paused trial (promotion)
            self.resume = self.by_st[s.checkpoint_trial_id]
            return None
        self._trial(trial_id, dict(s.config))
        return {NS: {k: v for k, v in s.config.items() if k != "epochs"}}

    def on_trial_add(self, ctl, trial) -> None:
        self.st.on_trial_add(self.ids[trial.trial_id])

    def choose_trial_to_run(self, ctl):
        # a resume its suggest named; once the replay asks for no more (the Tuner's stop
        # criterion, or its space exhausted) nothing is resumed, as under its Tuner
        if self.resume is not None:
            tid, self.resume = self.resume, None
            return next(t for t in ctl.get_trials() if t.trial_id == tid)
        return super().choose_trial_to_run(ctl)

    def _result(self, trial, result: dict) -> dict:
        return {self.curves.metric: result[self.curves.metric], "epoch": result["training_iteration"]}

    def on_trial_result(self, *args):
        if len(args) == 2:
            return None
        _, trial, result = args
        from syne_tune.optimizer.scheduler import SchedulerDecision

        d = self.st.on_trial_result(self.ids[trial.trial_id], self._result(trial, result))
        if d == SchedulerDecision.STOP:
            self.stopped.add(trial.trial_id)
            return self.STOP
        if d == SchedulerDecision.PAUSE:
            self.st.on_trial_remove(self.ids[trial.trial_id])  # as syne-tune's Tuner does
            return self.PAUSE
        return self.CONTINUE

    def on_trial_complete(self, *args, **kw):
        if len(args) < 3:
            return
        _, trial, result = args
        t = self.ids[trial.trial_id]
        if trial.trial_id in self.stopped:  # its Tuner: a stopped trial is removed
            self.st.on_trial_remove(t)
        else:  # ran to the end (its last result has been through on_trial_result)
            self.st.on_trial_complete(t, self._result(trial, result))

    def on_trial_remove(self, ctl, trial) -> None:
        self.st.on_trial_remove(self.ids[trial.trial_id])


class BOHBPolicy(_Policy):
    """Ray's ``TuneBOHB`` searcher with its ``HyperBandForBOHB`` scheduler (Ray's BOHB pairing)."""

    def __init__(self, curves, seed: int, slots: int):
        import ConfigSpace as CS
        from ray.tune.schedulers import HyperBandForBOHB
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.bohb import TuneBOHB

        super().__init__(curves)
        cs = CS.ConfigurationSpace(seed=seed)
        for p, v in self.levels.items():  # categories as strings: ConfigSpace orders none of them
            cs.add(CS.CategoricalHyperparameter(p, [str(x) for x in v]))
        self.cast = {p: {str(x): x for x in v} for p, v in self.levels.items()}
        self.searcher = ConcurrencyLimiter(TuneBOHB(space=cs, metric=curves.metric, mode=curves.mode, seed=seed),
                                           max_concurrent=slots)
        self.scheduler = HyperBandForBOHB(time_attr="training_iteration", max_t=curves.epochs, reduction_factor=3,
                                          metric=curves.metric, mode=curves.mode)

    def index(self, config: dict) -> int:
        flat = config.get(NS, config)
        return super().index({NS: {p: self.cast[p][str(flat[p])] for p in self.levels}})
