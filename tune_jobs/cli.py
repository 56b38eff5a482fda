"""``speechtune``: tune, train, evaluate, report."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import tune_jobs  # noqa: F401  (Train/Tune integration env)
from analysis.record import JOB_RECORD
from asr_core.errors import InputError
from cluster.head import ClusterError


# keys a run takes from its own arguments, not from --set (``--set family=seq2seq`` trained
# seq2seq under the name train_crnn_ctc)
_RUN_ARGS = {"family": "the FAMILY argument", "preset": "--preset", "train_manifest": "--train-manifest",
             "dev_manifest": "--dev-manifest"}


def _parse_sets(items: list[str]) -> dict:
    """``--set key=value`` items, each value read as a job file's values are (``lr=1e-3`` a number)."""
    from tune_jobs.yamlio import load_value

    out = {}
    for item in items:
        if "=" not in item:
            raise InputError("--set", f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip()
        if k in _RUN_ARGS:
            raise InputError(f"--set {item}", f"'{k}' names the run itself: give it as {_RUN_ARGS[k]}", key=k)
        out[k] = load_value(v, f"--set {item}")
    return out


def load_for_tune(a):
    """The job to run: a job file (with ``--profile``), or the job recorded in ``--resume EXP``."""
    import json

    from asr_core import storage as store
    from tune_jobs.spec import job_from_dict, load_job
    from tune_jobs.yamlio import Locator

    if a.job and a.job.startswith("env:"):  # a job sent by `speechtune submit` (cluster.jobs)
        name = a.job[4:]
        if name not in os.environ:
            raise InputError(a.job, f"environment variable {name} is not set (jobs sent by `speechtune submit` "
                                    "carry it)")
        _check_sent_requirements()
        sent = json.loads(os.environ[name])
        job = job_from_dict(sent["job"], Locator(sent["path"], {}), sent["path"])
        job.profile = sent.get("profile", "")
    elif a.job:
        job = load_job(a.job, profile=a.profile)
    elif isinstance(a.resume, str):
        exp = a.resume.rstrip("/")
        text = store.read_text(store.join(exp, JOB_RECORD)) or store.read_text(store.join(exp, "study.json"))
        if text is None:
            raise InputError(exp, "not an experiment or study directory of speechtune (no speechtune_job.json "
                                  "or study.json)")
        where = store.join(exp, JOB_RECORD if store.exists(store.join(exp, JOB_RECORD)) else "study.json")
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(where, f"line {e.lineno}: not JSON ({e.msg}); the record cannot say which job to "
                                    "resume") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("job"), dict):
            raise InputError(where, "the record holds no job (no 'job' mapping): it was not written by "
                                    "`speechtune tune`, or was cut short; run the job file again instead of --resume")
        job = job_from_dict(rec["job"], Locator(exp, {}), exp)
        job.profile = rec.get("profile", "")
        if "study" not in rec and not rec.get("phase"):  # a single job: its experiment is EXP itself
            job.storage_path, job.name = exp.rsplit("/", 1) if "/" in exp else (".", exp)
        elif rec.get("phase"):
            raise InputError(exp, "this is one phase of a study: resume the study directory (its parent) instead")
    else:
        raise InputError("speechtune tune", "give a job file, or --resume EXPERIMENT_DIR")
    if a.skip_bad:
        job.data.skip_bad = True
    if a.storage:
        job.storage_path = a.storage
    # the command line's resources through the same checks as the job file's
    over = {k: v for k, v in (("num_workers", getattr(a, "workers", None)),
                              ("gpus_per_worker", getattr(a, "gpus_per_worker", None))) if v is not None}
    if over:
        import dataclasses

        from asr_core.config import from_dict
        from tune_jobs.spec import ResourcesSpec

        job.resources = from_dict(ResourcesSpec, {**dataclasses.asdict(job.resources), **over},
                                  where="speechtune tune --workers/--gpus-per-worker")
    return job


def _check_sent_requirements() -> None:
    """A job sent by `speechtune submit` carries the submitter's pinned requirements: checked
    before anything heavy is imported, so a mismatched cluster fails at once and says why."""
    from cluster.jobs import REQ_ENV, requirement_mismatches

    bad = requirement_mismatches(os.environ.get(REQ_ENV, "").split())
    if bad:
        raise InputError(REQ_ENV, "this cluster's Python environment differs from the submitter's: "
                                  + "; ".join(bad) + " (build the cluster from docker/, or submit with --pip)")


def cmd_tune(a) -> int:
    job = load_for_tune(a)  # first: a submitted job's requirements are checked before the imports below
    from tune_jobs import workflow

    if job.phases:
        return workflow.tune_study(job, address=a.address, num_cpus=a.num_cpus, report_dir=a.report_dir,
                                   started=a.started)
    return workflow.tune_job(job, address=a.address, num_cpus=a.num_cpus, resume=bool(a.resume),
                             report_dir=a.report_dir, ray_verbose=a.ray_verbose, started=a.started)


def cmd_train(a) -> int:
    from asr_core.config import from_dict
    from asr_core.data.synth import default_cache_dir, ensure_corpus
    from tune_jobs.runner import run_train
    from tune_jobs.spec import ResourcesSpec

    # checked as a job file's resources are, before any data is made
    res = from_dict(ResourcesSpec, {"num_workers": a.workers, "cpus_per_worker": a.cpus_per_worker,
                                    "gpus_per_worker": a.gpus_per_worker},
                    where="speechtune train --workers/--cpus-per-worker/--gpus-per-worker")
    params = {"family": a.family, **_parse_sets(a.set or [])}
    if a.preset:
        params["preset"] = a.preset
    if a.train_manifest:
        from asr_core.data.manifest import normalize_spec

        params.update(train_manifest=normalize_spec(a.train_manifest), dev_manifest=normalize_spec(a.dev_manifest))
    else:
        m = ensure_corpus(a.corpus)
        params.update(train_manifest=m["train"], dev_manifest=m["dev"])
    params.setdefault("cache_dir", str(default_cache_dir()))
    from asr_core import storage as store

    if store.is_remote(a.storage):  # nodes share nothing but the storage: the features go there too
        params.setdefault("feature_store", store.join(a.storage, "features"))
    if a.skip_bad:
        params["skip_bad"] = True
    result = run_train(params, res, a.storage, a.name or f"train_{a.family}", address=a.address,
                       num_cpus=a.num_cpus, resume_from=a.resume_from, ray_verbose=a.ray_verbose)
    df = result.metrics_dataframe
    shown = ("epoch", "train_loss", "val_loss", "val_cer", "val_wer", "val_seq_acc", "val_lid_acc", "val_mel_loss",
             "val_stop_acc", "utts_per_s")
    cols = [c for c in shown if c in df and df[c].notna().any()]
    print(df[cols].to_string(index=False))
    print(f"checkpoint: {result.checkpoint.path if result.checkpoint else 'none'}")
    return 0


def _positive_seconds(text: str) -> float:
    import argparse
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is no number of seconds") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return v


def cmd_evaluate(a) -> int:
    from analysis.load import best_checkpoint
    from asr_core.evaluate import evaluate

    target = Path(a.target)
    if not (target / "meta.json").is_file():
        require_experiment(str(target))  # a folder that is no experiment: exit 2, not a traceback
    ckpt = target if (target / "meta.json").is_file() else best_checkpoint(target)
    overrides = {k: v for k, v in (("decoder", a.decoder), ("beam_size", a.beam_size), ("lexicon", a.lexicon),
                                   ("kenlm", a.kenlm), ("decode_ctc_weight", a.ctc_weight)) if v is not None}
    ev = evaluate(str(ckpt), a.manifest, skip_bad=a.skip_bad, per_utterance=bool(a.out), max_duration=a.max_duration,
                  **overrides)
    _print_skipped(ev["skipped_rows"])
    skipped = f", skipped {ev['skipped']} bad row(s)" if ev["skipped"] else ""
    print(f"checkpoint {ckpt} (epoch {ev['epoch']}) on {a.manifest}: {ev['utterances']} utterances{skipped}")
    if ev["decoding"]:
        print("decoding: " + ", ".join(f"{k}={v!r}" for k, v in ev["decoding"].items())
              + (" (overridden: " + ", ".join(sorted(overrides)) + ")" if overrides else " (the checkpoint's own)"))
    if ev["cer"] == ev["cer"]:
        print(f"CER {100 * ev['cer']:.2f}%  WER {100 * ev['wer']:.2f}%")
    print("  ".join(f"{k} {v:.4g}" for k, v in ev["metrics"].items() if v == v))
    if a.out:
        if "rows" not in ev:
            print("error: --out needs an ASR family (this checkpoint decodes no text)", file=sys.stderr)
            return 2
        with open(a.out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in ev["rows"])
        print(f"per-utterance hypotheses: {a.out} ({len(ev['rows'])} rows)")
    return 0


def _check_import_target(out: Path, src: str, force: bool) -> None:
    """``data import``'s OUT, before anything is read: never its own source, never a folder, and
    an existing file only with ``--force``."""
    from asr_core import storage as store

    if not store.is_remote(src):
        if out.resolve() == Path(src).resolve():
            raise InputError(str(out), f"OUT is the source itself ({src}): writing it would destroy what is read")
    if out.is_dir():
        raise InputError(str(out), "OUT is a folder: give the JSONL manifest to write (e.g. "
                                   f"{out / 'train.jsonl'})")
    if out.exists() and not force:
        raise InputError(str(out), "exists: give another OUT, or --force to replace it")


def cmd_data(a) -> int:
    """``data import FORMAT SRC OUT.jsonl`` and ``data stats MANIFEST``."""
    from asr_core.data.manifest import manifest_stats, read_manifest, write_manifest

    options = {k: v for k, v in (("audio_column", a.audio_column), ("text_column", a.text_column),
                                 ("split", a.split)) if v}
    if a.action == "import":
        from asr_core.data.importers import FORMATS

        if not (a.format and a.src and a.out):
            print("error: data import FORMAT SRC OUT.jsonl", file=sys.stderr)
            return 2
        if a.format not in FORMATS or a.format == "jsonl":
            print(f"error: unknown format {a.format!r} (known: {', '.join(f for f in FORMATS if f != 'jsonl')})",
                  file=sys.stderr)
            return 2
        out = Path(a.out)
        _check_import_target(out, a.src, a.force)
        m = read_manifest(f"{a.format}:{a.src}", skip_bad=a.skip_bad, audio_dir=str(out.parent / f"{out.stem}_audio"),
                          allow_pipes=a.allow_pipes, **options)
        write_manifest(out, m.utterances)
        print(f"{out}: {len(m)} utterances from {a.format}:{a.src}")
        _print_skipped(m.skipped)
        return 0
    spec = a.format  # `data stats MANIFEST`: the first positional
    if not spec or a.src:
        print("error: data stats MANIFEST (a JSONL manifest or FORMAT:SOURCE)", file=sys.stderr)
        return 2
    m = read_manifest(spec, skip_bad=a.skip_bad, **options)
    st = manifest_stats(m)
    pct = st["duration_percentiles"]
    print(f"{spec}: {st['utterances']} utterances, {st['hours']:.3f} hours ({st['seconds']:.1f} s)")
    print(f"duration (s): min {pct[0]:.2f}  p5 {pct[5]:.2f}  median {pct[50]:.2f}  p95 {pct[95]:.2f}  "
          f"max {pct[100]:.2f}  mean {st['mean_duration']:.2f}")
    print("languages: " + ", ".join(f"{k} {v}" for k, v in st["languages"].items()))
    print(f"speakers: {st['speakers']}")
    print(f"characters ({len(st['characters'])}): {st['characters']!r}")
    _print_skipped(m.skipped)
    return 0


def _print_skipped(skipped: list[str]) -> None:
    from asr_core.data.manifest import group_skipped

    if skipped:
        print("\n".join(group_skipped(skipped)))


def cmd_describe(a) -> int:
    import dataclasses

    from asr_core.models import count_parameters, get_family
    from asr_core.train.config import split_params

    params = {"family": a.family, "train_manifest": "-", "dev_manifest": "-", **_parse_sets(a.set or [])}
    if a.preset:
        params["preset"] = a.preset
    run = split_params(params, where="describe")  # an unknown family or preset is an InputError
    family = get_family(run.family)
    vocab, feat_dim = family.dims(run.model, a.vocab_size, a.feat_dim or run.features.n_mels)
    model = family.build(run.model, vocab, feat_dim)
    print(f"family: {family.name}" + (f"  preset: {a.preset}" if a.preset else ""))
    print(f"ranks by: {family.default_metric} ({family.default_mode})")
    preset_keys = set(family.presets.get(a.preset, {})) if a.preset else set()
    for title, obj in (("model", run.model), ("train", run.train), ("features", run.features), ("augment", run.augment)):
        print(f"{title}:")
        for f in dataclasses.fields(obj):
            mark = "  # preset" if f.name in preset_keys else ""
            print(f"  {f.name}: {getattr(obj, f.name)!r}{mark}")
    print(f"parameters: {count_parameters(model):,}  ({feat_dim}-dim input, {vocab} output tokens)")
    return 0


def require_experiment(path: str) -> None:
    """``path`` is an experiment or study of speechtune or Ray Tune; otherwise an InputError, and
    nothing is written into it."""
    from asr_core import storage as store

    names = {p.split("/")[0] for p in (store.files_under(path) if store.is_remote(path) else
                                       (os.listdir(path) if os.path.isdir(path) else []))}
    if not ({"speechtune_job.json", "study.json"} & names or any(n.startswith("experiment_state") for n in names)):
        raise InputError(path, "not an experiment or study directory (no speechtune_job.json, study.json or Ray "
                               "Tune experiment_state-*.json here); nothing was written")


def cmd_report(a) -> int:
    from analysis.load import MetricNotFound
    from analysis.report import write_report, write_study_report

    require_experiment(a.exp_dir)
    if a.compare:
        require_experiment(a.compare)  # before any table or plot is written into --out
    try:
        exps = _experiments(a.exp_dir)
        if exps is not None:
            if a.compare:
                print("error: --compare takes two experiments, not a study", file=sys.stderr)
                return 2
            print(f"study report: {write_study_report(a.exp_dir, a.out)}")
        else:
            print(f"report: {write_report(a.exp_dir, a.out, compare=a.compare)}")
            exps = [a.exp_dir]
    except (MetricNotFound, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.check_ray:
        from tune_jobs.workflow import check_with_ray

        return 0 if all([check_with_ray(e) for e in exps]) else 1
    return 0


def _experiments(exp_dir: str) -> list[str] | None:
    """The finished phases' experiments of a study directory; None when it is not a study."""
    from asr_core import storage as store

    text = store.read_text(store.join(exp_dir, "study.json"))
    if text is None:
        return None
    return [ph["exp"] for ph in json.loads(text)["phases"].values() if ph.get("status") == "done"]


def cmd_watch(a) -> int:
    from analysis.watch import watch

    require_experiment(a.exp_dir)
    return watch(a.exp_dir, once=a.once, interval=a.interval)


def cmd_replay(a) -> int:
    """Replay a finished search's learning curves through other schedulers and searchers."""
    import logging

    from analysis.replay import Curves, format_table
    from tune_jobs.yamlio import load_value
    from tune_jobs.replay import replay_table

    logging.getLogger("ray.tune.search.hyperopt").setLevel(logging.ERROR)
    try:
        curves = Curves.from_csv(a.exp) if str(a.exp).endswith(".csv") else Curves.from_experiment(a.exp)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {a.exp}: {e}", file=sys.stderr)
        return 2
    methods = [(s, q) for s in a.scheduler.split(",") for q in a.searcher.split(",")]
    for s, q in methods:
        from tune_jobs.replay import SCHEDULER_OPTIONS
        from tune_jobs.registry import SEARCHERS

        if s not in SCHEDULER_OPTIONS or q not in SEARCHERS:
            print(f"error: cannot replay {s} with {q}: schedulers {', '.join(SCHEDULER_OPTIONS)}; "
                  f"searchers {', '.join(SEARCHERS)}", file=sys.stderr)
            return 2
    options = {}
    for kv in a.option or []:
        k, _, v = kv.partition("=")
        options[k] = load_value(v, f"--option {kv}")
    rows = replay_table(curves, methods, repeats=a.repeats, slots=a.slots, max_trials=a.max_trials, options=options)
    print(format_table(curves, rows))
    return 0


def cmd_check(a) -> int:
    """Every experiment of a study, or the one experiment, against Ray's ExperimentAnalysis."""
    require_experiment(a.exp_dir)
    from tune_jobs.workflow import check_with_ray

    exps = _experiments(a.exp_dir) or [a.exp_dir]
    return 0 if all([check_with_ray(e) for e in exps]) else 1


def cmd_bars(a) -> int:
    """The closing table: each job's bars (``bars`` in its job file) against its experiment."""
    from analysis.bars import check, closing_row, format_closing_table, job_figures
    from asr_core import storage as store
    from tune_jobs.spec import load_job

    rows = []
    for path in a.jobs:
        job = load_job(path, profile=a.profile)
        if not job.bars:
            raise InputError(path, f"the job declares no bars{' in profile ' + a.profile if a.profile else ''} "
                                   f"(`bars:` maps a figure to \"OP VALUE\"; analysis.bars)")
        root = store.local_copy(store.join(store.normalize(job.storage_path), job.name))
        phases = [ph["name"] for ph in job.phases]
        figures = job_figures(root, phases)
        rows.append(closing_row(job.name, check(job.bars, figures, phases[-1] if phases else "")))
    print(format_closing_table(rows))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0 if all(r["met"] == "met" for r in rows) else 1


def cmd_cluster(a) -> int:
    from cluster import head

    if a.action == "up":
        st = head.up(num_cpus=a.num_cpus, num_gpus=a.num_gpus, dashboard_port=a.dashboard_port, auth=not a.no_auth)
        print(f"Ray head up: dashboard and Jobs API {st.dashboard_url} (127.0.0.1 only), GCS {st.gcs_address}")
        print(f"token authentication: {'on, token in ' + st.token_file if st.token_file else 'off (--no-auth)'}")
        print("submit with `speechtune submit JOB.yaml`; stop with `speechtune cluster down`")
        return 0
    st = head.read_state()
    if a.action == "down":
        st = head.down()
        print("no speechtune cluster is running" if st is None else f"stopped the cluster at {st.dashboard_url}")
        return 0
    if st is None or not head.is_running(st):
        print("no speechtune cluster is running here (`speechtune cluster up` starts one)")
        return 1
    s = head.status(st)
    print(f"dashboard: {s['dashboard']}   GCS: {s['gcs']}   head pid: {s['pid']}")
    for n in s["nodes"]:
        res = "  ".join(f"{k} {v:g}" if k in ("CPU", "GPU") else f"{k} {v / 2**30:.1f} GiB"
                        for k, v in n["resources"].items())
        print(f"node {n['node_id']} {n['ip']} {'head' if n['head'] else 'worker'} {n['state']}: {res}")
    running = [j for j in s["jobs"] if j["status"] in ("PENDING", "RUNNING")]
    print(f"jobs: {len(s['jobs'])} ({len(running)} running)")
    for j in running:
        print(f"  {j['id']} {j['status']}  {j['entrypoint']}")
    return 0


def cmd_submit(a) -> int:
    from cluster.jobs import submit
    from tune_jobs.spec import load_job

    from asr_core import storage as store
    from tune_jobs.runner import experiment_name

    job = load_job(a.job, profile=a.profile)  # every error names its file and line before anything is sent
    # the name the driver will use, chosen here where the storage can be seen (object storage, or
    # a path this machine shares), so that the path printed is the experiment's; else the driver's
    name, _ = experiment_name(job, store.normalize(job.storage_path), resume=False)
    sid, address, exp = submit(job, address=a.address, pip=a.pip, report_dir=a.report_dir,
                               submission_id=a.submission_id, name=name)
    print(f"submitted {sid} to {address}; experiment: {exp}")
    print(f"follow it: speechtune jobs logs {sid} --follow")
    if a.wait:
        return _follow(sid, a.address, exp)
    return 0


def _follow(sid: str, address: str | None, exp: str | None = None) -> int:
    """Stream a job's output to its end; then its status, Ray's reason when it failed, and the
    experiment its driver wrote (from its output). Exit 0 when it succeeded, else 1."""
    import re

    from cluster.jobs import failure_reason, logs

    seen: list[str] = []

    def out(text, **kw):
        seen.append(text)
        print(text, **kw)

    status = logs(sid, address=address, follow=True, out=out)
    print(f"job {sid}: {status}")
    if status != "SUCCEEDED":
        reason = failure_reason(sid, address)
        print(f"reason (Ray): {reason}" if reason else "reason: Ray gave none (speechtune jobs logs " + sid + ")",
              file=sys.stderr)
    written = re.findall(r"experiment: (\S+)", "".join(seen))
    if written or exp:
        print(f"experiment: {written[-1] if written else exp}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_jobs(a) -> int:
    from cluster import jobs

    if a.action == "list":
        for j in sorted(jobs.list_jobs(a.address), key=lambda j: j.start_time or 0):
            start = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((j.start_time or 0) / 1000))
            print(f"{j.submission_id}  {j.status.value:9}  {start}  {j.entrypoint}")
        return 0
    if not a.id:
        print(f"error: jobs {a.action} needs a job ID", file=sys.stderr)
        return 2
    if a.action == "logs":
        if a.follow:
            _follow(a.id, a.address)
            return 0
        jobs.logs(a.id, address=a.address)
        return 0
    print(f"stop requested for {a.id}" if jobs.stop(a.id, a.address) else f"{a.id} was not running")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechtune", description="Tune speech models on Ray.")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("tune", help="run a tuning job file (a search, or a staged study)")
    t.add_argument("job", nargs="?", help="job file (tune_jobs/jobs/*.yaml)")
    t.add_argument("--profile", help="one of the job's profiles (cpu, smoke, ...)")
    t.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    t.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray")
    t.add_argument("--workers", type=int, help="data-parallel workers per trial (overrides resources.num_workers)")
    t.add_argument("--gpus-per-worker", type=float,
                   help="GPUs each worker holds (overrides resources.gpus_per_worker; 1 on a GPU cluster)")
    t.add_argument("--resume", nargs="?", const=True, metavar="EXP",
                   help="continue an interrupted experiment (searcher state included): EXP, or the job's own")
    t.add_argument("--skip-bad", action="store_true", help="skip bad manifest rows and report how many")
    t.add_argument("--storage", help="override the job's storage_path")
    t.add_argument("--report-dir", help="where report.md goes (default: the experiment directory)")
    t.add_argument("--ray-verbose", action="store_true",
                   help="Ray Tune's full status tables instead of the compact view of `speechtune watch`")
    t.set_defaults(fn=cmd_tune)

    r = sub.add_parser("train", help="train one configuration without tuning")
    r.add_argument("family", help="model family: conformer_aed, crnn_ctc, seq2seq, tts_acoustic, wavenet_ctc")
    r.add_argument("--preset", help="one of the family's presets (speechtune describe FAMILY lists its keys)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a run parameter (lr=3e-3, epochs=10, select_metric=val_cer ...); repeat for more")
    r.add_argument("--corpus", default="demo-mono", help="demo corpus to synthesize when no manifests are given "
                                                         "(demo-mono, demo-bilingual; default: %(default)s)")
    r.add_argument("--train-manifest", help="training manifest: JSONL path or URI, or FORMAT:SOURCE")
    r.add_argument("--dev-manifest", help="validation manifest (with --train-manifest)")
    r.add_argument("--workers", type=int, default=1, help="data-parallel workers (DDP; default: %(default)s)")
    r.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each worker holds (default: %(default)s)")
    r.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="GPUs each worker holds (default: %(default)s; 1 on a GPU cluster)")
    r.add_argument("--storage", default="experiments",
                   help="where the run's results and checkpoints go: a path or s3:// URI (default: %(default)s)")
    r.add_argument("--name", help="the run's folder under --storage (default: train_FAMILY)")
    r.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    r.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    r.add_argument("--skip-bad", action="store_true", help="skip bad manifest rows and report how many")
    r.add_argument("--resume-from", metavar="CHECKPOINT_DIR", help="continue from a checkpoint's next epoch")
    r.add_argument("--ray-verbose", action="store_true",
                   help="print Ray Train's own status tables instead of a line per epoch")
    r.set_defaults(fn=cmd_train)

    e = sub.add_parser("evaluate", help="CER/WER of a checkpoint (or an experiment's best) on a manifest")
    e.add_argument("target", help="experiment directory or checkpoint directory")
    e.add_argument("--manifest", required=True, help="the utterances to score: JSONL path or URI, or FORMAT:SOURCE")
    e.add_argument("--skip-bad", action="store_true", help="skip bad manifest rows and report how many")
    e.add_argument("--max-duration", type=_positive_seconds, metavar="S",
                   help="refuse (or with --skip-bad skip) utterances longer than S seconds; default: the longest "
                        "an evaluation batch holds (1,000,000 frame x mel bins: 125 s at 80 mels)")
    e.add_argument("--out", metavar="HYPS.jsonl",
                   help="write one row per utterance: id, reference, hypothesis, character and word errors")
    e.add_argument("--decoder", choices=["greedy", "prefix_beam", "flashlight"], help="CTC families")
    e.add_argument("--beam-size", type=int, help="beam search (CTC and attention families)")
    e.add_argument("--lexicon", help="flashlight lexicon file (word<TAB>c h a r s |)")
    e.add_argument("--kenlm", help="flashlight KenLM model")
    e.add_argument("--ctc-weight", type=float, help="conformer_aed: joint CTC/attention decoding weight")
    e.set_defaults(fn=cmd_evaluate)

    da = sub.add_parser("data", help="import a corpus into a JSONL manifest, or print a manifest's statistics",
                        description="speechtune data import FORMAT SRC OUT.jsonl  |  speechtune data stats MANIFEST")
    da.add_argument("action", choices=["import", "stats"], help="import: convert SRC; stats: count MANIFEST")
    da.add_argument("format", nargs="?", help="import: kaldi, nemo, lhotse, hf or commonvoice; stats: the manifest "
                                              "(JSONL, or FORMAT:SOURCE)")
    da.add_argument("src", nargs="?", help="import: the source (data dir, manifest, dataset folder; local or s3://)")
    da.add_argument("out", nargs="?", help="import: the JSONL manifest to write")
    da.add_argument("--skip-bad", action="store_true", help="skip bad rows (each is listed) instead of stopping")
    da.add_argument("--force", action="store_true", help="import: replace an existing OUT")
    da.add_argument("--allow-pipes", action="store_true",
                    help="kaldi/lhotse: run wav.scp pipe commands (`... |`) and keep their output as wav files")
    da.add_argument("--audio-column", help="hf: the audio column (default: audio)")
    da.add_argument("--text-column", help="hf: the transcript column (default: text)")
    da.add_argument("--split", help="commonvoice: which .tsv of a release folder (default: train)")
    da.set_defaults(fn=cmd_data)

    d = sub.add_parser("describe", help="a family's config (with a preset) and its parameter count")
    d.add_argument("family", help="model family: conformer_aed, crnn_ctc, seq2seq, tts_acoustic, wavenet_ctc")
    d.add_argument("--preset", help="one of the family's presets")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="a parameter over the preset; repeat for more")
    d.add_argument("--feat-dim", type=int, help="input features (default: the config's n_mels)")
    d.add_argument("--vocab-size", type=int, default=40, help="output tokens when the config pins none")
    d.set_defaults(fn=cmd_describe)

    rep = sub.add_parser("report", help="write report.md and Parquet tables from an experiment directory")
    rep.add_argument("exp_dir", help="experiment (or study) directory: a path or s3:// URI")
    rep.add_argument("--out", help="where the report goes (default: the experiment directory)")
    rep.add_argument("--compare", metavar="OTHER_EXP", help="set another experiment beside this one")
    rep.add_argument("--check-ray", action="store_true",
                     help="compare trial count, statuses and best metrics with Ray's ExperimentAnalysis "
                          "(exit 1 if they disagree)")
    rep.set_defaults(fn=cmd_report)

    w = sub.add_parser("watch", help="a live table of a search's trials, from its experiment directory "
                                     "(local or s3://), while it runs here or on a cluster")
    w.add_argument("exp_dir", help="experiment directory: a path or s3:// URI")
    w.add_argument("--once", action="store_true", help="print the table once and exit (scripts, tests)")
    w.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes (default: %(default)s)")
    w.set_defaults(fn=cmd_watch)

    dt = sub.add_parser("decode-tune", help="tune decoding settings of an experiment's top checkpoints over "
                                            "their dev outputs, computed once and cached")
    dt.add_argument("exp", help="experiment directory (local or s3://) of an ASR search")
    dt.add_argument("--top", type=int, default=2, help="how many of the best trials' checkpoints to decode")
    dt.add_argument("--space", default=None, help="YAML file: the decoding settings to search (job-file syntax; "
                                                  "default: the family's, e.g. beam_size, lm_weight, word_score, lexicon)")
    dt.add_argument("--searcher", default="grid", choices=["grid", "hyperopt", "random"],
                    help="grid: every combination; hyperopt / random: --num-samples of them")
    dt.add_argument("--num-samples", type=int, default=24, help="settings tried by hyperopt / random")
    dt.add_argument("--address", default=None, help="existing Ray cluster (default: start a local one)")
    dt.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded local Ray")
    dt.add_argument("--ray-verbose", action="store_true",
                    help="print Ray Tune's own status tables instead of a progress line per tenth of the settings")
    dt.set_defaults(fn=lambda a: __import__("tune_jobs.decode_tune", fromlist=["main_cli"]).main_cli(a))

    rp = sub.add_parser("replay", help="replay a finished search's recorded learning curves through Tune's "
                                       "schedulers and searchers (nothing trains): compute spent and best found")
    rp.add_argument("exp", help="experiment directory (every trial run to the end: a grid or FIFO search), "
                                "or a recorded curves CSV (benchmarks/data/)")
    rp.add_argument("--scheduler", default="asha,promotion,hyperband,median,fifo",
                    help="comma-separated: asha, promotion, hyperband, median, fifo (default: all five)")
    rp.add_argument("--searcher", default="random", help="comma-separated: random, hyperopt, rung_tpe, grid")
    rp.add_argument("--repeats", type=int, default=10, help="replays per method, one searcher seed each")
    rp.add_argument("--slots", type=int, default=2, help="trials running at a time (the search's max_concurrent)")
    rp.add_argument("--max-trials", type=int, default=None,
                    help="trials each replay may start (default: as many as recorded configurations)")
    rp.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="a scheduler option over the replay's default (grace_period=1, reduction_factor=3), "
                         "e.g. --option grace_period=4; repeatable")
    rp.set_defaults(fn=cmd_replay)

    chk = sub.add_parser("check", help="compare an experiment's (or a study's) trial count, statuses and best "
                                       "metrics with Ray's ExperimentAnalysis; exit 1 if they disagree")
    chk.add_argument("exp_dir", help="experiment (or study) directory: a path or s3:// URI")
    chk.set_defaults(fn=cmd_check)

    bs = sub.add_parser("bars", help="the closing table: each job's bars (its `bars:`) against its experiment, "
                                     "a row per job ending in met / not met; exit 1 if any is not met")
    bs.add_argument("jobs", nargs="+", help="job files (their experiments are read from storage_path/name)")
    bs.add_argument("--profile", help="the profile the jobs ran with (cpu, ...)")
    bs.add_argument("--json", help="write the rows here as well")
    bs.set_defaults(fn=cmd_bars)

    cl = sub.add_parser("cluster", help="a local single-node Ray head on 127.0.0.1 for testing jobs")
    cl.add_argument("action", choices=["up", "status", "down"],
                    help="up: start the head (token auth on); status: nodes and jobs; down: stop it")
    cl.add_argument("--num-cpus", type=float, help="CPUs to offer (default: detected)")
    cl.add_argument("--num-gpus", type=float, help="GPUs to offer (default: detected)")
    cl.add_argument("--dashboard-port", type=int, default=8265, help="dashboard and Jobs API port on 127.0.0.1")
    cl.add_argument("--no-auth", action="store_true", help="no token authentication (Ray's gRPC ports bind every "
                                                          "interface: only on a machine no one else reaches)")
    cl.set_defaults(fn=cmd_cluster)

    sb = sub.add_parser("submit", help="check a job file, then run it on a Ray cluster through the Jobs API")
    sb.add_argument("job", help="job file (tune_jobs/jobs/*.yaml); checked here before anything is sent")
    sb.add_argument("--address", help="Jobs API, http://HEAD:8265 (default: the cluster `cluster up` started)")
    sb.add_argument("--profile", help="one of the job's profiles (cpu, smoke, ...)")
    sb.add_argument("--report-dir", help="where the report goes (default: the experiment directory)")
    sb.add_argument("--pip", action="store_true", help="have Ray install the pinned requirements (it clones the "
                                                       "cluster's environment first: minutes with torch)")
    sb.add_argument("--submission-id", help="the Ray job's ID (default: Ray makes one)")
    sb.add_argument("--wait", action="store_true", help="follow the logs until the job ends")
    sb.set_defaults(fn=cmd_submit)

    jb = sub.add_parser("jobs", help="jobs on a Ray cluster: list, logs ID [--follow], stop ID")
    jb.add_argument("action", choices=["list", "logs", "stop"], help="list the jobs, print one's logs, or stop it")
    jb.add_argument("id", nargs="?", help="the job's submission ID (logs, stop)")
    jb.add_argument("--address", help="Jobs API, http://HEAD:8265 (default: the cluster `cluster up` started)")
    jb.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    jb.set_defaults(fn=cmd_jobs)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    a = build_parser().parse_args(argv)
    # the command's start, for the wall time kept with an experiment: the process's own start for
    # the CLI (imports and interpreter included), this call's for main() called in-process
    import psutil

    a.started = psutil.Process().create_time() if argv is None else time.time()
    if a.cmd == "train" and bool(a.train_manifest) != bool(a.dev_manifest):
        print("error: --train-manifest and --dev-manifest go together", file=sys.stderr)
        return 2
    try:
        return a.fn(a)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted before the search started: nothing was run (run the command again)", file=sys.stderr)
        return 130
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
