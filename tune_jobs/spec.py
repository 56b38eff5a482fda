"""Job files: YAML validated into a JobSpec before any trial starts.

Every error names the file, the line and the key. The whole trial config (base params and
every search dimension) is checked against the family's dataclasses up front, so a typo in a
parameter name fails here, not in trial 7 after an hour.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asr_core.config import from_dict
from asr_core.errors import InputError
from tune_jobs.registry import SCHEDULER_OPTIONS, SCHEDULERS, SEARCHERS
from tune_jobs.space import has_grid, parse_space
from tune_jobs.yamlio import Locator, load_with_lines


@dataclass
class DataSpec:
    corpus: str = ""  # a demo corpus name (synthesized on first use) ...
    train: int = 3000
    dev: int = 200
    test: int = 200
    seed: int = 0
    train_manifest: str = ""  # ... or your own manifests
    dev_manifest: str = ""
    test_manifest: str = ""
    skip_bad: bool = False

    def validate(self) -> None:
        if not self.corpus and not (self.train_manifest and self.dev_manifest):
            raise ValueError("data needs either 'corpus' (demo-mono, demo-bilingual) or "
                             "'train_manifest' and 'dev_manifest'")


@dataclass
class SearcherSpec:
    name: str = "hyperopt"
    seed: int = 0
    points_to_evaluate: list = field(default_factory=list)

    def validate(self) -> None:
        if self.name not in SEARCHERS:
            raise ValueError(f"unknown searcher: {self.name} (known: {list(SEARCHERS)})")


@dataclass
class ResourcesSpec:
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    placement_strategy: str = "PACK"

    def validate(self) -> None:
        if self.num_workers < 1:
            raise ValueError("key 'num_workers' must be >= 1")
        if self.placement_strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            raise ValueError(f"unknown placement_strategy {self.placement_strategy!r}")


@dataclass
class JobSpec:
    path: str
    name: str
    family: str
    preset: str | None
    data: DataSpec
    params: dict
    search_space: dict  # as written (parsed into Tune domains by space.parse_space)
    searcher: SearcherSpec
    scheduler: dict
    metric: str
    mode: str
    num_trials: int
    max_concurrent: int
    resources: ResourcesSpec
    storage_path: str
    max_failures: int
    test_eval: bool

    def tune_space(self) -> dict:
        return parse_space(self.search_space, Locator(self.path, {}))


TOP_KEYS = {"name", "family", "preset", "data", "params", "search_space", "searcher", "scheduler",
            "metric", "mode", "num_trials", "max_concurrent", "resources", "storage_path", "max_failures",
            "test_eval"}


def load_job(path: str | Path) -> JobSpec:
    from asr_core.train.config import split_params

    data, lines = load_with_lines(path)
    loc = Locator(path, lines)
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise InputError(loc(unknown[0]), f"unknown key '{unknown[0]}' in job file; known keys: {sorted(TOP_KEYS)}")
    for req in ("family", "data"):
        if req not in data:
            raise InputError(str(path), f"missing required key '{req}'")

    def sub(cls, key, default=None):
        raw = data.get(key, default or {})
        if not isinstance(raw, dict):
            raise InputError(loc(key), f"'{key}' must be a mapping")
        try:
            return from_dict(cls, raw, where=loc(key))
        except InputError as e:
            # point at the offending sub-key's line when the message names one
            for k in raw:
                if f"'{k}'" in e.message:
                    raise InputError(loc(f"{key}.{k}"), e.message) from None
            raise

    dspec = sub(DataSpec, "data")
    searcher = sub(SearcherSpec, "searcher")
    resources = sub(ResourcesSpec, "resources")
    params = data.get("params") or {}
    space_raw = data.get("search_space") or {}
    if not isinstance(params, dict):
        raise InputError(loc("params"), "'params' must be a mapping")
    space = parse_space(space_raw, loc)
    if has_grid(space_raw) and searcher.name == "hyperopt":
        raise InputError(loc("searcher.name"), "grid dimensions need searcher 'random' or 'grid', not hyperopt")
    sched = dict(data.get("scheduler") or {"name": "fifo"})
    sname = sched.pop("name", "fifo")
    if sname not in SCHEDULERS:
        raise InputError(loc("scheduler.name"), f"unknown scheduler: {sname} (known: {list(SCHEDULERS)})")
    bad = sorted(set(sched) - SCHEDULER_OPTIONS[sname])
    if bad:
        raise InputError(loc(f"scheduler.{bad[0]}"), f"unknown option '{bad[0]}' for scheduler {sname}; "
                                                      f"known: {sorted(SCHEDULER_OPTIONS[sname])}")
    try:
        from asr_core.models import get_family

        fam = get_family(str(data.get("family")))
        default_metric, default_mode = fam.default_metric, fam.default_mode
    except ValueError:  # reported with its line below
        default_metric, default_mode = "val_cer", "min"
    metric_name = str(data.get("metric", default_metric))
    mode = data.get("mode", default_mode if metric_name == default_metric else "min")
    if mode not in ("min", "max"):
        raise InputError(loc("mode"), f"mode must be 'min' or 'max', got {mode!r}")

    # Check a representative trial config now: base params + one value per dimension.
    sample = {k: _representative(v) for k, v in space_raw.items()}
    probe = {"family": data["family"], "train_manifest": "x", "dev_manifest": "x", **params, **sample}
    if data.get("preset") is not None:
        probe["preset"] = data["preset"]
    for k in list(params) + list(sample):
        try:
            split_params({"family": data["family"], "preset": data.get("preset"), "train_manifest": "x",
                          "dev_manifest": "x", k: probe[k]}, where=str(path))
        except InputError as e:
            section = "params" if k in params and k not in sample else "search_space"
            raise InputError(loc(f"{section}.{k}"), e.message) from None
        except ValueError as e:  # unknown family / preset
            raise InputError(loc("family" if "family" in str(e) else "preset"), str(e)) from None
    try:
        split_params(probe, where=str(path))
    except InputError as e:
        raise InputError(str(path), e.message) from None
    except ValueError as e:
        raise InputError(loc("family" if "family" in str(e) else "preset"), str(e)) from None

    try:
        num_trials = int(data.get("num_trials", 1))
        max_conc = int(data.get("max_concurrent", 1))
        max_failures = int(data.get("max_failures", 0))
    except (TypeError, ValueError) as e:
        raise InputError(str(path), f"num_trials/max_concurrent/max_failures must be integers ({e})") from None
    return JobSpec(
        path=str(path), name=str(data.get("name", Path(path).stem)), family=data["family"],
        preset=data.get("preset"), data=dspec, params=params, search_space=space_raw, searcher=searcher,
        scheduler={"name": sname, **sched}, metric=metric_name, mode=mode,
        num_trials=num_trials, max_concurrent=max_conc, resources=resources,
        storage_path=str(data.get("storage_path", "experiments")), max_failures=max_failures,
        test_eval=bool(data.get("test_eval", True)),
    )


def _representative(spec: Any) -> Any:
    if isinstance(spec, dict) and len(spec) == 1:
        (kind, args), = spec.items()
        if kind == "randint":
            return int(args[0])
        if isinstance(args, list) and args:
            return args[0]
    return spec
