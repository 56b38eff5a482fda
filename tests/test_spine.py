"""One truth per metric and a restore that applies what a trial sets: the job's metric reaches the
loop, checkpoint retention follows the metric's direction, PBT mutations take effect or are
refused when the job loads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from asr_core.errors import InputError
from asr_core.models import FAMILIES, get_family
from asr_core.train.config import split_params
from asr_core.train.data import prepare_data
from asr_core.train.loop import run_epochs
from tests.factories import copy_manifest, history_of, tiny_job
from tune_jobs.spec import load_job


def test_each_family_declares_the_metrics_it_computes_with_their_direction():
    from collections import defaultdict

    from asr_core.metrics import mode_of

    for name in FAMILIES:
        fam = get_family(name)
        assert set(fam.validation_metrics) == {"val_loss", *fam.metrics(defaultdict(float))}, name
        assert fam.metric(f"best_{fam.default_metric}").mode == fam.metric(fam.default_metric).mode
    assert get_family("seq2seq").selection("val_cer") == ("val_cer", "min")
    assert get_family("seq2seq").selection("val_char_acc_auc") == ("val_char_acc", "max")
    assert get_family("tts_acoustic").selection("val_mel_loss_auc") == ("val_mel_loss", "min")
    assert mode_of("val_stop_acc") == "max" and mode_of("val_att_diag") == "max" and mode_of("nope") is None
    with pytest.raises(ValueError, match="does not report 'val_mel_loss'.*val_cer"):
        get_family("crnn_ctc").metric("val_mel_loss")


def test_unknown_metric_names_are_load_errors_listing_the_familys_metrics(tmp_path, corpus, cache_dir):
    bad = tiny_job(tmp_path, corpus, cache_dir, "m", "", edit={"metric": "val_acc"})
    with pytest.raises(InputError, match=r"m.yaml:\d+ .*does not report 'val_acc'.*val_cer"):
        load_job(bad)
    with pytest.raises(InputError, match="select_metric.*'val_accuracy' is not a validation metric.*val_seq_acc"):
        split_params({"family": "seq2seq", "train_manifest": "x", "dev_manifest": "x",
                      "select_metric": "val_accuracy"})
    two = tiny_job(tmp_path, corpus, cache_dir, "two", "", select_metric="val_cer")
    with pytest.raises(InputError, match=r"two.yaml:5 .*select_metric.*set 'metric'"):
        load_job(two)


def test_pbt_mutation_of_a_model_shape_key_is_refused_at_load(tmp_path, corpus, cache_dir):
    body = """\
        search_space: {{lr: {{loguniform: [1.0e-4, 1.0e-2]}}}}
        searcher: {{name: random}}
        scheduler:
          name: pbt
          perturbation_interval: 1
          hyperparam_mutations:
            lr: {{loguniform: [1.0e-4, 1.0e-2]}}
            {key}: {dist}
        """
    job = tiny_job(tmp_path, corpus, cache_dir, "shape", body.format(key="lstm_hidden", dist="{choice: [32, 64]}"))
    with pytest.raises(InputError, match=r"shape.yaml:18 \(scheduler.hyperparam_mutations.lstm_hidden\).*"
                                         r"changes the model's shape"):
        load_job(job)
    job = tiny_job(tmp_path, corpus, cache_dir, "opt", body.format(key="optimizer", dist="{choice: [adam, sgd]}"))
    with pytest.raises(InputError, match=r"opt.yaml:18 .*'optimizer': it cannot change in a running trial"):
        load_job(job)
    job = tiny_job(tmp_path, corpus, cache_dir, "mels", body.format(key="n_mels", dist="{choice: [40, 80]}"))
    with pytest.raises(InputError, match=r"mels.yaml:18 .*'n_mels': it is a features setting"):
        load_job(job)
    # what does take effect mid-run loads: a rate, weight decay, dropout
    for key, dist in (("weight_decay", "{uniform: [0.0, 0.1]}"), ("dropout", "{uniform: [0.0, 0.3]}")):
        load_job(tiny_job(tmp_path, corpus, cache_dir, f"ok_{key}", body.format(key=key, dist=dist)))


def test_tts_loss_weight_mutation_changes_the_loss_an_exploited_trial_computes(corpus, cache_dir, tmp_path):
    """A donor trial's checkpoint taken up by a trial with another stop_loss_weight (the exploit
    case: same experiment, another trial): the recipient's loss is computed with its own weight."""
    import torch

    m = copy_manifest(corpus["train"], tmp_path / "m16.jsonl")
    m.write_text("\n".join(sorted(m.read_text().splitlines(), key=lambda l: json.loads(l)["duration"])[:16]) + "\n")
    base = {"family": "tts_acoustic", "preset": "tiny", "train_manifest": str(m), "dev_manifest": str(m),
            "cache_dir": str(cache_dir), "n_mels": 40, "batch_size": 8, "epochs": 2, "lr": 1e-3,
            "schedule": "constant"}
    donor = split_params(base)
    data = prepare_data(donor.data, donor.features, progress=False)
    saved = tmp_path / "donor"

    def keep(metrics, save):
        if metrics["epoch"] == 1:
            save(str(saved))

    torch.manual_seed(0)
    run_epochs(donor, get_family("tts_acoustic"), data, keep, None, trial_id="donor", experiment="exp")
    from asr_core.train import checkpoint as ckpt

    state, meta = ckpt.load_state(saved), ckpt.load_meta(saved)
    losses = {}
    for weight in (1.0, 50.0):
        run = split_params({**base, "stop_loss_weight": weight})
        got = []
        torch.manual_seed(1)
        run_epochs(run, get_family("tts_acoustic"), data, lambda mt, save: got.append(mt), state,
                   checkpoint_meta=meta, trial_id=f"recipient_{weight}", experiment="exp")
        assert [g["epoch"] for g in got] == [2] and got[0]["restored_from_trial"] == "donor"
        losses[weight] = got[0]["train_loss"], got[0]["val_loss"]
    print("train/val loss with stop_loss_weight 1 and 50:", losses)
    # the stop term (BCE, about 0.1-0.7 per frame here) weighs 50 times as much
    assert losses[50.0][0] > losses[1.0][0] + 1.0 and losses[50.0][1] > losses[1.0][1] + 1.0


def _assert_kept_by_direction(root: Path, metric: str, values: list[float], lower: bool) -> None:
    """num_to_keep=2 in the metric's direction: the best epoch's checkpoint is kept, and no kept one
    is worse than a deleted one, except the newest (Ray always keeps the latest checkpoint)."""
    metas = [json.loads((c / "meta.json").read_text()) for c in root.rglob("checkpoint_*") if (c / "meta.json").is_file()]
    kept = {m["epoch"]: m["metrics"][metric] for m in metas}
    deleted = [v for e, v in enumerate(values, 1) if e not in kept]
    best = min(values) if lower else max(values)
    assert best in kept.values(), (kept, values)
    ranked = {e: v for e, v in kept.items() if e != len(values)}  # the newest is kept whatever its value
    assert len(ranked) <= 2 and all((v <= d) if lower else (v >= d) for v in ranked.values() for d in deleted), \
        (kept, values)


def test_train_seq2seq_with_select_metric_val_cer_keeps_the_lowest_cer_checkpoints(corpus, cache_dir, tmp_path,
                                                                                     ray_start_2_cpus):
    """seq2seq ranks by val_char_acc (max) by default; --set select_metric=val_cer must keep the
    checkpoints of lowest CER (the registry's direction for val_cer), not the highest."""
    from tune_jobs.cli import main

    m = copy_manifest(corpus["train"], tmp_path / "m32.jsonl")
    m.write_text("\n".join(sorted(m.read_text().splitlines(), key=lambda l: json.loads(l)["duration"])[:32]) + "\n")
    rc = main(["train", "seq2seq", "--preset", "tiny", "--train-manifest", str(m), "--dev-manifest", str(m),
               "--storage", str(tmp_path / "exp"), "--name", "s2s", "--set", "select_metric=val_cer",
               "--set", "epochs=12", "--set", "lr=5e-3", "--set", "batch_size=8", "--set", "n_mels=40",
               "--set", f"cache_dir={cache_dir}"])
    assert rc == 0
    trial = next((tmp_path / "exp" / "s2s").glob("TorchTrainer_*"))
    rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    cer = [r["val_cer"] for r in rows]
    assert len(set(cer)) > 2, cer  # the CER moved, so which checkpoints are kept matters
    _assert_kept_by_direction(trial, "val_cer", cer, lower=True)
    assert "best_val_cer" in rows[-1] and rows[-1]["best_val_cer"] == min(cer)


def test_a_job_ranked_by_val_loss_early_stops_and_selects_on_val_loss(corpus, cache_dir, tmp_path,
                                                                      ray_start_2_cpus):
    from analysis.load import best_checkpoint
    from tune_jobs.runner import run_tune

    patience, delta = 1, 0.02
    job = tiny_job(tmp_path, corpus, cache_dir, "byloss", f"""\
        searcher: {{name: grid}}
        search_space: {{lr: {{grid: [3.0e-3]}}}}
        """, epochs=8, early_stop_patience=patience, early_stop_min_delta=delta)
    spec = load_job(job)
    assert spec.selection() == ("val_loss", "min")
    results, exp, _ = run_tune(spec, cache_dir=str(cache_dir), progress=False)
    assert not [r.error for r in results if r.error]
    (rows,) = history_of(exp).values()
    losses = [r["val_loss"] for r in rows]
    # the loop's rule, applied to val_loss: stop after `patience` epochs without a gain of `delta`
    best, best_epoch, bad, stopped = float("inf"), 0, 0, False
    for epoch, v in enumerate(losses, 1):
        if v < best - delta:
            best, best_epoch, bad = v, epoch, 0
        else:
            bad += 1
        if bad >= patience:
            stopped = True
            break
    assert len(rows) == epoch and rows[-1].get("early_stop") == (1 if stopped else None), losses
    assert "best_val_loss" in rows[-1] and "best_val_cer" not in rows[-1]
    assert rows[-1]["best_val_loss"] == best and rows[-1]["best_epoch"] == best_epoch, (rows[-1], losses)
    _assert_kept_by_direction(Path(exp), "val_loss", losses, lower=True)
    ck = json.loads((best_checkpoint(exp) / "meta.json").read_text())["metrics"]
    assert ck["val_loss"] == min(losses)


def test_loggers_are_checked_at_load(tmp_path, corpus, cache_dir):
    job = tiny_job(tmp_path, corpus, cache_dir, "log", "loggers: [mlflow, comet]\n")
    with pytest.raises(InputError, match=r"log.yaml:11 \(loggers\).*unknown logger 'comet'.*tensorboard, mlflow, wandb"):
        load_job(job)
    ok = load_job(tiny_job(tmp_path, corpus, cache_dir, "log2", "loggers: [mlflow]\n"))
    assert ok.loggers == ["tensorboard", "mlflow"]


def test_a_search_or_trial_that_changes_what_the_driver_builds_is_refused_at_load(tmp_path, corpus, cache_dir):
    """Features and augmented copies are built once by the driver; a trial may not ask for others
    (it would silently read the driver's). Read-time settings (cmvn) may be searched."""
    space = "search_space: {{{key}: {dist}}}\nsearcher: {{name: random}}\nnum_trials: 2\n"
    for key, dist, why in (("n_mels", "{choice: [40, 80]}", "it is a features setting"),
                           ("speed_perturb", "{choice: [[0.9, 1.1], [0.8, 1.2]]}", "it sets the augmented copies"),
                           ("skip_bad", "{choice: [false, true]}", "it is a data setting")):
        job = tiny_job(tmp_path, corpus, cache_dir, f"s_{key}", space.format(key=key, dist=dist),
                       aug_copies=1, speed_perturb=[0.9, 1.1])
        with pytest.raises(InputError, match=rf"s_{key}.yaml:\d+ \(search_space.{key}\): '{key}' cannot be "
                                             rf"searched: {why}.*one job \(or phase\) per value"):
            load_job(job)
    load_job(tiny_job(tmp_path, corpus, cache_dir, "cmvn", space.format(key="cmvn", dist="{choice: [global, utterance]}")))
    # a named trial whose preset brings augmentation the job's driver would not build
    job = tiny_job(tmp_path, corpus, cache_dir, "named", "trials:\n  plain: {lr: 0.003}\n  "
                                                         "augmented: {preset: demo_small}\n")
    with pytest.raises(InputError, match=r"named.yaml:\d+ \(trials.augmented.preset\): trial 'augmented' sets "
                                         r"'aug_copies' to another value than the job's"):
        load_job(job)
