"""The experiment record: what ``speechtune tune`` keeps beside Tune's files
(``speechtune_job.json``) and Tune's files cannot tell: the job, its metric and mode, its
searched keys, its data, its baseline, what a phase carried in, and the outcome (test figures).

Written by ``tune_jobs.runner`` and read by every module of ``analysis`` and by the job layer.
Typed and versioned: the defaults are applied here, once, when a record is read (a record
written before ``version`` existed reads as version 0 with the same defaults); a record from a
newer speechtune is refused by name. This module imports nothing else of the project.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

JOB_RECORD = "speechtune_job.json"
VERSION = 1  # 1: the first versioned record (version 0: the same keys, written without one)


@dataclass(frozen=True)
class Resources:
    """What one trial holds: its DDP workers and the CPUs and GPUs of all of them."""
    num_workers: int = 1
    cpus_per_trial: float = math.nan  # NaN: not recorded
    gpus_per_trial: float = math.nan  # NaN: not recorded (never 0)


@dataclass(frozen=True)
class Baseline:
    """The configuration tuning is judged against (analysis.confidence) and where it came from."""
    params: dict | None = None
    source: str = ""


@dataclass(frozen=True)
class ExperimentRecord:
    name: str = ""
    job_file: str = ""
    family: str = ""
    preset: str = ""
    profile: str = ""
    metric: str = "val_cer"   # the job's ranking metric and its direction
    mode: str = "min"
    epochs: int | None = None
    search_space: dict = field(default_factory=dict)
    trials: dict = field(default_factory=dict)    # named trials: name -> their params
    tuned: tuple[str, ...] = ()                    # the keys the search chose
    constraints: tuple = ()
    require: dict = field(default_factory=dict)    # metric -> bounds an epoch must meet to count
    manifests: dict = field(default_factory=dict)  # split -> manifest path
    num_trials: int = 0
    max_concurrent: int = 0
    scheduler: dict = field(default_factory=dict)
    searcher: str = ""
    resources: Resources = field(default_factory=Resources)
    params: dict = field(default_factory=dict)     # every trial's base config
    phase: dict = field(default_factory=dict)      # a study's phase: its name, index, what it carried in
    job: dict = field(default_factory=dict)        # the job as written (``--resume`` needs nothing else)
    skipped: tuple[str, ...] = ()                  # manifest rows ``skip_bad`` left out
    loggers: tuple[str, ...] = ()
    baseline: Baseline = field(default_factory=Baseline)
    outcome: dict = field(default_factory=dict)    # what the run learned after the search (test figures)
    version: int = VERSION
    found: bool = True                             # false: no record file (the defaults above)

    @property
    def searched(self) -> list[str]:
        """The searched and tuned keys, in order, once each."""
        return list(dict.fromkeys([*self.search_space, *self.tuned]))

    @property
    def selection(self) -> tuple[str, str]:
        """(metric, mode) that picked each run's best epoch and kept its checkpoints: the runs'
        own pair (``M`` for a job ranked by ``M_auc``), else the job's."""
        return (self.params.get("select_metric") or self.metric, self.params.get("select_mode") or self.mode)

    @classmethod
    def from_dict(cls, d: dict, where: str = JOB_RECORD) -> "ExperimentRecord":
        """A record as written (any version up to ours; keys it does not know are ignored, so not
        ``asr_core.config.from_dict``, which refuses them, as a job file must)."""
        version = int(d.get("version", 0))
        if version > VERSION:
            raise ValueError(f"{where}: an experiment record of version {version}, written by a newer "
                             f"speechtune (this one reads up to {VERSION})")
        known = {f.name for f in dataclasses.fields(cls)} - {"found", "version", "resources", "baseline"}
        kw = {k: d[k] for k in known if d.get(k) is not None}
        for k in ("tuned", "constraints", "skipped", "loggers"):
            if k in kw:
                kw[k] = tuple(kw[k])
        res = d.get("resources") or {}
        base = d.get("baseline") or {}
        return cls(**kw, version=version,
                   resources=Resources(**{k: res[k] for k in ("num_workers", "cpus_per_trial", "gpus_per_trial")
                                          if res.get(k) is not None}),
                   baseline=Baseline(base.get("params"), base.get("source") or ""))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        del d["found"]
        d["version"] = VERSION  # written now, in this version's shape
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False, default=str)

    def with_outcome(self, outcome: dict) -> "ExperimentRecord":
        return dataclasses.replace(self, outcome=dict(outcome))


def read_record(exp_dir) -> ExperimentRecord:
    """The record of a local experiment directory; the defaults (``found`` false) when it has none."""
    p = Path(exp_dir) / JOB_RECORD
    if not p.is_file():
        return ExperimentRecord(found=False)
    return ExperimentRecord.from_dict(json.loads(p.read_text()), str(p))
