"""Staged studies: an ordered list of phases in one job file (seed 002's methodology).

Phase k+1 starts with the winners of phases 1..k filled in: every key an earlier phase chose
(its search dimensions, what its named trials set) takes the best trial's value, and ``<OPT>``
in a phase's params stands for it. ``study.json`` in ``storage_path/<study>/`` records each
finished phase with its winners and their provenance (phase, trial, metric value) and a
fingerprint of what the phase ran; a study run again skips every finished phase whose
fingerprint is unchanged, resumes an interrupted one, and runs the rest.
"""
from __future__ import annotations

import hashlib
import json
import math

from asr_core import storage as store
from analysis.load import best_checkpoint, load_experiment, winner
from analysis.record import read_record
from asr_core.errors import InputError
from tune_jobs.spec import JobSpec, build_job, phase_dict
from tune_jobs.yamlio import Locator

STUDY_STATE = "study.json"


def study_uri(job: JobSpec) -> str:
    return store.join(job.storage_path, job.name)


def read_state(job: JobSpec) -> dict:
    text = store.read_text(store.join(study_uri(job), STUDY_STATE))
    return json.loads(text) if text else {"study": job.name, "phases": {}}


def phase_job(job: JobSpec, i: int, carried: dict[str, dict]) -> JobSpec:
    """Phase ``i`` of the study as a runnable job, ``<OPT>`` resolved from ``carried``."""
    values = {k: c["value"] for k, c in carried.items()}
    ph = job.phases[i]
    try:
        d = phase_dict(job.raw, ph, values)
    except ValueError as e:
        raise InputError(f"{job.path} (phases.{i}: {ph['name']})", str(e)) from None
    pj = build_job(d, Locator(job.path, {}).within(f"phases.{i}."), job.path)
    pj.profile, pj.raw = job.profile, d
    return pj


def fingerprint(pj: JobSpec) -> str:
    blob = json.dumps(pj.raw, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def winners(exp_uri: str, pj: JobSpec, phase_name: str) -> tuple[dict[str, dict], dict]:
    """The best trial's values of the keys this phase chose, each with its provenance."""
    local = store.local_copy(exp_uri)
    trials, _ = load_experiment(local)
    key = f"best_{pj.metric}"
    best = winner(trials, read_record(local))  # the one ranking (a diverged trial never wins)
    if best is None:
        raise RuntimeError(f"phase {phase_name}: no trial that can win reported {pj.metric} (failed and diverged "
                           f"trials never do); nothing to carry into the next phase (see {exp_uri})")
    out = {}
    for k in pj.tuned_keys():
        col = f"config/{k}"
        if col in best and not (isinstance(best[col], float) and math.isnan(best[col])):
            v = best[col]
            out[k] = {"value": v.item() if hasattr(v, "item") else v, "phase": phase_name,
                      "trial": str(best["trial_id"]), "metric": pj.metric, "metric_value": float(best[key])}
    return out, {"trial": str(best["trial_id"]), "trial_dir": str(best["trial"]), "metric": pj.metric,
                 "value": float(best[key])}


def run_study(job: JobSpec, address: str | None = None, num_cpus: int | None = None, cache_dir: str | None = None,
              progress: bool = True, after_phase=None) -> list[dict]:
    """Run the study's phases in order; returns one summary per phase (``ran`` false = skipped).
    ``after_phase(phase_job, results, exp_uri, manifests, seconds)`` runs after each phase's search
    (``tune_jobs.workflow``: test evaluation, report, Ray check)."""
    import time

    from tune_jobs.runner import can_resume, run_tune

    state = read_state(job)
    state["job"] = job.raw
    carried: dict[str, dict] = {}
    summaries = []
    prev_exp = prev_job = None
    for i, ph in enumerate(job.phases):
        pj = phase_job(job, i, carried)
        fp = fingerprint(pj)
        exp_uri = store.join(pj.storage_path, pj.name)
        done = state["phases"].get(ph["name"], {})
        if done.get("status") == "done" and done.get("fingerprint") == fp:
            print(f"phase {i + 1}/{len(job.phases)} {ph['name']}: done before, not rerun "
                  f"(best {done['best']['metric']} {done['best']['value']:.4g}); carrying {sorted(done['winners'])}")
            carried.update(done["winners"])
            summaries.append({"phase": ph["name"], "ran": False, "exp": exp_uri, **done})
            prev_exp, prev_job = exp_uri, pj
            continue
        phase_info = {"study": job.name, "index": i, "name": ph["name"], "carried": carried,
                      "description": ph.get("description", "")}
        if pj.init_from == "best":
            ckpt = best_checkpoint(store.local_copy(prev_exp, skip_checkpoints=False), *prev_job.selection())
            phase_info["init_checkpoint"] = str(ckpt)
        print(f"phase {i + 1}/{len(job.phases)} {ph['name']}: {pj.num_trials} trial(s)"
              + ("; carried in: " + ", ".join(f"{k}={c['value']}" for k, c in carried.items()) if carried else ""))
        resume = can_resume(exp_uri) and done.get("fingerprint") == fp
        state["phases"][ph["name"]] = {"status": "running", "fingerprint": fp, "exp": exp_uri}
        state.pop("wall time", None)  # a whole run's time (workflow.tune_study): no longer this study's
        store.write_text(store.join(study_uri(job), STUDY_STATE), json.dumps(state, indent=1, default=str))
        t0 = time.time()
        results, exp_uri, manifests = run_tune(pj, address=address, num_cpus=num_cpus, resume=resume,
                                               cache_dir=cache_dir, progress=progress, phase=phase_info)
        if after_phase is not None:
            after_phase(pj, results, exp_uri, manifests, time.time() - t0)
        won, best = winners(exp_uri, pj, ph["name"])
        carried.update(won)
        state["phases"][ph["name"]] = {"status": "done", "fingerprint": fp, "exp": exp_uri, "winners": won,
                                       "best": best, "trials": len(results),
                                       "errors": sum(1 for r in results if r.error)}
        store.write_text(store.join(study_uri(job), STUDY_STATE), json.dumps(state, indent=1, default=str))
        summaries.append({"phase": ph["name"], "ran": True, "resumed": resume, **state["phases"][ph["name"]]})
        prev_exp, prev_job = exp_uri, pj
    return summaries
