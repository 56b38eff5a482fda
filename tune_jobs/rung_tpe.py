"""A budget-aware TPE: hyperopt's sampler, fit per epoch (the highest with enough results).

Searcher name ``rung_tpe``. Why not Ray's ``HyperOptSearch`` as it is: under an early-stopping or
pausing scheduler it files a trial stopped at epoch 2 with its epoch-2 value as if it had
finished, and a running trial as infinitely bad; TPE then learns from values of different
budgets as if they were one. BOHB (Falkner et al. 2018) and Hyper-Tune (Li et al. 2022) fit their
models per budget instead; this is that rule over hyperopt's TPE (the job's dependency already),
not a hand-written TPE. Optuna's would do as well, but Optuna is a benchmark-only peer here.
"""
from __future__ import annotations

import copy
import logging

import hyperopt.rand
import numpy as np
from hyperopt import Trials
from hyperopt.base import JOB_STATE_DONE
from ray.tune.search import Searcher
from ray.tune.search.hyperopt import HyperOptSearch

from tune_jobs.searchers import NS, config_key, distinct_configurations, unseen_configuration

log = logging.getLogger(__name__)


class RungTPE(HyperOptSearch):
    """TPE (hyperopt's, through Ray's ``HyperOptSearch``) fit per budget, as BOHB and Hyper-Tune fit
    theirs: the model is fit on the values every trial reported at one epoch, the highest epoch at
    which at least ``n_initial_points`` trials have reported (random draws until one has). A trial
    an early-stopping scheduler stopped at epoch 2, or one paused there, counts at epochs 1 and 2
    with its values there, never at the end as if it had finished: Ray's ``HyperOptSearch`` takes
    a stopped trial's last, low-budget value as its final result (TPE then learns to prefer fast
    starters), and counts a running trial as infinitely bad."""

    MODEL_DRAWS, DRAWS = 8, 64  # TPE's draws, then uniform ones, then one of those left is picked

    def __init__(self, *args, space_tune: dict | None = None, n_initial_points: int = 20, **kwargs):
        super().__init__(*args, n_initial_points=n_initial_points, **kwargs)
        self.n_initial = int(n_initial_points)
        self.at: dict[int, dict[int, float]] = {}  # epoch -> hyperopt tid -> loss (lower is better)
        # on a finite space (every parameter a choice; ``space_tune``: the job's Tune domains) no
        # configuration is drawn twice, as syne-tune's searchers keep an exclusion list: TPE on
        # categories soon proposes its favourite again and again (Ray's HyperOptSearch then runs
        # it again, each repeat paid for)
        self.space_tune = space_tune or {}
        self.distinct, self.seen = distinct_configurations(self.space_tune), set()

    def _observe(self, trial_id: str, result: dict | None) -> None:
        mapped = self._live_trial_mapping.get(trial_id)
        if mapped is None or not result:
            return
        v, t = result.get(self.metric), result.get("training_iteration")
        if v is None or t is None:
            return  # a report without the metric is no observation
        # a diverged value (NaN, inf) is the worst there is, as hyperopt counts a failed trial
        v = float(v)
        self.at.setdefault(int(t), {})[mapped[0]] = self.metric_op * v if np.isfinite(v) else np.inf

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        super().on_trial_result(trial_id, result)
        self._observe(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._observe(trial_id, result)  # Tune gives a stopping result here, not to on_trial_result
        super().on_trial_complete(trial_id, None, error)  # never filed as a finished loss

    def budget(self) -> int | None:
        """The epoch the model is fit at (None: too few observations anywhere yet)."""
        return max((e for e, obs in self.at.items() if len(obs) >= self.n_initial), default=None)

    def suggest(self, trial_id: str) -> dict | None:
        if self._points_to_evaluate > 0:  # Ray's path for the job's first points (by index)
            config = super().suggest(trial_id)
            _flat_labels(self._live_trial_mapping[trial_id][1])
            self.seen.add(config_key(config[NS]))
            return config
        if self.distinct and len(self.seen) >= self.distinct:
            return Searcher.FINISHED
        for attempt in range(self.DRAWS):
            config, doc = self._draw(trial_id, self.algo if attempt < self.MODEL_DRAWS else hyperopt.rand.suggest)
            key = config_key(config[NS])
            if not self.distinct or key not in self.seen:
                self.seen.add(key)
                own = self._hpopt_trials
                own.insert_trial_docs([doc])
                own.refresh()
                return config
            del self._live_trial_mapping[trial_id]
        # a nearly exhausted space: one of the configurations left, picked here, outside hyperopt
        # (its results then reach no model: the search is at its end anyway)
        flat = unseen_configuration(self.space_tune, self.seen, np.random.default_rng(self.rstate.randint(2**31 - 1)))
        if flat is None:
            return Searcher.FINISHED
        self.seen.add(config_key(flat))
        log.info("%d draws gave only configurations already run: %s is one of those left", self.DRAWS, flat)
        return {NS: flat}

    def _draw(self, trial_id: str, algo) -> tuple[dict, dict]:
        """One draw of ``algo`` (TPE, or hyperopt's uniform one), fit on the observations at
        ``budget()``: Ray's own suggest runs on a ``Trials`` of them, and the new draw's document
        is returned for the searcher's own ``Trials``."""
        own, fit = self._hpopt_trials, Trials()
        fit._ids = set(own._ids)  # the draw's id is new to the searcher's own Trials too
        obs = self.at.get(self.budget(), {})
        for doc in own._dynamic_trials:
            if doc["tid"] in obs:
                d = copy.deepcopy(doc)
                d["state"], d["result"] = JOB_STATE_DONE, {"loss": obs[doc["tid"]], "status": "ok"}
                fit._dynamic_trials.append(d)
        fit.refresh()
        self._hpopt_trials, model = fit, self.algo
        self.algo = algo
        try:
            config = super().suggest(trial_id)
        finally:
            self._hpopt_trials, self.algo = own, model
        own._ids |= fit._ids
        tid = self._live_trial_mapping[trial_id][0]
        return config, next(d for d in fit._dynamic_trials if d["tid"] == tid)


def _flat_labels(doc: dict) -> None:
    """Files a first point's hyperopt document under the labels TPE's draws use, in place.

    hyperopt's ``generate_trials_to_calculate`` (Ray's path for ``points_to_evaluate``) keys a
    point by its top-level key, ``{"train_loop_config": [{"lr": ..., "h": 1}]}``, while the space's
    labels are flat, ``train_loop_config/lr``: TPE fit on such a document (the baseline once it has
    reported) looks up ``train_loop_config/lr`` and fails with a KeyError. Choices are already
    indices there (Ray's ``_convert_categories_to_indices``), as TPE stores them."""
    from ray.tune.utils import flatten_dict

    misc, tid = doc["misc"], doc["tid"]
    flat = flatten_dict({k: v[0] for k, v in misc["vals"].items() if v}, delimiter="/")
    misc["vals"] = {k: [v] for k, v in flat.items()}
    misc["idxs"] = {k: [tid] for k in flat}
