"""Tuning jobs: every shipped job loads, constraints, PBT exploits, staged studies, resume after a
killed driver, retry after a killed worker, all on a real local Ray (S3 storage: tests/test_no_shared_fs.py)."""
from __future__ import annotations

import glob
import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from analysis.load import load_experiment, tune_last_results
from analysis.raycheck import compare_with_ray
from tests.factories import (TRAIN_WORKER, edited_job, freeze_ray_workers, history_of, speechtune, tiny_job,
                             wait_for, wait_while_running)
from tune_jobs.spec import load_job

JOBS = sorted(glob.glob(str(Path(__file__).parents[1] / "tune_jobs" / "jobs" / "*.yaml")))


@pytest.mark.parametrize("path", JOBS, ids=[Path(p).stem for p in JOBS])
def test_every_shipped_job_and_profile_loads_with_every_phase(path):
    from tune_jobs.study import phase_job

    raw = __import__("yaml").safe_load(Path(path).read_text())
    for profile in [None, *(raw.get("profiles") or {})]:
        job = load_job(path, profile)
        assert job.num_trials >= 1
        carried: dict = {}
        for i in range(len(job.phases)):  # each phase resolves with made-up winners of the ones before
            pj = phase_job(job, i, carried)
            assert pj.num_trials >= 1
            for k in pj.tuned_keys():
                v = next(iter(pj.trials.values()))[k] if pj.trials else None
                if v is None:
                    spec = pj.search_space[k]
                    v = list(spec.values())[0][0]
                carried[k] = {"value": v}


def test_seed_jobs_cover_every_seed_and_the_issue_names():
    names = {Path(p).stem for p in JOBS}
    assert {"seed000_mono", "seed000_bilingual", "seed001_presets", "seed002_staged", "seed003_convergence",
            "seed004_crnn"} <= names
    seed001 = load_job(Path(JOBS[0]).parent / "seed001_presets.yaml")
    assert list(seed001.trials) == ["conservative_small", "baseline_optimized", "focal_loss_experiment",
                                    "aggressive_learning", "fast_convergence", "large_model_regularized",
                                    "ctc_alignment_free"]
    seed002 = load_job(Path(JOBS[0]).parent / "seed002_staged.yaml")
    assert [p["name"] for p in seed002.phases] == ["padding", "batchnorm", "optimizer_lr", "batch_size",
                                                    "max_dil", "num_stacks"]
    assert load_job(Path(JOBS[0]).parent / "seed003_convergence.yaml").scheduler.name == "pbt"


def test_constraint_rejects_configs_before_any_trial(tmp_path):
    """JobSearcher asks again instead of starting a trial that breaks a constraint."""
    from ray import tune

    from tune_jobs.registry import make_searcher

    space = {"hidden_dim": tune.choice([96, 100, 144]), "attention_heads": tune.choice([4, 6])}
    s = make_searcher("random", metric="val_wer", mode="min", seed=1, space=space, grid={}, trials={},
                      points=[{"hidden_dim": 100, "attention_heads": 6}],  # breaks it: rejected too
                      constraints=["hidden_dim % attention_heads == 0"], fixed={}, max_concurrent=100)
    from ray.tune.search import Searcher

    got = []
    while (cfg := s.suggest(f"t{len(got)}")) != Searcher.FINISHED:
        got.append(cfg["train_loop_config"])
    assert all(c["hidden_dim"] % c["attention_heads"] == 0 for c in got)
    # a finite space: each of the 5 configurations that keep the constraint once, then the end
    assert sorted((c["hidden_dim"], c["attention_heads"]) for c in got) == [(96, 4), (96, 6), (100, 4), (144, 4),
                                                                            (144, 6)]
    inner = s.searcher
    assert inner.rejected and all(r["config"]["hidden_dim"] % r["config"]["attention_heads"] for r in inner.rejected)
    assert inner.rejected[0]["config"] == {"hidden_dim": 100, "attention_heads": 6}
    # a constraint naming an unknown parameter fails at load time, with its line
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: conformer_aed\npreset: tiny\ndata: {corpus: demo-mono}\n"
                   "search_space: {hidden_dim: {choice: [96, 144]}}\nconstraints: ['hidden_dim % heads == 0']\n")
    from asr_core.errors import InputError

    with pytest.raises(InputError, match=r"bad.yaml:5 .*heads"):
        load_job(bad)


def test_pbt_exploit_continues_from_the_donors_checkpoint(corpus, cache_dir, tmp_path, ray_start_2_cpus):
    from tune_jobs.runner import run_tune

    job = tiny_job(tmp_path, corpus, cache_dir, "pbt", """\
        search_space: {lr: {loguniform: [1.0e-5, 1.0e-2]}}
        searcher: {name: random, seed: 0, points_to_evaluate: [{lr: 1.0e-5}, {lr: 3.0e-3}]}
        scheduler:
          name: pbt
          perturbation_interval: 1
          quantile_fraction: 0.5
          synch: true
          hyperparam_mutations: {lr: {loguniform: [1.0e-4, 1.0e-2]}, weight_decay: {uniform: [0.2, 0.5]}}
        num_trials: 2
        max_concurrent: 2
        """, epochs=2, weight_decay=0.1)
    results, exp_dir, _ = run_tune(load_job(job), cache_dir=str(cache_dir), progress=False)
    assert not [r.error for r in results if r.error]
    hist = history_of(exp_dir)
    assert len(hist) == 2
    exploits = [(tid, r) for tid, rows in hist.items() for r in rows
                if r.get("restored_from_trial") and r["restored_from_trial"] != tid]
    assert exploits, {t: [(r["epoch"], r.get("restored_from_trial")) for r in rows] for t, rows in hist.items()}
    for tid, r in exploits:
        donor = r["restored_from_trial"]
        assert donor in hist
        # the recipient's first epoch after the exploit is the one after the donor's checkpoint
        assert r["epoch"] == r["restored_from_epoch"] + 1
        assert max(d["epoch"] for d in hist[donor]) >= r["restored_from_epoch"]
        # the mutated weight decay is the one the recipient's optimizer used (not the donor's 0.1)
        mutated = r["config"]["train_loop_config"]["weight_decay"]
        assert mutated != 0.1
        metas = {c: json.loads((c / "meta.json").read_text()) for c in Path(exp_dir).glob("*/checkpoint_*")}
        saved = [c for c, m in metas.items() if m["trial_id"] == tid and m["epoch"] == r["epoch"]]
        assert saved, tid
        groups = torch.load(saved[0] / "state.pt", weights_only=False)["optimizer"]["param_groups"]
        # (biases and norm gains take none: their group stays at 0 whatever PBT sets)
        assert [g["weight_decay"] for g in groups] == [mutated, 0.0] and groups[1]["no_decay"]
    trials, _ = load_experiment(exp_dir)
    assert trials.exploits.sum() == len(exploits)
    assert (trials.cost_cpu_s > 0).all() and (trials.cost_wall_s > 0).all()
    check = compare_with_ray(exp_dir)
    assert check.ok and check.trials_ray == 2, check.summary()
    from analysis.report import write_report

    text = write_report(exp_dir, tmp_path / "rep").read_text()
    assert "PBT schedules" in text and (tmp_path / "rep" / "plots" / "pbt.png").is_file()


def test_staged_study_carries_the_winner_and_a_rerun_runs_nothing(corpus, cache_dir, tmp_path, ray_start_2_cpus):
    from tune_jobs.spec import load_job as lj
    from tune_jobs.study import read_state, run_study

    job = tiny_job(tmp_path, corpus, cache_dir, "staged", """\
        searcher: {name: grid}
        max_concurrent: 2
        phases:
          - name: rate
            search_space: {lr: {grid: [1.0e-6, 3.0e-3]}}
          - name: width
            params: {lr: <OPT>}
            search_space: {lstm_hidden: {grid: [32, 64]}}
        """, epochs=2)
    study = lj(job)
    first = run_study(study, cache_dir=str(cache_dir), progress=False)
    assert [s["ran"] for s in first] == [True, True]
    state = read_state(study)
    p1, _ = load_experiment(state["phases"]["rate"]["exp"])
    best_lr = float(p1.iloc[0]["config/lr"])  # ranked by val_loss
    assert best_lr == 3.0e-3 and p1.iloc[0].best_val_loss < p1.iloc[1].best_val_loss
    carried = state["phases"]["rate"]["winners"]["lr"]
    assert carried["value"] == best_lr and carried["phase"] == "rate" and carried["trial"] == p1.iloc[0].trial_id
    p2, _ = load_experiment(state["phases"]["width"]["exp"])
    assert len(p2) == 2 and set(p2["config/lr"]) == {best_lr}
    assert sorted(p2["config/lstm_hidden"]) == [32, 64]
    rec = json.loads((Path(state["phases"]["width"]["exp"]) / "speechtune_job.json").read_text())
    assert rec["phase"]["carried"]["lr"]["trial"] == carried["trial"]
    for ph in state["phases"].values():
        assert compare_with_ray(ph["exp"]).ok
    from analysis.report import write_study_report

    md = write_study_report(state["phases"]["rate"]["exp"].rsplit("/", 1)[0], tmp_path / "rep").read_text()
    rate, width = md.split("### Phase 1: rate")[1].split("### Phase 2: width")
    assert rate.count("- [X] `lr=") == 2 and "_Conclusion: `lr` = 0.003 is best: val_loss" in rate
    assert f"`lr=0.003` (<OPT> from `rate`)" in width and "`lstm_hidden`" in width.split("## Study summary")[0]
    assert "Final configuration" in md and (tmp_path / "rep" / "index.html").is_file()
    assert (tmp_path / "rep" / "width" / "report.html").is_file()
    dirs = sorted(str(p) for p in (tmp_path / "exp").rglob("params.json"))
    again = run_study(lj(job), cache_dir=str(cache_dir), progress=False)
    assert [s["ran"] for s in again] == [False, False]
    assert sorted(str(p) for p in (tmp_path / "exp").rglob("params.json")) == dirs


def test_the_closing_table_reads_every_figure_from_the_experiment(corpus, cache_dir, tmp_path, ray_address):
    """`speechtune bars` (make demo-seeds' closing table) after a real `speechtune tune` of a study
    whose second phase fine-tunes the first's best checkpoint (seed 004's shape): each figure in
    the row is the one the experiment holds (Tune's results, study.json, the command's wall time),
    the fine-tune's gain is measured from the checkpoint it started at, and a bar the run cannot
    meet reads `not met` and exits 1; a job with no bars is refused."""
    body = """\
        max_concurrent: 2
        phases:
          - name: search
            search_space: {lr: {grid: [1.0e-6, 3.0e-3]}}
          - name: finetune
            init_from: best
            params: {lr: <OPT>}
            num_trials: 1
        """
    met = "bars: {finetune.gain: '> -1000', search.trials: '>= 2', failed: '<= 0', val_loss: '< 1000', " \
          "test_cer: '<= 1.5', wall_s: '< 100000'}\n"
    job = tiny_job(tmp_path, corpus, cache_dir, "closing", body + met, epochs=2,
                   edit={"test_eval": True, "data.test_manifest": corpus["test"]})
    p = speechtune("tune", str(job), "--address", ray_address)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    r = speechtune("bars", str(job), "--json", str(tmp_path / "closing.json"))
    out, _ = r.communicate(timeout=120)
    assert r.returncode == 0, out
    [row] = json.loads((tmp_path / "closing.json").read_text())
    assert row["job"] == "closing" and row["met"] == "met" and "| closing |" in out and out.rstrip().endswith("| met |")
    got = {b["figure"]: b["value"] for b in row["bars"]}
    state = json.loads((tmp_path / "exp" / "closing" / "study.json").read_text())
    search, _ = load_experiment(state["phases"]["search"]["exp"])
    finetune, _ = load_experiment(state["phases"]["finetune"]["exp"])
    start = search.iloc[0].best_val_loss  # the checkpoint the fine-tune started from: the search's best
    assert start == pytest.approx(state["phases"]["search"]["best"]["value"])
    assert got["search.trials"] == 2 and got["failed"] == 0 and len(finetune) == 1
    assert got["val_loss"] == pytest.approx(finetune.iloc[0].best_val_loss)
    assert got["finetune.gain"] == pytest.approx(start - finetune.iloc[0].best_val_loss)
    assert 0 < got["wall_s"] == float(state["wall time"].split()[0])
    scores = json.loads((Path(state["phases"]["finetune"]["exp"]) / "test_scores.json").read_text())
    assert got["test_cer"] == scores["best_cer"]["rate"]
    impossible = tmp_path / "impossible" / "closing.yaml"  # the same experiment, a bar below any loss
    impossible.parent.mkdir()
    impossible.write_text(job.read_text().replace(met, "bars: {val_loss: '< 0', wall_s: '< 100000'}\n"))
    r = speechtune("bars", str(impossible))
    out, _ = r.communicate(timeout=120)
    assert r.returncode == 1 and out.rstrip().endswith("| not met |"), out
    # bars are outside the phases' fingerprints: the study with other bars runs nothing again,
    # and the wall time stays the one of the run that ran every phase
    r = speechtune("tune", str(impossible), "--address", ray_address)
    out, _ = r.communicate(timeout=300)
    assert r.returncode == 0 and "0 phase(s) run, 2 skipped" in out, out[-3000:]
    assert json.loads((tmp_path / "exp" / "closing" / "study.json").read_text())["wall time"] == state["wall time"]
    bare = tmp_path / "bare.yaml"
    bare.write_text(job.read_text().replace(met, ""))
    r = speechtune("bars", str(bare))
    out, _ = r.communicate(timeout=120)
    assert r.returncode == 2 and f"{bare}: the job declares no bars" in out, out


def test_a_trial_that_diverges_after_its_best_epoch_never_wins_anywhere(corpus, cache_dir, tmp_path, capsys,
                                                                        ray_start_2_cpus):
    """Phase one's `blowup` has the lowest val_loss of its phase after epoch 1, then diverges in
    epoch 2 (its step schedule multiplies the LR by 1e6: plain SGD at 1e4 overflows). The one
    ranking (analysis.load.rank) leaves it out: `steady` is carried into phase two, its checkpoint
    is the one scored on test, and the report, the study, `check` and `watch` all name it."""
    from analysis.report import write_report
    from analysis.watch import snapshot
    from tune_jobs.spec import load_job as lj
    from tune_jobs.study import read_state
    from tune_jobs.workflow import tune_study

    job = tiny_job(tmp_path, corpus, cache_dir, "blowup", """\
        max_concurrent: 2
        phases:
          - name: rate
            trials: {steady: {lr: 1.0e-4}, blowup: {lr: 1.0e-2, step_gamma: 1.0e6}}
          - name: width
            params: {lr: <OPT>}
            search_space: {lstm_hidden: {grid: [32]}}
            searcher: {name: grid}
        """, epochs=2, optimizer="sgd", grad_clip=0, schedule="step", step_size=1,
                   edit={"test_eval": True, "data.test_manifest": corpus["test"]})
    assert tune_study(lj(job)) == 0
    out = capsys.readouterr().out
    state = read_state(lj(job))
    rate = Path(state["phases"]["rate"]["exp"])
    p1, _ = load_experiment(rate)
    by = {r["config/experiment"]: r for _, r in p1.iterrows()}
    steady, blowup = by["steady"], by["blowup"]
    # the precondition: by value alone blowup would win (and load_experiment lists it first)
    assert blowup.status == "diverged" and steady.status == "finished"
    assert blowup.best_val_loss < steady.best_val_loss and blowup.best_val_loss_epoch == 1
    # the study carries steady's value, not blowup's
    assert state["phases"]["rate"]["winners"]["lr"]["trial"] == steady.trial_id
    assert state["phases"]["rate"]["best"]["trial"] == steady.trial_id
    p2, _ = load_experiment(state["phases"]["width"]["exp"])
    assert list(p2["config/lr"]) == [1.0e-4]
    # test evaluation scored steady's checkpoint
    outcome = json.loads((rate / "speechtune_job.json").read_text())["outcome"]
    assert f"/{steady.trial}/checkpoint_" in outcome["best checkpoint"]
    assert blowup.trial not in outcome["best checkpoint"]
    # the report, `check` (run after each phase) and `watch` name the same winner
    report = write_report(str(rate), tmp_path / "rep").read_text()
    assert "**best: `steady`**" in report and "**best: `blowup`**" not in report
    assert f"best trial: {steady.trial_id} (val_loss" in out
    assert snapshot(rate).best.name == "steady"


def _state_saved_after_checkpoints(exp: Path) -> bool:
    """Tune's newest experiment state names every trial's newest checkpoint as its last result's
    (so a driver killed now resumes each trial from its checkpoint, not from scratch). A state
    file newer than the checkpoint directories is not enough: the checkpoint is written before
    the driver takes in the result that carries it (a fresh-clone run was killed in between)."""
    saved = tune_last_results(exp)
    newest = {d.name: max(c.name for c in d.glob("checkpoint_*")) for d in {c.parent for c in exp.glob("*/checkpoint_*")}}
    return bool(newest) and all(saved.get(d, {}).get("checkpoint_dir_name") == c for d, c in newest.items())


@pytest.mark.timeout(420)
def test_killed_driver_resumes_with_every_planned_trial_done_once(corpus, cache_dir, tmp_path, ray_address):
    """The search's driver (a `speechtune tune` process on the shared cluster) is SIGKILLed; Ray
    ends what that driver owned, and `tune --resume` from another process finishes the search."""
    job = tiny_job(tmp_path, corpus, cache_dir, "killme", """\
        search_space: {lr: {loguniform: [1.0e-3, 1.0e-2]}, lstm_hidden: {choice: [32, 48, 64]}}
        searcher: {name: hyperopt, seed: 5}
        num_trials: 3
        max_concurrent: 1
        """, epochs=2)
    exp = tmp_path / "exp" / "killme"
    env = {"TUNE_GLOBAL_CHECKPOINT_S": "1"}  # Tune saves its experiment state every second
    p = speechtune("tune", str(job), "--address", ray_address, env=env, start_new_session=True)
    def one_trial_done_and_state_saved() -> bool:
        done = [rows for rows in history_of(exp).values() if rows[-1]["epoch"] == 2] if exp.is_dir() else []
        return len(done) >= 1 and len(history_of(exp)) >= 2 and _state_saved_after_checkpoints(exp)

    wait_while_running(p, one_trial_done_and_state_saved, 240, "one finished trial with Tune's state saved",
                       poll=0.5)
    os.kill(p.pid, signal.SIGKILL)  # the driver only; Ray's own processes notice and go
    p.wait()
    before = history_of(exp)
    assert len(before) < 3
    r = speechtune("tune", "--resume", str(exp), "--address", ray_address, env=env)
    out, _ = r.communicate(timeout=300)
    assert r.returncode == 0, out[-3000:]
    after = history_of(exp)
    assert len(after) == 3, out[-3000:]  # every planned trial, none twice
    for tid, rows in before.items():
        if rows[-1]["epoch"] == 2 and not after[tid][len(rows):]:
            continue  # finished before the kill and not run again
        # interrupted: continued from its last saved checkpoint, not from scratch
        back = [r for r in after[tid][len(rows):] if "restored_from_epoch" in r]
        assert back and back[0]["restored_from_trial"] == tid and back[0]["restored_from_epoch"] >= 1, after[tid]
    trials, history = load_experiment(exp)
    assert len(trials) == 3 and set(trials.status) == {"finished"}
    for tid, h in history.groupby("trial_id"):  # one report per epoch on each trial's final line
        assert sorted(h.epoch) == [1, 2], (tid, list(h.epoch))
    # the searcher continued from its saved state: it holds all 3 trials, not a fresh start
    from ray.tune.search.hyperopt import HyperOptSearch

    hs = HyperOptSearch(metric="val_loss", mode="min")
    hs.restore_from_dir(str(exp))
    assert len(hs._hpopt_trials.trials) == 3
    # each trial's own directory (a trial the killed driver had only begun to create can leave an
    # empty directory behind; the resumed search runs it in a new one)
    configs = {json.dumps(json.loads((exp / t / "params.json").read_text())["train_loop_config"], sort_keys=True)
               for t in trials.trial}
    assert len(configs) == 3
    check = compare_with_ray(exp)  # Ray keeps the re-run epochs twice; ours once (explained, not a disagreement)
    assert check.ok and check.trials_ray == 3, check.summary()


@pytest.mark.timeout(300)
def test_killed_worker_process_is_retried_from_its_checkpoint(corpus, cache_dir, tmp_path, ray_cluster,
                                                              ray_start_2_cpus):
    """The trial's training worker is frozen (SIGSTOP) as soon as its second checkpoint is on disk,
    checked to have epochs left, and killed (SIGKILL) while frozen: the kill lands mid-run however
    long an epoch takes."""
    from tune_jobs.runner import run_tune

    job = tiny_job(tmp_path, corpus, cache_dir, "worker", """\
        num_trials: 1
        max_failures: 2
        """, epochs=16)
    exp = tmp_path / "exp" / "worker"
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(
        out=run_tune(load_job(job), cache_dir=str(cache_dir), progress=False)))
    t.start()

    def second_checkpoint() -> bool:  # the worker writes its checkpoints itself (result.json: the driver)
        assert t.is_alive(), "the search ended before its second checkpoint was seen"
        return bool(list(exp.glob("*/checkpoint_000001")))

    try:
        wait_for(second_checkpoint, 180, "the trial's second checkpoint", poll=0.02)
        (worker,) = freeze_ray_workers([ray_cluster.pid], TRAIN_WORKER, 1)  # this head's only trial's
        saved = sorted(c.name for c in exp.glob("*/checkpoint_*"))
        worker.kill()  # SIGKILL while frozen: the worker dies mid-run, its next epoch unfinished
        assert saved[-1] < "checkpoint_000015", f"the run had reached its last epoch: {saved}"
    finally:
        t.join(timeout=240)
    results, exp_dir, _ = box["out"]
    assert not [r.error for r in results if r.error]
    (rows,) = history_of(exp_dir).values()
    tid = rows[0]["trial_id"]
    resumed = [r for r in rows if r.get("restored_from_trial") == tid]
    assert resumed, [(r["epoch"], r.get("restored_from_trial")) for r in rows]
    assert resumed[0]["restored_from_epoch"] >= 1 and resumed[0]["epoch"] == resumed[0]["restored_from_epoch"] + 1
    assert rows[-1]["epoch"] == 16
    # Tune's own result.json keeps every report of the line (tune_jobs.trial_logs): none had to
    # be repaired from progress.csv by the loader
    from analysis.load import _lineage

    assert [r["epoch"] for r in _lineage(rows)] == list(range(1, 17)), [r["epoch"] for r in rows]
    trials, history = load_experiment(exp_dir)
    assert trials.iloc[0].status == "finished" and "retried after" in trials.iloc[0].error
    assert sorted(history.epoch) == list(range(1, 17))  # each epoch once on the final line
    assert compare_with_ray(exp_dir).ok


def test_a_preset_point_outside_the_search_space_is_an_error_naming_its_line(tmp_path):
    from asr_core.errors import InputError

    src = Path(JOBS[0]).parent / "seed000_mono.yaml"
    import yaml

    points = yaml.safe_load(src.read_text())["profiles"]["cpu"]["searcher"]["points_to_evaluate"]
    bad = edited_job(src, tmp_path / "seed000_mono.yaml",
                     {"profiles.cpu.searcher.points_to_evaluate": ["cpu_small", *points]})
    with pytest.raises(InputError, match=r"seed000_mono.yaml:\d+ .*preset cpu_small.*econformer_kernel_size=15"):
        load_job(bad, "cpu")


def test_required_metric_bound_decides_who_can_win(tmp_path):
    """seed000_bilingual: ranked by val_wer among epochs with val_lid_acc >= 0.9."""
    from analysis.load import best_checkpoint

    exp = tmp_path / "bili"
    exp.mkdir()
    (exp / "speechtune_job.json").write_text(json.dumps(
        {"metric": "val_wer", "mode": "min", "epochs": 2, "require": {"val_lid_acc": {"min": 0.9}},
         "resources": {"cpus_per_trial": 2, "gpus_per_trial": 0}}))
    curves = {"lowwer": [(0.30, 0.50), (0.20, 0.80)],     # best WER, but never identifies the language
              "steady": [(0.60, 0.85), (0.40, 0.95)]}     # meets the bound at epoch 2
    for i, (name, rows) in enumerate(curves.items()):
        d = exp / f"TorchTrainer_{name}_0000{i}"
        d.mkdir()
        (d / "params.json").write_text(json.dumps({"train_loop_config": {"lr": 0.001 * (i + 1)}}))
        (d / "result.json").write_text("".join(
            json.dumps({"trial_id": name, "epoch": e + 1, "val_wer": w, "val_lid_acc": a, "cpu_s": 3.0,
                        "time_this_iter_s": 2.0}) + "\n" for e, (w, a) in enumerate(rows)))
        for e, (w, a) in enumerate(rows):
            c = d / f"checkpoint_00000{e}"
            c.mkdir()
            (c / "meta.json").write_text(json.dumps({"metrics": {"val_wer": w, "val_lid_acc": a}}))
    trials, _ = load_experiment(exp)
    assert list(trials.trial_id) == ["steady", "lowwer"]
    assert trials.iloc[0].best_val_wer == 0.40 and trials.iloc[0].feasible
    assert not trials.iloc[1].feasible and trials.iloc[1].best_val_wer != trials.iloc[1].best_val_wer  # NaN
    assert best_checkpoint(exp).name == "checkpoint_000001" and "steady" in str(best_checkpoint(exp))
    assert list(trials.cost_cpu_s) == [6.0, 6.0] and list(trials.cost_cpu_reserved_s) == [8.0, 8.0]
