"""Run a job: resolve its data, check it, then Tuner(TorchTrainer) on a local or remote Ray."""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import tune_jobs  # noqa: F401  (sets RAY_TRAIN_V2_ENABLED before ray.train loads)
from analysis.record import JOB_RECORD, Baseline, ExperimentRecord, Resources
from asr_core import storage as store
from asr_core.data.manifest import normalize_spec, read_manifest, spec_is_remote
from asr_core.data.synth import default_cache_dir, ensure_corpus
from asr_core.errors import InputError
from asr_core.train.config import RunConfig, split_params
from asr_core.train.loop import train_loop_per_worker
from cluster.local import init_ray
from tune_jobs import full_storage
from tune_jobs.registry import make_loggers, make_searcher
from tune_jobs.spec import JobSpec, ResourcesSpec

log = logging.getLogger(__name__)
PUBLISHED = "PUBLISHED.json"


def resolve_data(job: JobSpec, cache_dir: str | None = None) -> dict[str, str]:
    """Manifest specs of the job's train/dev/test splits (synthesizing a demo corpus if needed),
    local paths made absolute."""
    d = job.data
    if d.corpus:
        return ensure_corpus(d.corpus, cache_dir=cache_dir, train=d.train, dev=d.dev, test=d.test, seed=d.seed,
                             test_hard=d.test_hard)
    out = {"train": normalize_spec(d.train_manifest), "dev": normalize_spec(d.dev_manifest)}
    if d.test_manifest:
        out["test"] = normalize_spec(d.test_manifest)
    if d.test_hard_manifest:
        out["test_hard"] = normalize_spec(d.test_hard_manifest)
    return out


def publish_corpus(manifests: dict[str, str], storage: str) -> dict[str, str]:
    """A synthesized demo corpus copied to the job's object storage (once: a second job finds it),
    so that no trial reads a path only the driver's node has.

    Why publish rather than have each node synthesize it again (it is deterministic): the nodes
    need only the features, which are extracted once from the published audio; synthesizing on
    every node would cost each of them minutes of CPU (eSpeak NG in a fresh process) for audio
    it never reads, and a node added later would pay it again."""
    local_root = Path(manifests["train"]).parent
    remote_root = store.join(storage, "corpora", local_root.name)
    marker = store.join(remote_root, PUBLISHED)
    if not store.is_file(marker):
        print(f"publishing corpus {local_root.name} to {remote_root}")
        store.upload_dir(local_root, remote_root)
        store.write_text(marker, json.dumps({"from": str(local_root), "time": time.time()}))  # last: complete
    return {split: store.join(remote_root, Path(m).name) for split, m in manifests.items()}


def feature_root(job: JobSpec) -> str:
    """Where the job's feature store lives: its object storage, or its storage path when the user
    declares it mounted on every node; "" = this machine's cache (everything local)."""
    if store.is_remote(job.storage_path) or job.storage_shared:
        return store.join(store.normalize(job.storage_path), "features")
    return ""


def base_params(job: JobSpec, manifests: dict[str, str], cache_dir: str) -> dict:
    """Every trial's run config before the search varies it; the job's metric and mode become the
    runs' selection pair (best epoch, early stopping, checkpoint retention)."""
    select_metric, select_mode = job.selection()
    p = {"family": job.family, **job.params, "select_metric": select_metric, "select_mode": select_mode,
         "train_manifest": manifests["train"],
         "dev_manifest": manifests["dev"], "cache_dir": cache_dir, "skip_bad": job.data.skip_bad}
    root = feature_root(job)
    if root:
        p["feature_store"] = root
    if job.preset is not None:
        p["preset"] = job.preset
    return p


def check_manifests(run: RunConfig) -> None:
    """Every row of both manifests, before Ray starts: local audio files opened, lengths against
    max_duration (what needs the audio of object storage is checked at extraction)."""
    from asr_core.train.data import duration_limit, within_limit

    limit = duration_limit(run.data, run.features, run.train.batch_bins, run.train.batch_size)
    for spec in (run.data.train_manifest, run.data.dev_manifest):
        m = read_manifest(spec, skip_bad=run.data.skip_bad)
        within_limit(m.utterances, limit, lambda u: m.where.get(u.id, m.path), run.data.skip_bad, [])


def check_cluster(job: JobSpec, manifests: dict[str, str]) -> None:
    """On a cluster of several nodes, every path the trials read must be readable on every node:
    a local storage path or manifest is refused unless the job declares it shared."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1 or job.storage_shared:
        return
    if not store.is_remote(job.storage_path):
        raise InputError(f"{job.path}: storage_path",
                         f"'{job.storage_path}' is a local path, and this Ray cluster has {len(nodes)} nodes that "
                         "do not share it: use object storage (storage_path: s3://bucket/prefix, or --storage), "
                         "or set 'storage_shared: true' if the same path is mounted on every node")
    for split, spec in manifests.items():
        if not spec_is_remote(spec) and not job.data.corpus:
            raise InputError(f"{job.path}: data.{split}_manifest",
                             f"'{spec}' is a local path, and this Ray cluster has {len(nodes)} nodes: put the corpus "
                             "in object storage (s3://...), or set 'storage_shared: true' if it is mounted on every "
                             "node")


def check_and_cache(run: RunConfig, progress: bool = True) -> tuple[dict, list[str]]:
    """Everything that can fail on bad input fails here, before any trial starts: manifests,
    tokenizer coverage of the dev set, utterance lengths, and the feature store (built by Ray tasks
    when Ray is up). Returns the run's parameters with the store entries the trials read, and the
    rows ``skip_bad`` skipped ("file:line: why")."""
    from asr_core.models import get_family
    from asr_core.train.data import check_data, duration_limit

    params = run.given
    limit = duration_limit(run.data, run.features, run.train.batch_bins, run.train.batch_size)
    checked = check_data(run.data, run.features, progress=progress, max_duration=limit, augment=run.augment)
    try:  # a model that cannot be built for this data fails here, not in every trial
        get_family(run.family).build(run.model, checked.tokenizer.vocab_size, run.features.n_mels)
    except ValueError as e:
        raise InputError("job params", str(e)) from None
    if checked.skipped:
        from asr_core.data.manifest import group_skipped

        print("\n".join(group_skipped(checked.skipped)))
    entries = {"train_features": checked.entries["train"], "dev_features": checked.entries["dev"]}
    if checked.aug_entries:
        entries["train_aug_features"] = checked.aug_entries
    return {**params, **entries}, checked.skipped


def checkpoint_config(keep: int, metric: str, mode: str):
    """A run keeps ``keep`` checkpoints: its ``keep - 1`` best by the selection metric (what test
    evaluation, ``evaluate`` and ``init_from: best`` read) and its latest, which Ray keeps
    whatever its score (a paused, resumed or exploited trial continues from it). Tune's RunConfig
    needs it too: under a Tuner the trainer's own RunConfig is replaced, and Tune's default keeps
    every checkpoint (the demo's finished trial kept 18, 246 MB)."""
    from ray.train import CheckpointConfig

    return CheckpointConfig(num_to_keep=keep - 1, checkpoint_score_attribute=metric, checkpoint_score_order=mode)


def make_trainer(params: dict, res: ResourcesSpec, *, metric: str, mode: str, storage_path: str, name: str,
                 max_failures: int = 0, resume_from: str | None = None, keep_checkpoints: int = 2,
                 verbose: int = 1, callbacks: list | None = None):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    scaling = ScalingConfig(
        num_workers=res.num_workers, use_gpu=res.gpus_per_worker > 0,
        resources_per_worker={"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})},
        # The trainer actor only coordinates; reserving a CPU for it would leave a 2-CPU node
        # unable to place 2 single-CPU workers.
        trainer_resources={"CPU": 0}, placement_strategy=res.placement_strategy,
    )
    run_config = RunConfig(
        name=name, storage_path=store.normalize(storage_path),
        checkpoint_config=checkpoint_config(keep_checkpoints, metric, mode),
        failure_config=FailureConfig(max_failures=max_failures),
        verbose=verbose, callbacks=callbacks,  # (under a Tuner, Tune's RunConfig sets both)
    )
    resume = None
    if resume_from:
        from ray.train import Checkpoint

        resume = Checkpoint(resume_from) if store.is_remote(resume_from) else Checkpoint.from_directory(resume_from)
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


def can_resume(exp_uri: str) -> bool:
    from ray.tune import Tuner

    return store.exists(exp_uri) and Tuner.can_restore(exp_uri)


def completed_search(exp_uri: str) -> str | None:
    """What says the search at ``exp_uri`` is over (for ``--resume``), or None when a resume has
    work to do. Over: its record holds the outcome of a search that ended (not an interrupt: that
    outcome has a ``status``), and Tune's newest state lists every trial TERMINATED (an errored
    trial is one ``--resume`` retries). A driver killed before it wrote the outcome leaves none,
    so such an experiment is resumed. Read for a local experiment only: Tune's state file is
    found by a folder listing (``analysis.load.tune_state_file``)."""
    from analysis.load import tune_statuses

    if store.is_remote(exp_uri):
        return None
    text = store.read_text(store.join(exp_uri, JOB_RECORD))
    try:
        outcome = json.loads(text).get("outcome") if text else None
    except (json.JSONDecodeError, AttributeError):
        return None
    statuses = tune_statuses(Path(exp_uri))
    if not outcome or "status" in outcome or not statuses or set(statuses.values()) != {"TERMINATED"}:
        return None
    wall = outcome.get("search wall time")
    return f"the search is complete ({len(statuses)} trials terminated{f', in {wall}' if wall else ''})"


def run_tune(job: JobSpec, address: str | None = None, num_cpus: int | None = None, resume: bool = False,
             cache_dir: str | None = None, progress: bool = True, phase: dict | None = None,
             ray_verbose: bool = False):
    """Run one job (or one phase of a study). ``resume`` continues the job's interrupted
    experiment, searcher state included; without it an existing experiment of the same name is
    left alone and the new one gets a timestamped name. ``phase`` (from tune_jobs.study) carries
    the values chosen by earlier phases, with their provenance, and a checkpoint to start from.
    ``progress`` prints the compact view of the trials (``tune_jobs.progress``), or with
    ``ray_verbose`` Ray's own status tables."""
    from ray.tune import Tuner

    phase = phase or {}
    full_storage.SEEN.clear()
    run, manifests, params, skipped, storage = _prepare(job, cache_dir or str(default_cache_dir()), phase,
                                                        address, num_cpus, progress)
    name, exp_uri = experiment_name(job, storage, resume)
    trainer = make_trainer(params, job.resources, metric=params["select_metric"], mode=params["select_mode"],
                           storage_path=storage,
                           name=name, max_failures=job.max_failures, resume_from=phase.get("init_checkpoint"),
                           keep_checkpoints=job.checkpoints_kept())
    if resume:
        tuner = Tuner.restore(exp_uri, trainable=trainer, resume_unfinished=True, resume_errored=True)
        # the interrupt's outcome no longer holds: the live view would show this run's trials as
        # interrupted (the search's end writes its own outcome)
        save_outcome(exp_uri, {})
    else:
        tuner = _new_tuner(job, trainer, run, name, storage, exp_uri, progress, ray_verbose)
        write_record(exp_uri, job, manifests, params, phase, skipped)
    # our view replaces Ray's tables and its banner (whose TensorBoard path is Ray's staging
    # folder, not the experiment); with Ray's legacy output and verbose 0 Ray prints neither.
    # Set for the search only: the process's environment is the caller's again afterwards
    with ray_output(progress, ray_verbose):
        try:
            results = tuner.fit()
        except Exception:  # a full storage: Ray's results cannot be read back from the errors' empty files
            full_storage.raise_if_seen()
            raise
    full_storage.raise_if_seen()
    return results, exp_uri, manifests


def ray_output(progress: bool, ray_verbose: bool):
    """Ray's legacy output (``RAY_AIR_NEW_OUTPUT=0``) for a run that prints our own progress: with
    it and verbose 0 Ray prints no status table and no banner (whose paths are Ray's staging folders)."""
    return _environ(RAY_AIR_NEW_OUTPUT="0" if progress and not ray_verbose else None)


@contextlib.contextmanager
def _environ(**values):
    """``os.environ`` with ``values`` set (None: left as it is), restored on the way out."""
    import os

    before = {k: os.environ.get(k) for k, v in values.items() if v is not None}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _prepare(job: JobSpec, cache_dir: str, phase: dict, address, num_cpus, progress: bool):
    """Before any trial: the data resolved and checked (bad rows fail before Ray starts), Ray
    up, the cluster able to hold a trial, the features extracted. Returns (run config,
    manifests, base params, skipped rows, storage)."""
    store.check_writable(store.normalize(job.storage_path), f"{job.path} (storage_path)")
    manifests = resolve_data(job, cache_dir)
    extra = {"finetune": True} if phase.get("init_checkpoint") else {}
    run = split_params({**base_params(job, manifests, cache_dir), **extra}, where=job.path)
    check_manifests(run)
    init_ray(address, num_cpus=num_cpus)
    check_cluster(job, manifests)
    storage = store.normalize(job.storage_path)
    if job.data.corpus and store.is_remote(storage):  # the corpus moves: its manifests are new
        manifests = publish_corpus(manifests, storage)
        run = split_params({**base_params(job, manifests, cache_dir), **extra}, where=job.path)
    params, skipped = check_and_cache(run, progress=progress)  # features extracted by Ray tasks on the cluster
    check_fits(job.resources, f"{job.path} (resources)")
    return run, manifests, params, skipped, storage


def experiment_name(job: JobSpec, storage: str, resume: bool) -> tuple[str, str]:
    """The experiment's name and URI: the job's, or, when one of that name exists and this is
    no resume, the job's with a timestamp (the existing one is left alone)."""
    name = job.name
    exp_uri = store.join(storage, name)
    if resume and not can_resume(exp_uri):
        raise InputError(exp_uri, "nothing to resume here (no Tune experiment state)")
    if not resume and store.exists(exp_uri) and can_resume(exp_uri):
        name = f"{job.name}_{time.strftime('%Y%m%d-%H%M%S')}"
        print(f"experiment {exp_uri} exists (resume it with --resume); this run is {name}")
        exp_uri = store.join(storage, name)
    return name, exp_uri


def _new_tuner(job: JobSpec, trainer, run, name: str, storage: str, exp_uri: str, progress: bool,
               ray_verbose: bool):
    """A new search's Tuner: its searcher and scheduler (the job's), loggers and live view."""
    from ray import tune
    from ray.tune import Tuner

    from tune_jobs.full_storage import StopWhenStorageIsFull
    from tune_jobs.restarts import RestartFromIntact
    from tune_jobs.progress import CompactProgress
    from tune_jobs.trial_logs import KeepTrialLogs

    searcher, space = _pbt_variants(job) if job.scheduler.name == "pbt" else (None, {})
    points = job.first_points()
    # the searcher proposes points[0] first: a baseline (JobSpec.baseline) a pausing scheduler
    # can run to the end for an equal-budget comparison
    scheduler = job.scheduler.make(job.metric, job.mode, epochs=run.train.epochs,
                                   max_concurrent=job.max_concurrent,
                                   baseline=bool(points) and job.baseline()[0] == points[0])
    trials = {n: {k: v for k, v in p.items() if v is not None} for n, p in job.trials.items()}
    searcher = searcher or make_searcher(job.searcher.name, metric=job.metric, mode=job.mode, seed=job.searcher.seed,
                                         space=job.tune_space(), grid=job.grid_values(), trials=trials, points=points,
                                         # the run config with presets and family defaults (constraints read it)
                                         constraints=job.constraints, fixed=run.params,
                                         max_concurrent=job.max_concurrent, repeats=job.repeats, scheduler=scheduler)
    # RestartFromIntact first: KeepTrialLogs and Tune's loggers then see the checkpoint the trial restarts from
    callbacks = [RestartFromIntact(), KeepTrialLogs(), StopWhenStorageIsFull(),
                 *make_loggers(job.loggers, name, None if store.is_remote(exp_uri) else exp_uri)]
    if progress and not ray_verbose:
        callbacks.append(CompactProgress(name, job.metric, job.mode, job.num_trials, job.max_concurrent,
                                         job.tuned_keys(), run.train.epochs))
    return Tuner(
        trainer,
        param_space=space,
        tune_config=tune.TuneConfig(num_samples=job.num_trials, search_alg=searcher, scheduler=scheduler,
                                    max_concurrent_trials=job.max_concurrent),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=1 if progress and ray_verbose else 0,
                                  failure_config=tune.FailureConfig(max_failures=job.max_failures),
                                  checkpoint_config=checkpoint_config(job.checkpoints_kept(), *job.selection()),
                                  callbacks=callbacks,
                                  # the experiment state (and so what a resumed driver finds) is at
                                  # most a few seconds old (default 300)
                                  sync_config=tune.SyncConfig(sync_period=5 if not store.is_remote(storage) else 30)),
    )


def _pbt_variants(job: JobSpec):
    """Tune's PBT takes only its own variant generator; every mutated key must be in each trial's
    config for PBT to perturb it (Ray fills in only a missing top-level key): the job's own
    value, else a sample of the mutation. Returns (searcher, param space)."""
    from ray.tune.search import BasicVariantGenerator

    searcher = BasicVariantGenerator(points_to_evaluate=[{"train_loop_config": p} for p in job.points()] or None,
                                     random_state=job.searcher.seed, max_concurrent=job.max_concurrent)
    space = {"train_loop_config": {**{k: job.params.get(k, dom) for k, dom in job.scheduler.mutations.domains.items()},
                                   **job.tune_space()}}
    return searcher, space


def save_outcome(exp_uri: str, outcome: dict) -> None:
    """What ``speechtune tune`` learned that Tune's files do not hold (test figures, the best
    checkpoint, wall time, an interrupt), kept in the experiment's record: every report of the
    experiment, written again or read from object storage, shows it."""
    where = store.join(exp_uri, JOB_RECORD)
    text = store.read_text(where)
    record = ExperimentRecord.from_dict(json.loads(text), where) if text else ExperimentRecord()
    store.write_text(where, record.with_outcome(outcome).to_json())



def write_record(exp_uri: str, job: JobSpec, manifests: dict, params: dict, phase: dict | None = None,
                 skipped: list[str] | None = None) -> None:
    """What the analysis needs and cannot infer from Tune's files (read by analysis.load), and
    the job itself, so that ``speechtune tune --resume EXP`` needs nothing else."""
    res = job.resources
    base_params, base_source = job.baseline()
    record = ExperimentRecord(
        job_file=job.path, name=job.name, family=job.family, preset=job.preset, profile=job.profile,
        metric=job.metric, mode=job.mode, epochs=params.get("epochs"), search_space=job.search_space,
        trials=job.trials, tuned=tuple(job.tuned_keys()), constraints=tuple(job.constraints), require=job.require,
        manifests=manifests, num_trials=job.num_trials, max_concurrent=job.max_concurrent,
        scheduler=job.scheduler.as_dict(), searcher=job.searcher.name,
        resources=Resources(res.num_workers, res.num_workers * res.cpus_per_worker,
                            res.num_workers * res.gpus_per_worker),
        params=params,  # every trial's base config; a trial's params.json holds what it varied
        phase=phase or {}, job=job.raw, skipped=tuple(skipped or ()), loggers=tuple(job.loggers),
        # what tuning is judged against (analysis.confidence compares the best with it)
        baseline=Baseline(base_params, base_source or ""))
    store.write_text(store.join(exp_uri, JOB_RECORD), record.to_json())


def run_train(params: dict, res: ResourcesSpec, storage_path: str, name: str, address: str | None = None,
              num_cpus: int | None = None, resume_from: str | None = None,
              progress: bool = True, ray_verbose: bool = False):
    """One training run (no search). ``resume_from`` continues a checkpoint at its next epoch.
    ``progress`` prints a line per epoch (``tune_jobs.progress.EpochLines``), or with
    ``ray_verbose`` Ray's own tables.
    Checkpoints are kept by the run's selection pair (``select_metric``, default the family's; its
    mode from the metric registry), the same pair the loop uses for the best epoch."""
    from asr_core.models import get_family

    run = split_params(params, where="train params")
    family = get_family(run.family)
    metric = run.train.select_metric or family.default_metric
    mode = run.train.select_mode or family.metric(metric).mode
    run = split_params({**params, "select_metric": metric, "select_mode": mode}, where="train params")
    check_manifests(run)
    init_ray(address, num_cpus=num_cpus)
    params, _ = check_and_cache(run, progress=progress)
    check_fits(res, "--workers/--cpus-per-worker")
    from tune_jobs.progress import EpochLines

    ours = progress and not ray_verbose
    trainer = make_trainer(params, res, metric=metric, mode=mode, storage_path=storage_path, name=name,
                           resume_from=resume_from, verbose=1 if progress and ray_verbose else 0,
                           callbacks=[EpochLines(run.train.epochs)] if ours else None)
    with ray_output(progress, ray_verbose):
        return trainer.fit()
