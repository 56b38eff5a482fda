"""Promotion ASHA on a real Ray: a trial paused at a rung resumes from its checkpoint, exactly.

The grid is ordered so that the decisions are known in advance (one slot, grace 1, eta 2, 3
epochs, every rung judging from the start: ``agreement: -1``): the well-set rate reaches rung 1
alone and pauses (a rung of one promotes nobody); a rate 3,000 times too small reaches it second,
behind it, and pauses; the first is now promotable, so no new configuration starts: it resumes
at epoch 2 and pauses alone at rung 2; only then does the third (1,500 times too small) start,
and it pauses behind the first at rung 1; every configuration has started, so the first is
promoted and finishes; the other two, never in the top half of rung 1, are stopped there. The promoted trial's per-epoch values must equal those of the same configuration run
straight through (a FIFO search of it alone, on the same cluster).
"""
from __future__ import annotations

import math
import os
import signal

import pytest

from analysis.load import load_experiment
from tests.factories import history_of, speechtune, tiny_job, wait_while_running
from tune_jobs.runner import run_tune
from tune_jobs.spec import load_job

GOOD, BAD, WORSE = 3.0e-3, 1.0e-6, 2.0e-6
# per-epoch values of a resumed run and a straight one on the same node: the same computation, so
# equal but for the order of float sums between processes (none seen here; this is the bound)
REL = 1e-5


def _by_lr(exp_dir) -> dict[float, list[dict]]:
    return {rows[0]["config"]["train_loop_config"]["lr"]: rows for rows in history_of(exp_dir).values()}


def _paused_with_state_saved(exp) -> bool:
    """Tune's newest state has a trial PAUSED at its rung, and the search state (which holds the
    scheduler's) has been written again since it was first seen so: Tune writes the experiment
    state first and the searcher's after it, so a kill in between would leave the older one."""
    from analysis.load import tune_last_results, tune_statuses

    statuses = tune_statuses(exp)
    paused = [d for d, s in statuses.items() if s == "PAUSED"]
    if not paused or not all(tune_last_results(exp).get(d, {}).get("checkpoint_dir_name") for d in paused):
        _paused_with_state_saved.seen = None
        return False
    import time

    searcher_states = list(exp.glob("search_gen_state-*.json"))
    seen = getattr(_paused_with_state_saved, "seen", None)
    if seen is None:
        _paused_with_state_saved.seen = time.time()
        return False
    return bool(searcher_states) and max(f.stat().st_mtime for f in searcher_states) > seen + 0.1


@pytest.mark.timeout(660)
def test_a_paused_trial_resumes_exactly_and_a_killed_driver_resumes_with_it_still_paused_and_each_trial_once(
        corpus, cache_dir, tmp_path, ray_address, ray_start_2_cpus):
    """The grid above, its driver a `speechtune tune` process, SIGKILLed while a trial waits paused
    at its rung (Tune's saved state says so). Tune keeps no scheduler state and puts an unfinished
    trial back as pending; ours travels with the searcher's (SlotLimiter), so the resumed search
    holds the paused trial paused, its rung value known, and runs the decisions the uninterrupted
    one would: the first configuration is resumed only once the next has joined it at rung 1
    (pending again, a fresh scheduler would have run it straight away), every trial runs once,
    each epoch once on its final line. The promoted trial, paused and resumed twice (once across
    the kill), has per-epoch values equal to those of the same configuration run straight through
    (a FIFO search of it alone, on the same cluster).

    (This test also holds what a test of the same grid without the kill asserted: the two ran the
    same decisions, and one search of it is enough.)"""
    job = tiny_job(tmp_path, corpus, cache_dir, "pausekill", """\
        search_space: {lr: {grid: [3.0e-3, 1.0e-6, 2.0e-6]}}
        searcher: {name: grid}
        scheduler: {name: promotion, grace_period: 1, reduction_factor: 2, agreement: -1}
        max_concurrent: 1
        """, epochs=3, dropout=0.1)
    exp = tmp_path / "exp" / "pausekill"
    env = {"TUNE_GLOBAL_CHECKPOINT_S": "1"}  # Tune saves its experiment state every second
    p = speechtune("tune", str(job), "--address", ray_address, env=env, start_new_session=True)
    _paused_with_state_saved.seen = None
    wait_while_running(p, lambda: _paused_with_state_saved(exp), 240, "a trial paused, with Tune's state saved",
                       poll=0.2)
    os.kill(p.pid, signal.SIGKILL)  # the driver only; Ray's own processes notice and go
    p.wait()
    r = speechtune("tune", "--resume", str(exp), "--address", ray_address, env=env)
    try:
        out, _ = r.communicate(timeout=300)
    finally:
        if r.poll() is None:  # past its time: the resumed driver ends here, not in another test
            r.kill()
            r.wait()
    assert r.returncode == 0, out[-3000:]
    trials, history = load_experiment(exp)
    assert len(trials) == 3, trials[["trial_id", "status"]]  # every planned trial, none twice
    status = dict(zip(trials["config/lr"], trials.status))
    assert status == {GOOD: "finished", BAD: "early-stopped", WORSE: "early-stopped"}, \
        trials[["trial_id", "status", "epochs_run"]]
    for tid, h in history.groupby("trial_id"):  # one report per epoch on each trial's final line
        assert sorted(h.epoch) == list(range(1, len(h) + 1)), (tid, list(h.epoch))
    line = {lr: h.sort_values("epoch") for lr, h in history.merge(trials[["trial_id", "config/lr"]]).groupby("config/lr")}
    assert line[GOOD].epoch.tolist() == [1, 2, 3] and line[GOOD].restored_from_epoch.tolist()[1:] == [1, 2]
    # it waited paused at rung 1 until the second configuration had reached that rung
    rows = _by_lr(exp)
    bad_end = max(r["timestamp"] for r in rows[BAD] if r["epoch"] == 1)
    good_2 = next(r for r in reversed(rows[GOOD]) if r["epoch"] == 2)
    assert good_2["timestamp"] - good_2["time_this_iter_s"] > bad_end - 1.0, (bad_end, good_2)
    # the resumed driver's scheduler knew the whole of rung 1, the killed driver's part too
    from ray.tune.utils.util import _load_newest_checkpoint

    state = _load_newest_checkpoint(str(exp), "search_gen_state-*.json")["name:SlotLimiter"]["scheduler_state"]
    assert len(state["rungs"][0]) == 3 and list(state["rungs"][1]) == [line[GOOD].trial_id.iloc[0]], state
    assert not state["paused_at"]

    # each resumption names the checkpoint it came from; the other two ran their first epoch only,
    # behind the first, and the third waited while the first could be promoted
    good, bad, worse = rows[GOOD], rows[BAD], rows[WORSE]
    assert [r["epoch"] for r in good] == [1, 2, 3] and [r["training_iteration"] for r in good] == [1, 2, 3]
    assert [r.get("restored_from_epoch") for r in good] == [None, 1, 2], [
        (r["epoch"], r.get("restored_from_trial"), r.get("restored_from_epoch")) for r in good]
    assert {r.get("restored_from_trial") for r in good[1:]} == {good[0]["trial_id"]}
    assert [r["epoch"] for r in bad] == [1] and bad[0]["val_loss"] > good[0]["val_loss"]
    assert [r["epoch"] for r in worse] == [1] and worse[0]["val_loss"] > good[0]["val_loss"]
    # one slot: no two epochs of different trials overlap (Tune's timestamps are whole seconds:
    # 1 s of slack; an epoch here, with its trial's start, takes several)
    spans = sorted((r["timestamp"] - r["time_this_iter_s"], r["timestamp"], r["trial_id"]) for r in good + bad + worse)
    for (s0, e0, t0), (s1, e1, t1) in zip(spans, spans[1:]):
        assert s1 > e0 - 1.0 or t0 == t1, spans
    assert worse[0]["timestamp"] - worse[0]["time_this_iter_s"] > good[1]["timestamp"] - 1.0, spans

    straight = tiny_job(tmp_path, corpus, cache_dir, "straight", f"""\
        search_space: {{lr: {{grid: [{GOOD}]}}}}
        searcher: {{name: grid}}
        """, epochs=3, dropout=0.1)
    results, straight_dir, _ = run_tune(load_job(straight), cache_dir=str(cache_dir), progress=False)
    assert not [r.error for r in results if r.error]
    (ref,) = _by_lr(straight_dir).values()
    for key in ("train_loss", "val_loss", "val_cer", "lr"):
        got, want = [r[key] for r in good], [r[key] for r in ref]
        assert all(math.isclose(g, w, rel_tol=REL) for g, w in zip(got, want)), (key, got, want)


def test_the_replay_pays_a_promoted_trials_epochs_once_and_ends_the_unpromoted_at_their_rung():
    """Hand-made curves, one slot, grace 1, eta 2, 4 epochs (rungs at 1 and 2), the grid in order
    A, B, C. A pauses alone at rung 1; B arrives behind it and pauses; A is promoted and pauses
    alone at rung 2; C starts (nothing promotable), arrives behind A and pauses; with every
    configuration started, A is promoted to the end; B and C are never in the top half of rung 1
    and end there. Each epoch is paid once: A's four, B's and C's first."""
    import numpy as np

    from analysis.replay import Curves
    from tune_jobs.replay import replay

    values = np.array([[0.5, 0.4, 0.3, 0.2],    # A
                       [0.9, 0.8, 0.7, 0.6],    # B
                       [0.6, 0.5, 0.1, 0.05]])  # C: a late bloomer rung 1 cannot see
    seconds = np.array([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0], [100.0, 200.0, 300.0, 400.0]])
    curves = Curves(params=("name",), configs=(("A",), ("B",), ("C",)), values=values, seconds=seconds,
                    metric="val_cer", mode="min")
    run = replay(curves, "promotion", "grid", slots=1,
                 options={"grace_period": 1, "reduction_factor": 2, "agreement": -1})
    assert run.trials == 3
    assert run.epochs == 4 + 1 + 1
    assert run.seconds == 1 + 2 + 3 + 4 + 10 + 100
    assert run.best == 0.2


def test_the_baseline_is_resumed_to_the_end_once_every_configuration_has_started():
    """Hand-made curves, one slot, grace 1, eta 2, 4 epochs (rungs at 1 and 2), the grid in order;
    A, the first (a job's baseline), is the worst at rung 1. A pauses there, B passes it and pauses
    alone at rung 2, C pauses behind B at rung 1, D arrives and C (now in the top half) is
    promoted; it pauses behind B at rung 2, where B is now in the top half: B is promoted and runs
    to the end. Every configuration has started and nothing can be promoted: the baseline is
    resumed (before C or D) and runs to the end without pausing at rung 2. Without
    ``finish_baseline`` A ends at rung 1."""
    import numpy as np

    from analysis.replay import Curves
    from tune_jobs.replay import RayPolicy, replay

    values = np.array([[0.9, 0.8, 0.7, 0.6],   # A: the baseline
                       [0.5, 0.4, 0.3, 0.2],   # B
                       [0.6, 0.5, 0.4, 0.3],   # C
                       [0.7, 0.6, 0.5, 0.4]])  # D
    seconds = np.array([[1.0] * 4, [10.0] * 4, [100.0] * 4, [1000.0] * 4])
    curves = Curves(params=("name",), configs=tuple((c,) for c in "ABCD"), values=values, seconds=seconds,
                    metric="val_cer", mode="min")
    opts = {"grace_period": 1, "reduction_factor": 2, "agreement": -1}
    plain = replay(curves, "promotion", "grid", slots=1, options=opts)
    assert plain.seconds == 1 + 40 + 200 + 1000
    pol = RayPolicy(curves, "promotion", "grid", 0, 1, {**opts, "finish_baseline": True})
    run = replay(curves, "promotion", "grid", slots=1, policy=pol)
    assert pol.scheduler.baseline == "replay_00000"
    assert run.epochs == 4 + 4 + 2 + 1 and run.seconds == 4 + 40 + 200 + 1000
    # the epochs in the order paid (their seconds name their configuration)
    paid = [int(round(b - a)) for (a, _, _), (b, _, _) in zip([(0, 0, 0)] + run.trace, run.trace)]
    assert paid == [1, 10, 10, 100, 1000, 100, 10, 10, 1, 1, 1], paid


def test_promotion_options_are_its_own_and_those_the_job_sets_are_refused(corpus, cache_dir, tmp_path):
    from asr_core.errors import InputError

    for key in ("brackets", "max_concurrent"):
        job = tiny_job(tmp_path, corpus, cache_dir, f"bad_{key}", f"""\
            search_space: {{lr: {{grid: [3.0e-3, 1.0e-6]}}}}
            searcher: {{name: grid}}
            scheduler: {{name: promotion, {key}: 3}}
            """)
        with pytest.raises(InputError, match=f"scheduler.{key}.*unknown option '{key}' for scheduler promotion"):
            load_job(job)
    ok = load_job(tiny_job(tmp_path, corpus, cache_dir, "ok", """\
        search_space: {lr: {grid: [3.0e-3, 1.0e-6]}}
        searcher: {name: grid}
        scheduler: {name: promotion, grace_period: 2, reduction_factor: 3, max_t: 3}
        """))
    sched = ok.scheduler.make(ok.metric, ok.mode, epochs=3, max_concurrent=2)
    assert sched.milestones == [2]


def test_a_job_that_names_no_method_runs_the_benchmarks_for_asr_and_tunes_defaults_otherwise(
        corpus, cache_dir, tmp_path):
    from tune_jobs.registry import DEFAULT_METHOD

    asr = load_job(tiny_job(tmp_path, corpus, cache_dir, "asr", "search_space: {lr: {loguniform: [1.0e-4, 1.0e-2]}}\n"))
    assert (asr.scheduler.name, asr.searcher.name) == DEFAULT_METHOD["asr"] == ("promotion", "random")
    # the baseline (the job's own lr) is the first trial: the scheduler resumes it to the end
    assert asr.first_points() == [{"lr": 3.0e-3}]
    tts = load_job(tiny_job(tmp_path, corpus, cache_dir, "tts", "search_space: {lr: {loguniform: [1.0e-4, 1.0e-2]}}\n",
                            edit={"family": "tts_acoustic", "metric": "val_mel_loss"}))
    assert (tts.scheduler.name, tts.searcher.name) == DEFAULT_METHOD["other"] == ("fifo", "hyperopt")
    named = load_job(tiny_job(tmp_path, corpus, cache_dir, "named", "scheduler: {name: asha}\n"
                              "searcher: {name: random}\nsearch_space: {lr: {choice: [1.0e-3, 3.0e-3]}}\n"))
    assert (named.scheduler.name, named.searcher.name) == ("asha", "random")
    # naming the searcher (or a grid, or nothing to search) keeps Tune's default scheduler: fifo
    for body in ("searcher: {name: hyperopt}\nsearch_space: {lr: {loguniform: [1.0e-4, 1.0e-2]}}\n",
                 "searcher: {name: grid}\nsearch_space: {lr: {grid: [1.0e-3, 3.0e-3]}}\n", ""):
        assert load_job(tiny_job(tmp_path, corpus, cache_dir, "fifo", body)).scheduler.name == "fifo", body
    no_sched = load_job(tiny_job(tmp_path, corpus, cache_dir, "s", "scheduler: {name: asha}\n"
                                 "search_space: {lr: {loguniform: [1.0e-4, 1.0e-2]}}\n"))
    assert no_sched.searcher.name == "random"  # a scheduler named alone gets the default searcher


def test_a_rung_cuts_only_once_its_ranking_is_shown_to_predict_the_final_one():
    """Six hand-made curves, 4 epochs, rungs at 1 and 2, one slot, the grid in order. Epoch 1
    ranks every configuration the other way round from its final value; epoch 2 ranks them as the
    end does. E, the late bloomer, is last at epoch 1 and best at the end. With the paper's rule
    (every rung judges from the start) E is never promoted past rung 1; with the agreement bar,
    A, B and C run to the end unjudged, rung 1's agreement is then -1 (it never cuts) and rung
    2's is 1 (it cuts from then on): E is found, and D and F, behind at rung 2, stop there."""
    import numpy as np

    from analysis.replay import Curves
    from tune_jobs.replay import RayPolicy, replay

    values = np.array([[0.70, 0.50, 0.45, 0.40],   # A
                       [0.75, 0.45, 0.40, 0.35],   # B
                       [0.80, 0.40, 0.35, 0.30],   # C
                       [0.72, 0.60, 0.55, 0.50],   # D: a fast starter
                       [0.95, 0.20, 0.15, 0.10],   # E: the late bloomer
                       [0.78, 0.70, 0.65, 0.60]])  # F
    curves = Curves(params=("name",), configs=tuple((c,) for c in "ABCDEF"), values=values,
                    seconds=np.ones_like(values), metric="val_cer", mode="min")
    opts = {"grace_period": 1, "reduction_factor": 2}
    classic = replay(curves, "promotion", "grid", slots=1, options={**opts, "agreement": -1})
    assert classic.best == 0.35  # B: E was cut at epoch 1
    pol = RayPolicy(curves, "promotion", "grid", 0, 1, {**opts, "agreement": 0.8, "min_pairs": 3})
    run = replay(curves, "promotion", "grid", slots=1, policy=pol)
    assert run.best == 0.10 and run.epochs == 4 + 4 + 4 + 2 + 4 + 2
    sched = pol.scheduler
    assert sched.rank_agreement(0) == (-1.0, 4) and not sched.judges(0)
    assert sched.rank_agreement(1) == (1.0, 4) and sched.judges(1)
    assert "rung 2: 6 reached" in sched.debug_string() and "does not cut yet" in sched.debug_string()


def _searcher(name: str, space: dict, points: list[dict] | None = None, **kw):
    from tune_jobs.registry import make_searcher

    return make_searcher(name, metric="val_cer", mode="min", seed=3, space=space, grid={}, trials={},
                         points=points or [], constraints=[], fixed={}, max_concurrent=100, **kw)


def test_rung_tpe_fits_at_the_highest_epoch_with_enough_results_and_never_files_a_stopped_trials_value():
    """Six trials report epoch 1; four go on to epoch 2; the other two are stopped there (their
    epoch-1 value comes with the stop, as Tune's on_trial_complete gives it). Ray's HyperOptSearch
    files those two epoch-1 values as finished losses beside the others' epoch-2 ones; rung_tpe
    (3 observations needed) fits at epoch 2, on the four that reached it, and files no loss."""
    from hyperopt import rand
    from ray import tune

    from tune_jobs.searchers import NS

    space = {"a": tune.choice(list(range(40)))}
    searchers = {n: _searcher(n, space, n_initial_points=3) for n in ("hyperopt", "rung_tpe")}
    for name, s in searchers.items():
        inner = s.searcher.searcher  # SlotLimiter > JobSearcher > the searcher
        fitted = []

        def spy(new_ids, domain, trials, seed, _fitted=fitted):
            _fitted.append(sorted((d["tid"], d["result"].get("loss")) for d in trials.trials
                                  if d["result"].get("status") == "ok"))
            return rand.suggest(new_ids, domain, trials, seed)

        inner.algo = spy  # hyperopt's own uniform draw, told what it was fit on
        ids = [f"t{i}" for i in range(6)]
        a = {t: s.suggest(t)[NS]["a"] for t in ids}
        for t in ids:
            s.on_trial_result(t, {"training_iteration": 1, "val_cer": 0.5 + a[t] / 100})
        for t in ids[:4]:
            s.on_trial_result(t, {"training_iteration": 2, "val_cer": 0.4 - a[t] / 1000})
        for t in ids[4:]:  # stopped at their rung: the stopping result comes with the stop
            s.on_trial_complete(t, {"training_iteration": 1, "val_cer": 0.5 + a[t] / 100})
        s.suggest("t6")
        searchers[name] = (inner, fitted[-1], a)
    ray_inner, ray_fit, a = searchers["hyperopt"]
    assert [round(loss, 6) for _, loss in ray_fit] == [round(0.5 + a[t] / 100, 6) for t in ("t4", "t5")]
    ours, fit, a = searchers["rung_tpe"]
    assert ours.budget() == 2 and len(fit) == 4
    assert sorted(round(loss, 6) for _, loss in fit) == sorted(round(0.4 - a[t] / 1000, 6) for t in ("t0", "t1", "t2", "t3"))
    assert not [d for d in ours._hpopt_trials.trials if d["result"].get("status") == "ok"]


def test_rung_tpe_fits_on_the_baselines_result_under_the_labels_of_its_own_draws():
    """The job's baseline enters hyperopt through Ray's points_to_evaluate path, which files it
    under ``train_loop_config`` rather than the space's flat labels (``train_loop_config/lr``);
    TPE fit on it raised KeyError once the baseline had reported (the demo crashed there). The
    fit now holds the baseline with its own values, beside the draws."""
    from hyperopt import rand
    from ray import tune

    from tune_jobs.searchers import NS

    space = {"lr": tune.loguniform(1e-3, 1e-2), "h": tune.choice([96, 160, 224])}
    s = _searcher("rung_tpe", space, points=[{"lr": 4e-3, "h": 160}], n_initial_points=3)
    inner, fitted = s.searcher.searcher, []

    def spy(new_ids, domain, trials, seed):
        fitted.append({d["tid"]: (d["misc"]["vals"], d["result"]["loss"]) for d in trials.trials})
        return rand.suggest(new_ids, domain, trials, seed)

    ids = [f"t{i}" for i in range(4)]
    cfgs = {t: s.suggest(t)[NS] for t in ids}
    assert cfgs["t0"] == {"lr": 4e-3, "h": 160}
    for k, t in enumerate(ids):
        s.on_trial_complete(t, {"training_iteration": 1, "val_cer": 0.5 - 0.01 * k})
    inner.algo = spy
    assert set(s.suggest("t4")[NS]) == {"lr", "h"}
    fit = list(fitted[-1].values())
    assert len(fit) == 4 and all(set(v) == {f"{NS}/lr", f"{NS}/h"} for v, _ in fit)
    assert ({f"{NS}/lr": [4e-3], f"{NS}/h": [1]}, 0.5) in fit  # the baseline (h 160: choice index 1)


@pytest.mark.parametrize("name", ["random", "rung_tpe"])
def test_our_searchers_draw_no_configuration_twice_on_a_finite_space(name):
    from ray import tune
    from ray.tune.search import Searcher

    from tune_jobs.searchers import NS

    space = {"a": tune.choice([1, 2, 3, 4]), "b": tune.choice(["x", "y"])}
    s = _searcher(name, space, **({"n_initial_points": 2} if name == "rung_tpe" else {}))
    got = []
    for i in range(8):
        cfg = s.suggest(f"t{i}")[NS]
        got.append((cfg["a"], cfg["b"]))
        s.on_trial_result(f"t{i}", {"training_iteration": 1, "val_cer": 0.1 * cfg["a"]})
        s.on_trial_complete(f"t{i}", {"training_iteration": 1, "val_cer": 0.1 * cfg["a"]})
    assert sorted(got) == [(a, b) for a in (1, 2, 3, 4) for b in ("x", "y")]
    assert s.suggest("t8") == Searcher.FINISHED


def test_normalized_regret_scores_the_incumbent_by_its_full_runs_result():
    """Hand-made: A leads after one epoch, B ends best. A search that has seen only A's first
    epoch returns A, whose full run gives 0.25 (its best epoch, as a finished trial reports):
    regret (0.25 - 0.1) / (median 0.25 - 0.1) = 1, though 0.3 was all it had seen. Once B's last
    epoch is in, regret 0."""
    import numpy as np

    from analysis.replay import Curves, compute_to_reach, iqm_interval, normalized_regret
    from tune_jobs.replay import replay

    values = np.array([[0.3, 0.25], [0.8, 0.1], [0.6, 0.5]])
    curves = Curves(params=("name",), configs=(("A",), ("B",), ("C",)), values=values,
                    seconds=np.ones_like(values), metric="val_cer", mode="min")
    run = replay(curves, "fifo", "grid", slots=1)  # A, B, C in order, 1 s an epoch: 6 s in all
    assert normalized_regret(run, curves, 0.1) == pytest.approx(0.4 / 0.15)  # nothing reported yet: the worst's
    assert normalized_regret(run, curves, 1 / 6) == pytest.approx(1.0)
    assert normalized_regret(run, curves, 4 / 6) == pytest.approx(0.0)
    assert compute_to_reach(run, curves) == pytest.approx(4 / 6)
    assert iqm_interval([0.0, 1.0, 1.0, 1.0, 1.0, 9.0])[0] == pytest.approx(1.0)
    assert iqm_interval([0.5] * 5) == (0.5, 0.5, 0.5)


def test_at_the_end_a_slot_that_would_idle_runs_a_paused_trial_that_ends_before_the_longest_run():
    """Hand-made curves, two slots, grace 1, eta 3, 9 epochs (rungs at 1 and 3), the grid in order
    A, B, C, D; A, the baseline, takes 2 s an epoch, the others 1 s. A is the best at rung 1: once
    every configuration has started it is resumed there (t = 2 s) and runs to the end (t = 18 s).
    D pauses at rung 1 behind it (t = 3 s) and nothing is promotable: the other slot would idle for
    15 s. It runs D to rung 3 (2 s, A has 14 s left after its epoch under way), D to the end from
    there (6 s of 12), then B and C to rung 3 (2 s of 6, 2 s of 4); B and C at rung 3 would need 6
    s of the 2 left: the slot idles the last 3 s. The search still ends when A does, at 18 s, and
    D, a late bloomer rung 1 cannot see, runs to the end and is the best found; without the
    backfill B, C and D ended at rung 1 (12 epochs in all)."""
    import numpy as np

    from analysis.replay import Curves
    from tune_jobs.replay import RayPolicy, replay

    values = np.array([[0.50, 0.48, 0.46, 0.44, 0.42, 0.40, 0.38, 0.36, 0.34],   # A: the baseline
                       [0.70, 0.68, 0.66, 0.64, 0.62, 0.60, 0.58, 0.56, 0.54],   # B
                       [0.80, 0.78, 0.76, 0.74, 0.72, 0.70, 0.68, 0.66, 0.64],   # C
                       [0.60, 0.45, 0.30, 0.25, 0.20, 0.15, 0.12, 0.10, 0.08]])  # D
    seconds = np.array([[2.0] * 9, [1.0] * 9, [1.0] * 9, [1.0] * 9])
    curves = Curves(params=("name",), configs=tuple((c,) for c in "ABCD"), values=values, seconds=seconds,
                    metric="val_cer", mode="min")
    pol = RayPolicy(curves, "promotion", "grid", 0, 2,
                    {"grace_period": 1, "reduction_factor": 3, "agreement": -1, "finish_baseline": True})
    run = replay(curves, "promotion", "grid", slots=2, policy=pol)
    ids = {c: f"replay_{i:05d}" for i, c in enumerate("ABCD")}
    sched = pol.scheduler
    assert run.wall == 18.0  # A's own nine epochs: the end is not moved
    assert sched.backfilled == {ids["D"], ids["B"], ids["C"]}
    assert sched.final == {ids["A"]: 0.34, ids["D"]: 0.08}
    assert set(sched.rungs[1]) == {ids[c] for c in "ABCD"}  # B and C reached rung 3 too
    assert run.epochs == 9 + 9 + 3 + 3 and run.seconds == 18 + 9 + 3 + 3
    assert run.best == 0.08 and run.incumbent == 3
