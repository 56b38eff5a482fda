"""Run a job: resolve its data, check it, then Tuner(TorchTrainer) on a local or remote Ray."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import tune_jobs  # noqa: F401  (sets RAY_TRAIN_V2_ENABLED before ray.train loads)
from asr_core.data.synth import default_cache_dir, ensure_corpus
from asr_core.errors import InputError
from asr_core.train.config import split_params
from asr_core.train.data import prepare_data
from asr_core.train.loop import train_loop_per_worker
from cluster.local import init_ray
from tune_jobs.registry import make_scheduler, make_searcher
from tune_jobs.spec import JobSpec, ResourcesSpec

log = logging.getLogger(__name__)
JOB_RECORD = "speechtune_job.json"


def resolve_data(job: JobSpec, cache_dir: str | None = None) -> dict[str, str]:
    """Manifest paths of the job's train/dev/test splits (synthesizing a demo corpus if needed)."""
    d = job.data
    if d.corpus:
        return ensure_corpus(d.corpus, cache_dir=cache_dir, train=d.train, dev=d.dev, test=d.test, seed=d.seed)
    out = {"train": str(Path(d.train_manifest).resolve()), "dev": str(Path(d.dev_manifest).resolve())}
    if d.test_manifest:
        out["test"] = str(Path(d.test_manifest).resolve())
    return out


def base_params(job: JobSpec, manifests: dict[str, str], cache_dir: str) -> dict:
    p = {"family": job.family, **job.params, "train_manifest": manifests["train"],
         "dev_manifest": manifests["dev"], "cache_dir": cache_dir, "skip_bad": job.data.skip_bad}
    if job.preset is not None:
        p["preset"] = job.preset
    return p


def check_and_cache(params: dict, progress: bool = True) -> None:
    """Everything that can fail on bad input fails here, before any trial starts: manifests,
    tokenizer coverage of the dev set, and feature extraction into the node's cache."""
    from asr_core.models import get_family

    run = split_params(params, where="job params")
    data = prepare_data(run.data, run.features, progress=progress)
    try:  # a model that cannot be built for this data fails here, not in every trial
        get_family(run.family).build(run.model, data.tokenizer.vocab_size, run.features.n_mels)
    except ValueError as e:
        raise InputError("job params", str(e)) from None
    for m in (data.train_manifest, data.dev_manifest):
        if m.skipped:
            print(f"--skip-bad: skipped {len(m.skipped)} bad row(s) in {m.path}; first: {m.skipped[0]}")


def make_trainer(params: dict, res: ResourcesSpec, *, metric: str, mode: str, storage_path: str, name: str,
                 max_failures: int = 0, resume_from: str | None = None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    scaling = ScalingConfig(
        num_workers=res.num_workers, use_gpu=res.gpus_per_worker > 0,
        resources_per_worker={"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})},
        # The trainer actor only coordinates; reserving a CPU for it would leave a 2-CPU node
        # unable to place 2 single-CPU workers.
        trainer_resources={"CPU": 0}, placement_strategy=res.placement_strategy,
    )
    run_config = RunConfig(
        name=name, storage_path=os.path.abspath(storage_path) if "://" not in storage_path else storage_path,
        checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=metric,
                                           checkpoint_score_order=mode),
        failure_config=FailureConfig(max_failures=max_failures),
    )
    resume = None
    if resume_from:
        from ray.train import Checkpoint

        resume = Checkpoint.from_directory(resume_from)
    return TorchTrainer(train_loop_per_worker, train_loop_config=params, scaling_config=scaling,
                        run_config=run_config, resume_from_checkpoint=resume)


def check_fits(res: ResourcesSpec, where: str) -> None:
    """A trial larger than the whole cluster would stay PENDING forever: refuse it up front."""
    import ray

    total = ray.cluster_resources()
    need = {"CPU": res.num_workers * res.cpus_per_worker, "GPU": res.num_workers * res.gpus_per_worker}
    for k, v in need.items():
        if v > total.get(k, 0) + 1e-9:
            raise InputError(where, f"one trial needs {v:g} {k} ({res.num_workers} workers x "
                                    f"{res.cpus_per_worker if k == 'CPU' else res.gpus_per_worker:g}) but the "
                                    f"cluster has {total.get(k, 0):g}")


def run_tune(job: JobSpec, address: str | None = None, num_cpus: int | None = None, resume: bool = False,
             cache_dir: str | None = None, progress: bool = True):
    from ray import tune
    from ray.tune import Tuner

    cache_dir = cache_dir or str(default_cache_dir())
    manifests = resolve_data(job, cache_dir)
    params = base_params(job, manifests, cache_dir)
    check_and_cache(params, progress=progress)
    init_ray(address, num_cpus=num_cpus)
    check_fits(job.resources, f"{job.path} (resources)")
    storage = os.path.abspath(job.storage_path)
    exp_dir = os.path.join(storage, job.name)
    trainer = make_trainer(params, job.resources, metric=job.metric, mode=job.mode, storage_path=storage,
                           name=job.name, max_failures=job.max_failures)
    if resume:
        tuner = Tuner.restore(exp_dir, trainable=trainer, resume_unfinished=True, resume_errored=True)
    else:
        sched = dict(job.scheduler)
        searcher = make_searcher(job.searcher.name, metric=job.metric, mode=job.mode, seed=job.searcher.seed,
                                 points=[{"train_loop_config": p} for p in job.searcher.points_to_evaluate],
                                 max_concurrent=job.max_concurrent)
        scheduler = make_scheduler(sched.pop("name"), metric=job.metric, mode=job.mode, **sched)
        tuner = Tuner(
            trainer,
            param_space={"train_loop_config": job.tune_space()},
            tune_config=tune.TuneConfig(num_samples=job.num_trials, search_alg=searcher, scheduler=scheduler,
                                        max_concurrent_trials=job.max_concurrent),
            run_config=tune.RunConfig(name=job.name, storage_path=storage, verbose=1 if progress else 0,
                                      failure_config=tune.FailureConfig(max_failures=job.max_failures)),
        )
        _write_record(exp_dir, job, manifests, params)
    return tuner.fit(), exp_dir, manifests


def _write_record(exp_dir: str, job: JobSpec, manifests: dict, params: dict) -> None:
    """What the analysis needs and cannot infer from Tune's files (read by analysis.load)."""
    os.makedirs(exp_dir, exist_ok=True)
    record = {"job_file": job.path, "name": job.name, "family": job.family, "preset": job.preset,
              "metric": job.metric, "mode": job.mode, "epochs": params.get("epochs"),
              "search_space": job.search_space, "manifests": manifests, "num_trials": job.num_trials,
              "scheduler": job.scheduler, "searcher": job.searcher.name}
    with open(os.path.join(exp_dir, JOB_RECORD), "w") as f:
        json.dump(record, f, indent=1, ensure_ascii=False)


def run_train(params: dict, res: ResourcesSpec, storage_path: str, name: str, address: str | None = None,
              num_cpus: int | None = None, metric: str | None = None, resume_from: str | None = None,
              progress: bool = True):
    """One training run (no search). ``resume_from`` continues a checkpoint at its next epoch.
    Checkpoints are ranked by ``metric`` (default: the run's select_metric or its family's)."""
    from asr_core.models import get_family

    check_and_cache(params, progress=progress)
    run = split_params(params, where="train params")
    family = get_family(run.family)
    mode = run.train.select_mode or family.default_mode
    metric = metric or run.train.select_metric or family.default_metric
    init_ray(address, num_cpus=num_cpus)
    check_fits(res, "--workers/--cpus-per-worker")
    trainer = make_trainer(params, res, metric=metric, mode=mode, storage_path=storage_path, name=name,
                           resume_from=resume_from)
    return trainer.fit()
