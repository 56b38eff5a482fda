"""A trial whose loss becomes NaN ends as ``diverged`` with its step; the search goes on, and the
report says why. Every family also trains through ``speechtune train FAMILY`` on real Ray."""
from __future__ import annotations

import textwrap

import pytest

from analysis.load import load_experiment
from analysis.report import write_report
from tests.factories import copy_manifest
from tune_jobs.cli import main
from tune_jobs.runner import run_tune
from tune_jobs.spec import load_job


@pytest.mark.ray
def test_nan_loss_ends_trial_as_diverged_and_search_goes_on(corpus, cache_dir, tmp_path, ray_start_2_cpus):
    job_file = tmp_path / "nan.yaml"
    # plain SGD at lr 1e4 without clipping really overflows within a few steps
    job_file.write_text(textwrap.dedent(f"""\
        name: nan_job
        family: crnn_ctc
        preset: tiny
        data: {{train_manifest: {corpus['train']}, dev_manifest: {corpus['dev']}}}
        params: {{epochs: 2, n_mels: 40, batch_bins: 200000, cache_dir: {cache_dir}, optimizer: sgd,
                  grad_clip: 0, schedule: constant}}
        search_space:
          lr: {{grid: [0.01, 10000.0, 0.003]}}
        searcher: {{name: grid}}
        scheduler: {{name: fifo}}
        metric: val_cer
        num_trials: 1
        max_concurrent: 2
        resources: {{num_workers: 1, cpus_per_worker: 1}}
        storage_path: {tmp_path / 'exp'}
        """))
    results, exp_dir, _ = run_tune(load_job(job_file), cache_dir=str(cache_dir), progress=False)
    assert len(results) == 3 and not [r.error for r in results if r.error]
    trials, history = load_experiment(exp_dir)
    by_lr = {float(r["config/lr"]): r for _, r in trials.iterrows()}
    bad = by_lr[10000.0]
    assert bad.status == "diverged"
    assert "at step" in bad.error and ("nan" in bad.error or "inf" in bad.error), bad.error
    assert by_lr[0.01].status == by_lr[0.003].status == "finished"
    report = write_report(exp_dir, tmp_path / "report").read_text()
    assert "diverged: loss became" in report and "DIVERGED" in report


@pytest.mark.parametrize("family,preset", [("crnn_ctc", "tiny"), ("wavenet_ctc", "tiny"), ("seq2seq", "tiny"),
                                           ("conformer_aed", "tiny"), ("tts_acoustic", "tiny")])
def test_every_family_trains_through_speechtune_train(family, preset, corpus, cache_dir, tmp_path, capsys,
                                                      monkeypatch, ray_start_2_cpus):
    """The manifest is named relative to where the command runs: `train` makes it absolute before
    any worker starts, as `tune` does (a Ray worker's working directory is not the user's)."""
    (tmp_path / "data").mkdir()
    small = copy_manifest(corpus["train"], tmp_path / "data" / "train.jsonl")
    small.write_text("\n".join(small.read_text().splitlines()[:24]) + "\n")
    monkeypatch.chdir(tmp_path)
    # validated on its own training utterances: a 24-utterance tokenizer may miss a dev character
    rc = main(["train", family, "--preset", preset, "--train-manifest", "data/train.jsonl",
               "--dev-manifest", "data/train.jsonl", "--storage", str(tmp_path / "exp"), "--set", "epochs=1",
               "--set", "n_mels=40", "--set", "batch_size=8", "--set", f"cache_dir={cache_dir}"])
    out, err = capsys.readouterr()
    assert rc == 0, out[-3000:] + err[-3000:]
    metric = "val_mel_loss" if family == "tts_acoustic" else "val_cer"
    assert metric in out and "checkpoint:" in out and "none" not in out.splitlines()[-1]
    assert "manifest not found" not in out + err
