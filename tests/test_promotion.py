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

import pytest

from analysis.load import load_experiment
from tests.factories import history_of, tiny_job
from tune_jobs.runner import run_tune
from tune_jobs.spec import load_job

GOOD, BAD, WORSE = 3.0e-3, 1.0e-6, 2.0e-6
# per-epoch values of a resumed run and a straight one on the same node: the same computation, so
# equal but for the order of float sums between processes (none seen here; this is the bound)
REL = 1e-5


def _by_lr(exp_dir) -> dict[float, list[dict]]:
    return {rows[0]["config"]["train_loop_config"]["lr"]: rows for rows in history_of(exp_dir).values()}


@pytest.mark.timeout(600)
def test_a_paused_trial_resumes_from_its_rung_checkpoint_as_if_it_had_run_straight_through(
        corpus, cache_dir, tmp_path, ray_start_2_cpus):
    job = tiny_job(tmp_path, corpus, cache_dir, "promotion", f"""\
        search_space: {{lr: {{grid: [3.0e-3, 1.0e-6, 2.0e-6]}}}}
        searcher: {{name: grid}}
        scheduler: {{name: promotion, grace_period: 1, reduction_factor: 2, agreement: -1}}
        max_concurrent: 1
        """, epochs=3, dropout=0.1)
    results, exp_dir, _ = run_tune(load_job(job), cache_dir=str(cache_dir), progress=False)
    assert not [r.error for r in results if r.error]
    runs = _by_lr(exp_dir)
    assert sorted(runs) == [BAD, WORSE, GOOD], runs.keys()
    good, bad, worse = runs[GOOD], runs[BAD], runs[WORSE]
    # no epoch run twice, none skipped; each resumption names the checkpoint it came from
    assert [r["epoch"] for r in good] == [1, 2, 3]
    assert [r["training_iteration"] for r in good] == [1, 2, 3]
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
    # the third configuration waited while the first could be promoted: it started after epoch 2
    assert worse[0]["timestamp"] - worse[0]["time_this_iter_s"] > good[1]["timestamp"] - 1.0, spans
    trials, _ = load_experiment(exp_dir)
    status = dict(zip(trials["config/lr"], trials.status))
    assert status == {GOOD: "finished", BAD: "early-stopped", WORSE: "early-stopped"}, \
        trials[["trial_id", "status", "epochs_run"]]

    straight = tiny_job(tmp_path, corpus, cache_dir, "straight", f"""\
        search_space: {{lr: {{grid: [3.0e-3]}}}}
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

    from analysis.replay import Curves, replay

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


def test_a_rung_cuts_only_once_its_ranking_is_shown_to_predict_the_final_one():
    """Six hand-made curves, 4 epochs, rungs at 1 and 2, one slot, the grid in order. Epoch 1
    ranks every configuration the other way round from its final value; epoch 2 ranks them as the
    end does. E, the late bloomer, is last at epoch 1 and best at the end. With the paper's rule
    (every rung judges from the start) E is never promoted past rung 1; with the agreement bar,
    A, B and C run to the end unjudged, rung 1's agreement is then -1 (it never cuts) and rung
    2's is 1 (it cuts from then on): E is found, and D and F, behind at rung 2, stop there."""
    import numpy as np

    from analysis.replay import Curves, RayPolicy, replay

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
