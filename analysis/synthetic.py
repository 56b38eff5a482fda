"""Experiment directories in Tune's own layout, written without running trials: for the tests'
fixture experiments (a failed trial, a diverged one, a corrupt result file, a misnamed metric)
and the report-loading benchmark (1,000 trials x 50 epochs).

Each trial gets ``params.json``, ``result.json`` and ``progress.csv`` as Tune writes them, and
the experiment an ``experiment_state-*.json`` serialized by Ray's own ``Trial.get_json_state``,
so Ray's ``ExperimentAnalysis`` reads the directory as one of its own.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from analysis.record import JOB_RECORD


@dataclass
class FakeTrial:
    trial_id: str
    config: dict
    rows: list[dict] = field(default_factory=list)   # one dict per report (epoch, metrics...)
    status: str = "TERMINATED"                        # Tune's status
    error: str | None = None                          # written to error.txt
    raw_result: str | None = None                     # result.json text as is (corrupt fixtures)
    # epoch -> that epoch's checkpoint's per-utterance edit counts, (id, char errors, chars,
    # word errors, words) each: written as checkpoint_*/edits.json with its meta.json
    checkpoints: dict = field(default_factory=dict)


def _dir_name(i: int, t: FakeTrial) -> str:
    tag = ",".join(f"{k}={v}" for k, v in t.config.items())[:60]
    return f"TorchTrainer_{t.trial_id}_{i + 1}_{tag}_2026-01-01_00-00-00"


def write_experiment(exp_dir: str | os.PathLike, trials: list[FakeTrial], record: dict | None = None) -> Path:
    """Write the experiment; ``record`` becomes ``speechtune_job.json`` (metric, mode, epochs...)."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.placement_groups import PlacementGroupFactory
    from ray.tune.experiment import Trial

    exp = Path(exp_dir).absolute()
    exp.mkdir(parents=True, exist_ok=True)
    if record is not None:
        (exp / JOB_RECORD).write_text(json.dumps(record, indent=1))  # as written before records had a version
    state = []
    for i, t in enumerate(trials):
        name = _dir_name(i, t)
        d = exp / name
        d.mkdir(exist_ok=True)
        config = {"train_loop_config": t.config}
        (d / "params.json").write_text(json.dumps(config))
        total = 0.0
        full = []
        for r in t.rows:
            total += r.get("time_this_iter_s", 1.0)
            full.append({**r, "trial_id": t.trial_id, "training_iteration": len(full) + 1,
                         "time_this_iter_s": r.get("time_this_iter_s", 1.0), "time_total_s": total,
                         "done": False, "config": config})
        if t.raw_result is not None:
            (d / "result.json").write_text(t.raw_result)
        else:
            with open(d / "result.json", "w") as f:
                for r in full:
                    f.write(json.dumps(r) + "\n")
        if full:
            keys = list(dict.fromkeys(k for r in full for k in r if k != "config"))
            with open(d / "progress.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys)
                w.writeheader()
                for r in full:
                    w.writerow({k: r.get(k, "") for k in keys})
        if t.error:
            (d / "error.txt").write_text(t.error + "\n")
        for k, (epoch, edits) in enumerate(sorted(t.checkpoints.items())):
            from asr_core.train.checkpoint_files import EDITS, META, write_edits

            c = d / f"checkpoint_{k:06d}"
            c.mkdir(exist_ok=True)
            metrics = next((r for r in t.rows if r.get("epoch") == epoch), {})
            (c / META).write_text(json.dumps({"epoch": epoch, "metrics": metrics, "params": t.config}))
            write_edits(c / EDITS, edits, split="dev", epoch=epoch)
        storage = StorageContext(storage_path=str(exp.parent), experiment_dir_name=exp.name, trial_dir_name=name)
        trial = Trial("TorchTrainer", config=config, trial_id=t.trial_id, storage=storage, stub=True,
                      placement_group_factory=PlacementGroupFactory([{"CPU": 1}]), _setup_default_resource=False)
        trial.placement_group_factory = PlacementGroupFactory([{"CPU": 1}])
        trial.relative_logdir = name
        trial.status = t.status
        if full:
            trial.run_metadata.last_result = {k: v for k, v in full[-1].items()}
        state.append(list(trial.get_json_state()))
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": state, "runner_data": {}, "stats": {}}))
    return exp


def curve(epochs: int, start: float, end: float, noise: float, rng: random.Random) -> list[float]:
    """A decaying loss-like curve with noise."""
    return [end + (start - end) * math.exp(-3 * e / max(epochs, 1)) * (1 + noise * rng.uniform(-1, 1))
            for e in range(1, epochs + 1)]


def random_experiment(exp_dir: str | os.PathLike, n_trials: int, epochs: int, seed: int = 0,
                      stop_early: bool = True) -> Path:
    """A large search over lr and lstm_hidden, ASHA-like (most trials stopped early, some
    finished) or, with ``stop_early=False``, every trial run for all its epochs; 1% fail."""
    rng = random.Random(seed)
    trials = []
    for i in range(n_trials):
        lr = 10 ** rng.uniform(-5, -2)
        hidden = rng.choice([32, 64, 128, 256])
        quality = abs(math.log10(lr) + 3) * 0.2 + (0.05 if hidden == 32 else 0)
        n = epochs if not stop_early or rng.random() < 0.2 else rng.choice([1, 3, 9, epochs])
        cer = curve(n, 1.0, 0.1 + quality, 0.05, rng)
        rows = [{"epoch": e + 1, "val_cer": c, "val_wer": min(1.5, 1.6 * c), "val_loss": 20 * c,
                 "train_loss": 18 * c, "lr": lr, "cpu_s": 2.0, "model_params": hidden * 1000}
                for e, c in enumerate(cer)]
        failed = rng.random() < 0.01
        trials.append(FakeTrial(f"{i:05d}", {"lr": lr, "lstm_hidden": hidden}, rows[:1] if failed else rows,
                                status="ERROR" if failed else "TERMINATED",
                                error="RuntimeError: CUDA out of memory" if failed else None))
    record = {"name": "synthetic", "family": "crnn_ctc", "metric": "val_cer", "mode": "min", "epochs": epochs,
              "search_space": {"lr": {"loguniform": [1e-5, 1e-2]}, "lstm_hidden": {"choice": [32, 64, 128, 256]}},
              "tuned": ["lr", "lstm_hidden"], "scheduler": {"name": "asha", "grace_period": 1, "max_t": epochs,
                                                              "reduction_factor": 3},
              "searcher": "random", "resources": {"cpus_per_trial": 2, "gpus_per_trial": 0}}
    return write_experiment(exp_dir, trials, record)
