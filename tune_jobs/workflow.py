"""What `speechtune tune` does after loading a job: the search, then the best checkpoint, its test
evaluation, the report and the check against Ray's own analysis. The same steps run for a job and
for each phase of a staged study; ``cli.py`` only parses arguments and calls in here.

Interrupts: Ctrl-C (or SIGTERM, forwarded as Ctrl-C) during the search is handled by Tune, which
saves its state and returns; the report then says "interrupted", and the exit code is 130. A
storage that fills up stops the search the same way (``tune_jobs.full_storage``; exit 75).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from tune_jobs.spec import JobSpec


def tune_job(job: JobSpec, address: str | None = None, num_cpus: int | None = None, resume: bool = False,
             report_dir: str | None = None, ray_verbose: bool = False, started: float | None = None) -> int:
    """One job's search and what follows it; returns the exit code (0, 1: nothing reported, 75: the
    storage filled up, 130: interrupted). ``started``: when the command started (the CLI's process
    start), for the job's wall time in its record (``speechtune bars``); a resumed search has none."""
    from tune_jobs.full_storage import StorageFull
    from tune_jobs.runner import run_tune

    if resume:
        from asr_core import storage as store
        from tune_jobs.runner import completed_search

        exp_uri = store.join(store.normalize(job.storage_path), job.name)
        done = completed_search(exp_uri)
        if done:  # Tune would return its results at once and we would rewrite the record as resumed
            print(f"{exp_uri}: {done}; nothing to resume, its record and report are left as they are "
                  f"(rebuild the report with: speechtune report {exp_uri})")
            return 0
    t0 = time.time()
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    signal.signal(signal.SIGINT, _interrupt_before_tune)
    try:
        results, exp_dir, manifests = run_tune(job, address=address, num_cpus=num_cpus, resume=resume,
                                               ray_verbose=ray_verbose)
    except StorageFull as e:
        return _finish_storage_full(e, time.time() - t0)
    # Tune's SIGINT handler, installed for the search, puts ours back when a signal arrives and
    # not otherwise; Tune then saves its state and returns as if the search had ended
    interrupted = signal.getsignal(signal.SIGINT) is _interrupt_before_tune \
        and os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") == "0"
    return finish(job, results, exp_dir, manifests, time.time() - t0, resumed=resume, interrupted=interrupted,
                  report_dir=report_dir, started=None if resume else started)


def tune_study(job: JobSpec, address: str | None = None, num_cpus: int | None = None,
               report_dir: str | None = None, started: float | None = None) -> int:
    """A staged study: each phase is searched and finished like a job (test evaluation, report,
    Ray check); then the study's report. ``started`` as for ``tune_job``: the study's wall time is
    kept in ``study.json`` when this command ran every phase from its start (a rerun that skipped
    or resumed some has no whole-study time to give)."""
    from analysis.report import write_study_report
    from tune_jobs.full_storage import StorageFull
    from tune_jobs.study import run_study, study_uri

    t0 = time.time()
    codes: list[int] = []

    def after_phase(pj: JobSpec, results, exp_dir: str, manifests: dict, elapsed: float) -> None:
        codes.append(finish(pj, results, exp_dir, manifests, elapsed, report_dir=None))

    try:
        summaries = run_study(job, address=address, num_cpus=num_cpus, after_phase=after_phase)
    except StorageFull as e:
        code = _finish_storage_full(e, time.time() - t0)
        print(f"(a phase of the study {job.path}: once there is room, `speechtune tune {job.path}` resumes it "
              f"and runs the phases after it)", file=sys.stderr)
        return code
    ran = [s for s in summaries if s["ran"]]
    print(f"study finished in {time.time() - t0:.0f} s: {len(ran)} phase(s) run, "
          f"{len(summaries) - len(ran)} skipped (done before)")
    print(f"study report: {write_study_report(study_uri(job), report_dir)}")
    if started is not None and len(ran) == len(summaries) and not any(s["resumed"] for s in ran) \
            and max(codes, default=0) == 0:
        from asr_core import storage as store
        from tune_jobs.study import STUDY_STATE

        where = store.join(study_uri(job), STUDY_STATE)
        state = json.loads(store.read_text(where))
        state["wall time"] = f"{time.time() - started:.0f} s"  # the whole command: synthesis to report
        store.write_text(where, json.dumps(state, indent=1, default=str))
    return max(codes, default=0)


def finish(job: JobSpec, results, exp_dir: str, manifests: dict, elapsed: float, *, resumed: bool = False,
           interrupted: bool = False, report_dir: str | None = None, started: float | None = None) -> int:
    """After a search: the outcome (kept in the experiment's record), the best checkpoint's test
    figures, the report and the Ray check. Returns the exit code. ``started``: the command's
    start; the record's outcome then holds the "job wall time", synthesis to report."""
    from analysis.report import write_report
    from asr_core.models import get_family
    from tune_jobs.runner import save_outcome

    errors = [r.error for r in results if r.error]
    extra = {"search wall time": f"{elapsed:.0f} s"}
    if resumed:
        extra["resumed"] = "yes: continued with `speechtune tune --resume` after an interrupt"
    if interrupted:
        return _finish_interrupted(exp_dir, extra, elapsed, report_dir)
    print(f"search finished in {elapsed:.0f} s: {len(results)} trials, {len(errors)} failed; experiment: {exp_dir}")
    print(f"TensorBoard: tensorboard --logdir {exp_dir}  (every trial's event files)"
          + ("; MLflow: mlflow ui --backend-store-uri " + os.environ.get("MLFLOW_TRACKING_URI", f"{exp_dir}/mlruns")
             if "mlflow" in job.loggers else ""))
    if not any(_reported(r, job.metric) for r in results):
        return _finish_empty(job, len(results), errors, exp_dir, extra, report_dir)
    tested = True
    if job.test_eval and "test" in manifests and get_family(job.family).decode is not None:
        tested = _evaluate_on_test(job, exp_dir, manifests, extra)
    save_outcome(exp_dir, extra)
    print(f"report: {write_report(exp_dir, report_dir)}")
    if tested:  # (test evaluation skipped: e.g. no trial met `require`; the report says so)
        check_with_ray(exp_dir)
    if started is not None:  # the outcome saved above, with the whole command's time to here
        save_outcome(exp_dir, {**extra, "job wall time": f"{time.time() - started:.0f} s"})
    return 0


def _finish_interrupted(exp_dir: str, extra: dict, elapsed: float, report_dir: str | None) -> int:
    """No test figure, no best checkpoint: the record and the report say so; exit 130."""
    from analysis.report import write_report
    from tune_jobs.runner import save_outcome

    extra["status"] = (f"**interrupted** after {elapsed:.0f} s; no test evaluation. "
                       f"Resume: `speechtune tune --resume {exp_dir}`")
    save_outcome(exp_dir, extra)
    try:
        print(f"report: {write_report(exp_dir, report_dir)}")
    except Exception as e:  # nothing reported yet: the record above still says what happened
        print(f"report: not written ({e})")
    print(f"search interrupted after {elapsed:.0f} s; Tune's state is saved. "
          f"Resume with: speechtune tune --resume {exp_dir}", file=sys.stderr)
    return 130


def _finish_storage_full(e, elapsed: float) -> int:
    """The storage filled up (``e``, a ``full_storage.StorageFull``): Tune stopped as at an
    interrupt. The record says so when it still fits (its write is atomic: a failed one leaves
    the old record); no report (no room for it). Exit 75 (EX_TEMPFAIL: the same command
    continues once there is room)."""
    from tune_jobs.runner import save_outcome

    try:
        save_outcome(e.exp, {"search wall time": f"{elapsed:.0f} s",
                             "status": f"**interrupted**: the storage filled up after {elapsed:.0f} s "
                                       f"({e.free:,} bytes free, a checkpoint needs {e.needed:,}). "
                                       f"Resume: `speechtune tune --resume {e.exp}`"})
    except OSError as w:
        print(f"(the record could not be updated either: {w})", file=sys.stderr)
    print(f"error: {e}", file=sys.stderr)
    return 75


def _finish_empty(job: JobSpec, n: int, errors: list, exp_dir: str, extra: dict, report_dir: str | None) -> int:
    """No trial reported the job's metric: the search produced nothing, and says so; exit 1."""
    from analysis.load import MetricNotFound
    from analysis.report import write_report
    from tune_jobs.runner import save_outcome

    save_outcome(exp_dir, extra)
    try:
        print(f"report: {write_report(exp_dir, report_dir)}")
    except (MetricNotFound, FileNotFoundError) as e:
        print(f"report: not written ({e})")
    print(f"error: the search produced nothing: no trial of {n} reported {job.metric} "
          f"({len(errors)} failed)", file=sys.stderr)
    if errors:
        print(f"first error: {first_error(errors[0])}", file=sys.stderr)
    return 1


def _evaluate_on_test(job: JobSpec, exp_dir: str, manifests: dict, extra: dict) -> bool:
    """The best checkpoint (the one ranking's) on the test split, and on ``test_hard`` when the
    job has one, then against the baseline; the figures go into ``extra``. False when there is
    no checkpoint to test (``extra`` says why)."""
    from analysis.load import best_checkpoint
    from asr_core import storage as store
    from asr_core.evaluate import evaluate

    local = store.local_copy(exp_dir, skip_checkpoints=False)  # once: an S3 experiment is downloaded
    try:
        best = best_checkpoint(local, *job.selection())
    except FileNotFoundError as e:  # e.g. no trial met the job's `require` bounds
        print(f"test evaluation skipped: {e}")
        extra["test evaluation"] = f"skipped: {e}" + (f" (required: {job.require})" if job.require else "")
        return False
    decoding, chosen = _choose_decoding(job, best, manifests)
    ev = evaluate(str(best), manifests["test"], progress=False, per_utterance=True, **decoding)
    extra.update({"best checkpoint": f"`{best}` (epoch {ev['epoch']})",
                  "test CER": f"{100 * ev['cer']:.2f}% on {ev['utterances']} test utterances "
                              f"(unseen voices and sentences: `{manifests['test']}`)",
                  "test WER": f"{100 * ev['wer']:.2f}%",
                  # which decoder produced the test figures (the checkpoint's own decoding keys)
                  "test decoding": _describe(ev["decoding"]) + chosen})
    print(f"best checkpoint {best}: test CER {100 * ev['cer']:.2f}%  WER {100 * ev['wer']:.2f}%"
          f"  (decoding: {extra['test decoding']})")
    hard = None
    if manifests.get("test_hard"):
        hard = evaluate(str(best), manifests["test_hard"], progress=False, **decoding)
        ratio = hard["cer"] / ev["cer"] if ev["cer"] > 0 else float("nan")
        extra["test_hard CER"] = (f"{100 * hard['cer']:.2f}% on {hard['utterances']} utterances, {ratio:.2f}x the "
                                  f"test CER (unseen voices at speaking rates and noise levels beyond the "
                                  f"training range: `{manifests['test_hard']}`)")
        extra["test_hard WER"] = f"{100 * hard['wer']:.2f}%"
        print(f"best checkpoint on test_hard: CER {100 * hard['cer']:.2f}% ({ratio:.2f}x test)  "
              f"WER {100 * hard['wer']:.2f}%")
    if "rows" in ev:
        scores = test_against_baseline(exp_dir, job, best, ev, manifests["test"], local, hard, decoding)
        print(scores["line"])
    return True


def _describe(decoding: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in decoding.items() if v not in ("", None)) or "the family's own"


def _choose_decoding(job: JobSpec, best, manifests: dict) -> tuple[dict, str]:
    """The decoding the test figures come from: the checkpoint's own, or one of the family's
    ``test_decodings`` where it does better on the dev split (by the job's unit: WER for a job
    ranked by WER, else CER). Returns (overrides, a note of what was measured)."""
    from asr_core.errors import InputError
    from asr_core.evaluate import evaluate
    from asr_core.models import get_family

    others = get_family(job.family).test_decodings
    if not others or not manifests.get("dev"):
        return {}, ""
    unit = "wer" if job.metric.endswith("wer") else "cer"
    print(f"choosing the test decoding on dev by {unit.upper()}: the checkpoint's own and {len(others)} other(s)")
    scored = []
    for d in ({}, *others):
        try:
            scored.append((evaluate(str(best), manifests["dev"], progress=False, **d), d))
        except InputError as e:  # e.g. joint CTC decoding of a checkpoint without a CTC head
            print(f"  {_describe(d)}: not for this checkpoint ({e})")
    for ev, d in scored:
        print(f"  {_describe(ev['decoding'])}: dev CER {100 * ev['cer']:.2f}%  WER {100 * ev['wer']:.2f}%")
    ev, d = min(scored, key=lambda s: s[0][unit])  # min keeps the checkpoint's own on a tie
    note = "; ".join(f"dev {unit.upper()} {100 * e[unit]:.2f}% with {_describe(e['decoding'])}" for e, _ in scored)
    return d, f" (chosen on dev by {unit.upper()}: {note})"


def test_against_baseline(exp_dir: str, job: JobSpec, best, ev: dict, test_manifest: str, local: Path,
                          hard: dict | None = None, decoding: dict | None = None) -> dict:
    """The best checkpoint against the baseline trial's best checkpoint on the test split: CER and
    WER with 95% intervals and the probability that the best improves on the baseline (paired
    bootstrap, analysis.confidence), the baseline decoded as the best was (``decoding``: overrides
    of each checkpoint's own; its own where it has no such decoding; ``test_scores.json`` says
    which). Kept as ``test_scores.json``; the report opens with it."""
    from analysis.confidence import baseline_trial, compare, edits_from_rows
    from analysis.load import best_checkpoint, load_experiment
    from analysis.record import read_record
    from asr_core import storage as store

    record = read_record(local)
    trials, _ = load_experiment(local)
    base = baseline_trial(trials, record)
    decoding = decoding or {}
    out = {"split": "test", "manifest": str(test_manifest), "baseline_source": record.baseline.source,
           "decoding": ev["decoding"],
           "best": {"checkpoint": str(best), "epoch": ev["epoch"], "trial": Path(best).parent.name}}
    base_edits = None
    if base is not None:
        bck = best_checkpoint(local, *job.selection(), trial=base.trial)
        out["baseline"] = {"checkpoint": str(bck), "trial": base.trial, "trial_id": base.trial_id,
                           "params": record.baseline.params,
                           "status": base.status, "epochs_run": _int(base.epochs_run),
                           "epochs_planned": _int(base.epochs_planned)}
        best_run = _epochs_run(trials, Path(best).parent.name)
        out["best"]["epochs_run"] = best_run
        # the scheduler stopped the baseline before the best's budget: its test score is not an
        # equal-budget comparison, and the verdict says so rather than crediting tuning with it
        n = out["baseline"]["epochs_run"]
        out["baseline"]["short"] = bool(base.status == "early-stopped" or (
            best_run is not None and n is not None and n < best_run))
        out["budget"] = f"{n} epochs each" if n == best_run else f"the baseline {n} epochs, the best {best_run}"
        if Path(bck) == Path(best):
            out["baseline"]["is_best"] = True
            # the tuned configuration that came closest, against the baseline on test: "nothing
            # better" is itself a finding with intervals (by how much, how sure)
            runner_up = _runner_up(local, job, base, trials, test_manifest, edits_from_rows(ev["rows"]), n,
                                   decoding)
            if runner_up is not None:
                out["runner_up"] = runner_up
        else:
            evb = _evaluate_decoded(bck, test_manifest, decoding)
            out["baseline"]["epoch"] = evb["epoch"]
            out["baseline"]["decoding"] = evb["decoding"]
            base_edits = edits_from_rows(evb["rows"])
    out.update(compare(edits_from_rows(ev["rows"]), base_edits))
    if hard is not None:  # the best checkpoint on the harder split, beside test
        out["test_hard"] = {k: hard[k] for k in ("cer", "wer", "utterances")}
        out["test_hard"]["cer_ratio"] = hard["cer"] / ev["cer"] if ev["cer"] > 0 else float("nan")
    out["line"] = _verdict(out, "wer" if job.metric.endswith("wer") else "cer")
    store.write_text(store.join(exp_dir, "test_scores.json"), json.dumps(out, indent=1))
    return out


def _evaluate_decoded(ckpt, manifest: str, decoding: dict) -> dict:
    """A compared checkpoint on test with the best's decoding, or with its own where it has no
    such decoding (joint CTC decoding of a checkpoint without a CTC head); ``decoding`` in the
    result says which."""
    from asr_core.errors import InputError
    from asr_core.evaluate import evaluate

    try:
        return evaluate(str(ckpt), manifest, progress=False, per_utterance=True, **decoding)
    except InputError as e:
        print(f"{ckpt}: decoded with its own settings ({e})")
        return evaluate(str(ckpt), manifest, progress=False, per_utterance=True)


def _epochs_run(trials, trial_dir: str) -> int | None:
    row = trials[trials.trial == trial_dir]
    return _int(row.epochs_run.iloc[0]) if len(row) else None


def _runner_up(local: Path, job: JobSpec, base, trials, test_manifest: str, best_edits: dict,
               n: int | None, decoding: dict) -> dict | None:
    """When the baseline was the best: the ranking's next trial on test, against the baseline."""
    from analysis.confidence import compare, edits_from_rows
    from analysis.load import best_checkpoint

    try:
        other = best_checkpoint(local, *job.selection(), exclude=base.trial)
    except FileNotFoundError:
        return None
    evo = _evaluate_decoded(other, test_manifest, decoding)
    row = trials[trials.trial == other.parent.name]
    m = _epochs_run(trials, other.parent.name)
    return {"checkpoint": str(other), "trial": other.parent.name, "epoch": evo["epoch"],
            "trial_id": str(row.trial_id.iloc[0]) if len(row) else None,
            "epochs_run": m, "short": bool(m is not None and n is not None and m < n),
            "budget": f"{n} epochs each" if n == m else f"the baseline {n} epochs, it {m}",
            **compare(edits_from_rows(evo["rows"]), best_edits)}


def _verdict(out: dict, unit: str) -> str:
    """test_scores.json's one line: the best against the baseline, or why there is no comparison."""
    from analysis.confidence import SURE

    b = out[f"best_{unit}"]
    if "baseline" not in out:
        return f"no baseline trial ({out['baseline_source'] or 'none given'})"
    if out["baseline"].get("is_best"):
        line = "the baseline configuration itself was the best checkpoint: tuning found nothing better"
        r = out.get("runner_up")
        if r:
            line += (f"; the best tuned configuration ({r['budget']}): {unit.upper()} {100 * r[f'best_{unit}']['rate']:.2f}% "
                     f"against the baseline's {100 * b['rate']:.2f}%, P(it improves on the baseline) = "
                     f"{r[f'p_best_improves_{unit}']:.3f}")
        return line
    a, p, bl = out[f"baseline_{unit}"], out[f"p_best_improves_{unit}"], out["baseline"]
    if bl["short"]:
        return (f"no equal-budget comparison: the scheduler stopped the baseline after {bl['epochs_run']} of "
                f"{bl['epochs_planned']} epochs; on test the best's {unit.upper()} is {100 * b['rate']:.2f}%, "
                f"the baseline's (at epoch {bl['epochs_run']}) {100 * a['rate']:.2f}%")
    verdict = "better than" if p >= SURE else "not shown to be better than"
    return (f"tuned best {verdict} the baseline on test at equal budget ({out['budget']}): "
            f"{unit.upper()} {100 * b['rate']:.2f}% "
            f"[{100 * max(b['low'], 0):.2f}, {100 * b['high']:.2f}] against {100 * a['rate']:.2f}% "
            f"[{100 * max(a['low'], 0):.2f}, {100 * a['high']:.2f}], P(improvement) = {p:.3f}")


def _int(v) -> int | None:
    return None if v is None or v != v else int(v)


def _interrupt_before_tune(signum, frame) -> None:
    """Ctrl-C while the search is not running (data checks, or after Tune handled one)."""
    raise KeyboardInterrupt


def _terminate_as_interrupt(signum, frame) -> None:
    """SIGTERM as Ctrl-C: while Tune runs, its SIGINT handler saves the experiment state and ends
    the search; before that, KeyboardInterrupt."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler not in (signal.default_int_handler, _interrupt_before_tune):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def _reported(result, metric: str) -> bool:
    """Did this trial report ``metric`` with a value at least once (NaN is no value)?"""
    df = result.metrics_dataframe
    return df is not None and metric in df and bool(df[metric].notna().any())


def first_error(e: BaseException) -> str:
    """The innermost cause of a trial's error (Ray wraps it in RayTaskError / TrainingFailedError),
    as ``Type: message`` on one line."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "cause", None) or e.__cause__
        if not isinstance(inner, BaseException):
            break
        e = inner
    name = type(e).__name__.removeprefix("RayTaskError(").rstrip(")")
    text = str(e).strip().splitlines()
    return f"{name}: {text[-1] if text else ''}"[:500]


def check_with_ray(exp_dir) -> bool:
    """Print whether the report's trial count, statuses and best metrics agree with Ray's own
    ExperimentAnalysis of the same directory (local experiments; S3 ones are read by Ray too but
    the check would download everything twice)."""
    from analysis.raycheck import compare_with_ray
    from asr_core import storage as store

    if not exp_dir or store.is_remote(exp_dir):
        return True
    c = compare_with_ray(exp_dir)
    print(f"checked {exp_dir} against {c.summary()}")
    print(f"best trial: {c.winner}" if c.winner else "best trial: none (no trial that can win reported the metric)")
    return c.ok
