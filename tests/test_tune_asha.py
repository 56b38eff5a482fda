"""The Train-under-Tune trap: ASHA stops trials whose 2 DDP workers must be freed at once.

On 2 CPUs each trial needs both CPUs, so a stopped trial that kept its workers' placement group
would leave every later trial waiting forever (Train V2: "timed out after 60.0 seconds waiting for
2 workers"); pytest's timeout is what catches that hang. Here every trial must end and all CPUs
must be free again at the end. The grid is ordered so that ASHA must stop two trials at its first
rung: a well-set rate runs first, then two rates 1,000 times too small, whose first-epoch loss
cannot reach it.
"""
from __future__ import annotations

import textwrap

import pytest

from analysis.load import load_experiment
from tests.factories import wait_for
from tune_jobs.runner import run_tune
from tune_jobs.spec import load_job


@pytest.fixture(scope="module")
def asha_run(corpus, cache_dir, tmp_path_factory, ray_start_2_cpus):
    tmp_path = tmp_path_factory.mktemp("asha")
    job_file = tmp_path / "asha.yaml"
    job_file.write_text(textwrap.dedent(f"""\
        name: asha_trap
        family: crnn_ctc
        preset: tiny
        data: {{train_manifest: {corpus['train']}, dev_manifest: {corpus['dev']}}}
        params: {{epochs: 3, n_mels: 40, batch_bins: 200000, cache_dir: {cache_dir}}}
        search_space:
          lr: {{grid: [3.0e-3, 1.0e-6, 2.0e-6]}}
        searcher: {{name: grid}}
        scheduler: {{name: asha, grace_period: 1, max_t: 3, reduction_factor: 3}}
        metric: val_loss
        max_concurrent: 1
        resources: {{num_workers: 2, cpus_per_worker: 1}}
        storage_path: {tmp_path / 'exp'}
        loggers: [tensorboard, mlflow, wandb]
        """))
    job = load_job(job_file)
    return run_tune(job, cache_dir=str(cache_dir), progress=False)


@pytest.mark.timeout(300)  # a trial waiting for resources a stopped one holds would wait forever
def test_asha_stops_trials_and_none_waits_for_held_resources(asha_run, ray_start_2_cpus):
    ray = ray_start_2_cpus
    results, exp_dir, _ = asha_run
    assert len(results) == 3 and not [r.error for r in results if r.error]
    trials, _ = load_experiment(exp_dir)
    by_lr = trials.set_index("config/lr")
    assert by_lr.loc[3.0e-3].status == "finished" and by_lr.loc[3.0e-3].epochs_run == 3
    assert list(by_lr.loc[[1.0e-6, 2.0e-6]].status) == ["early-stopped"] * 2, trials[["trial_id", "status"]]
    assert list(by_lr.loc[[1.0e-6, 2.0e-6]].epochs_run) == [1, 1]
    # the job's keep_checkpoints (default 2) holds under Tune: the finished trial ran 3 epochs and
    # keeps its best and its latest (Tune's own default kept every one)
    from pathlib import Path

    for t in trials.itertuples():
        kept = sorted(p.name for p in (Path(exp_dir) / t.trial).glob("checkpoint_*"))
        assert 1 <= len(kept) <= 2, (t.trial_id, kept)
    # every stopped trial's workers and placement group are gone: the node is whole again
    wait_for(lambda: ray.available_resources().get("CPU", 0) >= 2, 30, "both CPUs free again", poll=0.5)
    assert ray.available_resources().get("CPU", 0) == 2
    from ray.util import placement_group_table

    live = [pg for pg in placement_group_table().values() if pg["state"] != "REMOVED"]
    assert not live, live


def test_report_equals_result_files_and_ray_result_grid(asha_run, tmp_path):
    import json
    import math
    from pathlib import Path

    import pandas as pd

    from analysis.report import write_report

    results, exp_dir, _ = asha_run
    report = write_report(exp_dir, tmp_path)
    text = report.read_text()
    trials = pd.read_parquet(tmp_path / "trials.parquet")
    history = pd.read_parquet(tmp_path / "history.parquet")
    by_id = {r.metrics["trial_id"]: r for r in results}
    assert set(trials.trial_id) == set(by_id)
    assert len(history) == sum(len(r.metrics_dataframe) for r in results)
    for _, row in trials.iterrows():
        lines = [json.loads(l) for l in (Path(exp_dir) / row.trial / "result.json").read_text().splitlines()]
        best = min(l["val_loss"] for l in lines)
        assert row.best_val_loss == best
        assert row.best_val_cer == min(l["val_cer"] for l in lines)
        ray_df = by_id[row.trial_id].metrics_dataframe
        assert row.best_val_cer == ray_df["val_cer"].min()
        assert row.epochs_run == ray_df["epoch"].max()
        assert f"`{row.trial_id}`" in text
        cer = f"{100 * row.best_val_cer:.2f}%" if not math.isnan(row.best_val_cer) else "n/a"
        assert cer in text
    ranked = [l.split("|")[2].strip(" `") for l in text.splitlines() if l.startswith("| 1 ") or l.startswith("| 2 ")]
    assert ranked == trials.trial_id.tolist()[:2]  # ranked by the job's metric (val_loss)
    # the demo-shaped experiment: count, statuses and best metrics as Ray's ExperimentAnalysis reads them
    from analysis.raycheck import compare_with_ray

    check = compare_with_ray(exp_dir)
    assert check.ok and check.trials_ray == 3 and check.compared >= 3 * 5, check.summary()
    assert (tmp_path / "plots" / "asha_rungs.png").is_file() and "ASHA rung survival" in text


def test_evaluate_cli_scores_the_best_checkpoint(asha_run, capsys):
    from tune_jobs.cli import main

    results, exp_dir, manifests = asha_run
    assert main(["evaluate", exp_dir, "--manifest", manifests["dev"]]) == 0
    out = capsys.readouterr().out
    assert "24 utterances" in out and "CER" in out and "WER" in out


def test_evaluate_uses_this_machines_cache_not_the_one_recorded(asha_run, tmp_path, monkeypatch, capsys):
    """SPEECHTUNE_CACHE first, then the cache the run recorded (as train and tune resolve it)."""
    from tune_jobs.cli import main

    results, exp_dir, manifests = asha_run
    monkeypatch.setenv("SPEECHTUNE_CACHE", str(tmp_path / "here"))
    assert main(["evaluate", exp_dir, "--manifest", manifests["dev"]]) == 0
    assert "24 utterances" in capsys.readouterr().out
    assert list((tmp_path / "here" / "features").glob("*/feats.arrow"))


def test_evaluate_out_writes_one_row_per_utterance_whose_errors_sum_to_the_printed_cer(asha_run, tmp_path,
                                                                                        capsys):
    import json
    import re

    from tune_jobs.cli import main

    results, exp_dir, manifests = asha_run
    out_file = tmp_path / "hyps.jsonl"
    assert main(["evaluate", exp_dir, "--manifest", manifests["dev"], "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "decoding: decoder='greedy'" in out and "(the checkpoint's own)" in out, out
    printed = float(re.search(r"CER (\d+\.\d+)%", out).group(1))
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    ids = [json.loads(line)["id"] for line in open(manifests["dev"]) if line.strip()]
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert all(r["reference"] and "hypothesis" in r for r in rows)
    cer = 100 * sum(r["char_errors"] for r in rows) / sum(r["chars"] for r in rows)
    assert round(cer, 2) == printed, (cer, printed)
    # an override is named as one
    assert main(["evaluate", exp_dir, "--manifest", manifests["dev"], "--decoder", "prefix_beam",
                 "--beam-size", "4"]) == 0
    assert "decoder='prefix_beam'" in (o := capsys.readouterr().out) and "overridden: beam_size, decoder" in o


def test_every_trial_logs_tensorboard_events_an_mlflow_run_and_a_wandb_offline_run(asha_run):
    """Where teams already look: TensorBoard event files in each trial's folder; with
    ``loggers: [mlflow, wandb]`` one MLflow run per trial in the experiment's file store, with every
    epoch's metrics, and one W&B offline run per trial with its metrics."""
    import json
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    results, exp_dir, _ = asha_run
    trials, history = load_experiment(exp_dir)
    for t in trials.trial:
        assert list((Path(exp_dir) / t).glob("events.out.tfevents.*")), t
    client = MlflowClient(tracking_uri=f"file:{Path(exp_dir) / 'mlruns'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "asha_trap"]
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == len(trials) == 3
    by_name = {r.info.run_name: r for r in runs}
    for tid in trials.trial_id:
        run = next(r for n, r in by_name.items() if tid in n)
        steps = client.get_metric_history(run.info.run_id, "val_loss")
        assert len(steps) == len(history[history.trial_id == tid]), tid
    # W&B offline: one run per trial (run id = trial id); its record file holds the trial's last
    # val_loss as W&B encodes it (JSON, Python's float repr); wandb 0.31 has no Python reader for it
    runs = {f.stem.removeprefix("run-"): f.read_bytes() for f in (Path(exp_dir) / "wandb").glob("offline-run-*/*.wandb")}
    assert sorted(runs) == sorted(trials.trial_id), runs.keys()
    for tid, h in history.groupby("trial_id"):
        assert json.dumps(float(h.val_loss.iloc[-1])).encode() in runs[tid], tid


def test_a_truncated_checkpoint_is_named_and_the_newest_intact_one_is_resumed_from(asha_run, tmp_path, capsys):
    """``truncate -s 500`` of the latest state.pt: ``evaluate`` named no file (a torch zip traceback)
    and ``--resume`` failed the trial. Each checkpoint's meta.json now records the state's size and
    checksum: a broken one is named, and a run resumes from the newest intact one beside it, or
    from scratch, saying so, when none is left."""
    import shutil
    from pathlib import Path

    from ray.train import Checkpoint

    from asr_core.train import checkpoint as ckpt
    from tune_jobs.cli import main

    results, exp_dir, manifests = asha_run
    trial_dir = next(p.parent.parent for p in Path(exp_dir).glob("*/checkpoint_*/meta.json"))
    copy = tmp_path / trial_dir.name
    latest = sorted(trial_dir.glob("checkpoint_*"))[-1]
    shutil.copytree(latest, copy / "checkpoint_000009")
    shutil.copytree(latest, copy / "checkpoint_000010")  # the one a resume reads, about to be cut short
    state = copy / "checkpoint_000010" / ckpt.STATE
    with open(state, "r+b") as f:
        f.truncate(500)
    assert main(["evaluate", str(copy / "checkpoint_000010"), "--manifest", manifests["dev"]]) == 2
    err = capsys.readouterr().err
    assert f"{state}: checkpoint is broken: 500 bytes" in err and "meta.json recorded" in err, err
    got, meta, note = ckpt.restore_intact(Checkpoint.from_directory(str(copy / "checkpoint_000010")))
    assert got is not None and meta["epoch"] == ckpt.load_meta(latest)["epoch"]
    assert f"{state}: checkpoint is broken" in note and "resumed from" in note and "checkpoint_000009" in note
    (copy / "checkpoint_000009" / ckpt.STATE).unlink()
    got, meta, note = ckpt.restore_intact(Checkpoint.from_directory(str(copy / "checkpoint_000010")))
    assert got is None and meta is None and "no intact checkpoint left: the run starts again from epoch 1" in note
    assert "checkpoint_000009" in note and "checkpoint state is missing" in note


def test_evaluate_refuses_decoding_options_the_family_lacks_and_a_folder_that_is_no_experiment(asha_run, tmp_path,
                                                                                               capsys):
    """``--ctc-weight`` on a crnn_ctc checkpoint printed "(overridden: ...)" and changed nothing;
    ``evaluate`` of a folder that is no experiment was a traceback."""
    from tune_jobs.cli import main

    results, exp_dir, manifests = asha_run
    assert main(["evaluate", exp_dir, "--manifest", manifests["dev"], "--ctc-weight", "0.3"]) == 2
    assert "a crnn_ctc checkpoint has no decoding option decode_ctc_weight (its decoding: " in capsys.readouterr().err
    assert main(["evaluate", exp_dir, "--manifest", manifests["dev"], "--beam-size", "0"]) == 2
    assert "(decoding): key 'beam_size' must be >= 1" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    assert main(["evaluate", str(tmp_path / "mine"), "--manifest", manifests["dev"]]) == 2
    assert "not an experiment or study directory" in capsys.readouterr().err


def test_resume_of_a_completed_search_leaves_its_record_and_starts_nothing(asha_run, tmp_path, capsys):
    """`tune --resume` of a finished experiment ran test evaluation again and rewrote its record as
    "resumed after an interrupt" with the resume's own wall time (17 s for a 43 s search)."""
    import shutil

    from tune_jobs.cli import main
    from tune_jobs.runner import save_outcome

    results, exp_dir, manifests = asha_run
    exp = shutil.copytree(exp_dir, tmp_path / "asha_trap")
    save_outcome(str(exp), {"search wall time": "43 s"})  # as `speechtune tune` leaves a search that ended
    before = {p: p.read_bytes() for p in exp.rglob("*") if p.is_file()}
    assert main(["tune", "--resume", str(exp)]) == 0
    out = capsys.readouterr().out
    assert f"{exp}: the search is complete (3 trials terminated, in 43 s); nothing to resume" in out, out
    assert {p: p.read_bytes() for p in exp.rglob("*") if p.is_file()} == before


def test_evaluate_refuses_or_skips_an_utterance_longer_than_its_batch_naming_the_line(asha_run, corpus, tmp_path,
                                                                                      capsys):
    """`evaluate` had no duration limit: a 3-hour row ran past 240 s (extraction, then a batch of one).
    Now a row longer than an evaluation batch holds (1,000,000 bins / 40 mels = 250 s), or than
    ``--max-duration``, is refused naming its line before any extraction, or skipped with --skip-bad."""
    import numpy as np

    from tests.factories import with_audio
    from tune_jobs.cli import main

    results, exp_dir, manifests = asha_run
    rng = np.random.default_rng(0)
    dev = with_audio(corpus, tmp_path, 2, (0.01 * rng.standard_normal(260 * 16000)).astype(np.float32))
    assert main(["evaluate", exp_dir, "--manifest", str(dev)]) == 2
    assert f"{dev}:3: utterance 'dev-00002' is 260.0 s long, over max_duration 250.0 s" in capsys.readouterr().err
    assert main(["evaluate", exp_dir, "--manifest", str(dev), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "23 utterances, skipped 1 bad row(s)" in out and "CER " in out, out
    assert main(["evaluate", exp_dir, "--manifest", manifests["dev"], "--max-duration", "0.5"]) == 2
    assert "over max_duration 0.5 s" in capsys.readouterr().err
