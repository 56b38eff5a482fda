"""Job files: YAML validated into a JobSpec before any trial starts.

Every error names the file, the line and the key. The whole trial config (base params, every
search dimension, every named trial, every phase) is checked against the family's dataclasses up
front, so a typo in a parameter name fails here, not in trial 7 after an hour.

A job may carry ``profiles`` (overlays such as ``cpu`` or ``smoke``, chosen with ``--profile``)
and ``phases`` (a staged study: each phase overlays the job, and ``<OPT>`` in a phase stands for
the best value carried in from the phases before it; see ``tune_jobs.study``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import copy
import dataclasses

from asr_core.config import from_dict
from asr_core.errors import InputError, KeyProblem
from tune_jobs import expr
from tune_jobs.registry import (DRAWING_SEARCHERS, MODEL_SEARCHERS, SCHEDULERS, SEARCHERS, SEARCHERS_FOR,
                                default_method, scheduler_options)
from tune_jobs.space import extremes, parse_space, split_grid
from tune_jobs.yamlio import Locator, load_with_lines


@dataclass
class DataSpec:
    corpus: str = ""  # a demo corpus name (synthesized on first use) ...
    train: int = 3000
    dev: int = 200
    test: int = 200
    test_hard: int = 0  # a demo corpus's robustness split: unseen voices at rates and noise beyond training's
    seed: int = 0
    train_manifest: str = ""  # ... or your own manifests
    dev_manifest: str = ""
    test_manifest: str = ""
    test_hard_manifest: str = ""  # a second, harder test set: scored like test, reported beside it
    skip_bad: bool = False

    def validate(self) -> None:
        from asr_core.data.synth import CORPORA

        if self.corpus and self.corpus not in CORPORA:  # was found after Ray started and the data step began
            raise KeyProblem("corpus", f"unknown demo corpus '{self.corpus}' (known: {', '.join(CORPORA)}); "
                                       f"your own data go in train_manifest / dev_manifest / test_manifest")
        if not self.corpus and not (self.train_manifest and self.dev_manifest):
            raise ValueError("data needs either 'corpus' (demo-mono, demo-bilingual) or "
                             "'train_manifest' and 'dev_manifest'")


@dataclass
class SearcherSpec:
    name: str = "hyperopt"
    seed: int = 0
    # first configs to try: mappings of search-space values, or a preset's name (its values of
    # the searched keys: TPE seeded with the seed's presets)
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
            raise KeyProblem("num_workers", "key 'num_workers' must be >= 1")
        if not self.cpus_per_worker > 0:
            raise KeyProblem("cpus_per_worker", "key 'cpus_per_worker' must be > 0")
        if not self.gpus_per_worker >= 0:
            raise KeyProblem("gpus_per_worker", "key 'gpus_per_worker' must be >= 0")
        if self.placement_strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            raise ValueError(f"unknown placement_strategy {self.placement_strategy!r}")


@dataclass(frozen=True)
class SearchSpace:
    """A job's search space, parsed once at load: as written (records, reports), the Tune domains
    of its sampled dimensions and the values of its grid dimensions."""
    written: dict
    domains: dict
    grid: dict

    @classmethod
    def parse(cls, written: dict, locate) -> "SearchSpace":
        sampled, grid = split_grid(written)
        return cls(dict(written), parse_space(sampled, locate), grid)


@dataclass
class SchedulerSpec:
    """One Tune scheduler: its name and its options as written, checked against the Ray class's
    constructor (``registry.scheduler_options``); PBT's ``hyperparam_mutations`` parsed like a
    search space."""
    name: str = "fifo"
    options: dict = field(default_factory=dict)
    mutations: SearchSpace | None = None

    def as_dict(self) -> dict:
        """As written (the experiment's record; the report's ASHA and PBT plots read it)."""
        muts = {"hyperparam_mutations": self.mutations.written} if self.mutations is not None else {}
        return {"name": self.name, **self.options, **muts}

    def make(self, metric: str, mode: str, **job):
        """The Tune scheduler, ranking by the job's metric and mode (``job``: epochs and
        max_concurrent, which a pausing scheduler needs)."""
        from tune_jobs.registry import make_scheduler

        opts = dict(self.options)
        if self.mutations is not None:
            opts["hyperparam_mutations"] = self.mutations.domains
        return make_scheduler(self.name, metric=metric, mode=mode, **job, **opts)


PHASE = {"phase": True}  # a key a phase of a staged study may set over the job's
INTERNAL = {"internal": True}  # not written in a job file


@dataclass
class JobSpec:
    """A job file's keys, each a field: the job file's known keys (TOP_KEYS) and a phase's
    (PHASE_KEYS) are read from here, so a new key is one field (and its check in ``build_job``)."""
    path: str = field(metadata=INTERNAL)
    name: str = field(metadata=PHASE)
    family: str
    preset: str | None
    data: DataSpec
    params: dict = field(metadata=PHASE)
    search_space: dict = field(metadata=PHASE)  # as written; parsed: ``space``
    searcher: SearcherSpec = field(metadata=PHASE)
    scheduler: SchedulerSpec = field(metadata=PHASE)
    metric: str = field(metadata=PHASE)
    mode: str = field(metadata=PHASE)
    num_trials: int = field(metadata=PHASE)
    max_concurrent: int = field(metadata=PHASE)
    resources: ResourcesSpec = field(metadata=PHASE)
    storage_path: str
    max_failures: int = field(metadata=PHASE)
    test_eval: bool
    trials: dict = field(default_factory=dict, metadata=PHASE)  # named trials: name -> params (seed 001)
    constraints: list = field(default_factory=list, metadata=PHASE)  # expressions every trial config must satisfy
    require: dict = field(default_factory=dict, metadata=PHASE)  # metric -> {min: x} / {max: x}: below cannot win
    phases: list = field(default_factory=list)  # a staged study's phases, as written
    init_from: str = field(default="", metadata=PHASE)  # "best": start from the previous phase's best checkpoint
    repeats: int = field(default=1, metadata=INTERNAL)  # grid / named trials: how many times each combination runs
    profile: str = field(default="", metadata=INTERNAL)
    # checkpoints a trial keeps: its best (by the job's metric) and its latest (runner.checkpoint_config)
    keep_checkpoints: int = field(default=2, metadata=PHASE)
    # the user says storage_path (and local manifests) are mounted at the same path on every node
    storage_shared: bool = False
    # where trials log besides the experiment directory: tensorboard (always), mlflow, wandb
    loggers: list = field(default_factory=lambda: ["tensorboard"])
    # what the job's author calls working, checked after the run (analysis.bars; `speechtune bars`)
    bars: tuple = ()
    raw: dict = field(default_factory=dict, metadata=INTERNAL)  # the job as loaded (profile applied)
    space: SearchSpace | None = field(default=None, metadata=INTERNAL)  # search_space parsed at load

    def checkpoints_kept(self) -> int:
        """``keep_checkpoints`` and what the scheduler needs besides: PBT two more, so that a donor's
        checkpoint is still there when its recipient loads it (Ray warns at num_to_keep <= 2)."""
        return self.keep_checkpoints + (2 if self.scheduler.name == "pbt" else 0)

    def tune_space(self) -> dict:
        """Tune domains of the sampled dimensions (grid dimensions: ``grid_values``)."""
        return dict(self.space.domains)

    def grid_values(self) -> dict[str, list]:
        return dict(self.space.grid)

    def tuned_keys(self) -> list[str]:
        """What this job (phase) chooses: its search dimensions and what its named trials set."""
        keys = dict.fromkeys(self.search_space)
        for p in self.trials.values():
            keys.update(dict.fromkeys(k for k in p if k != "preset"))
        return list(keys)

    def selection(self) -> tuple[str, str]:
        """(metric, mode) that picks each run's best epoch, early-stops it and keeps its
        checkpoints: the job's own pair, or for ``best_M`` / ``M_auc`` the pair of ``M``
        (asr_core.models.Family.selection)."""
        from asr_core.models import get_family

        sel, sel_mode = get_family(self.family).selection(self.metric)
        return sel, (self.mode if self.metric in (sel, f"best_{sel}", f"{sel}_auc") else sel_mode)

    def points(self) -> list[dict]:
        """``points_to_evaluate`` with preset names expanded to the preset's searched values."""
        from asr_core.models import get_family

        out = []
        presets = get_family(self.family).presets
        for p in self.searcher.points_to_evaluate:
            if isinstance(p, str):
                out.append({k: presets[p][k] for k in self.search_space if k in presets[p]})
            else:
                out.append(dict(p))
        return out


    def baseline(self) -> tuple[dict | None, str]:
        """The configuration tuning is judged against, and where it comes from: the first of
        ``points_to_evaluate``; else, for a sampling searcher, what a run gets without tuning
        (the preset's values, the job's params, the family's defaults) for every searched key,
        when each lies inside the searched space (a value outside cannot be sampled by HyperOpt).
        ``(None, why)`` when there is none."""
        pts = self.points()
        if pts:
            return pts[0], "the job's first point (`points_to_evaluate`)"
        if self.trials or not self.search_space:
            return None, "no first point and no searched parameters"
        if self.searcher.name not in DRAWING_SEARCHERS:
            return None, f"no first point (a {self.searcher.name} search runs its own configurations)"
        from asr_core.models import get_family
        from asr_core.train.config import _GROUPS

        fam = get_family(self.family)
        given = {**fam.train_defaults, **(fam.presets[self.preset] if self.preset else {}), **self.params}
        defaults = {f.name: f for _, c in (*_GROUPS, ("model", fam.config_cls)) for f in dataclasses.fields(c)}
        point = {}
        for k, spec in self.search_space.items():
            if k in given:
                v = given[k]
            elif k in defaults and defaults[k].default is not dataclasses.MISSING:
                v = defaults[k].default
            elif k in defaults and defaults[k].default_factory is not dataclasses.MISSING:
                v = defaults[k].default_factory()
            else:
                return None, f"`{k}` has no default value"
            why = _outside(spec, v)
            if why:
                return None, f"the untuned value of `{k}` ({v!r}) {why}"
            point[k] = v
        return point, f"the untuned values ({'preset `' + self.preset + '`, ' if self.preset else ''}job params, defaults)"

    def first_points(self) -> list[dict]:
        """The configurations a searcher proposes first: ``points_to_evaluate``, else the baseline."""
        pts = self.points()
        if not pts and self.scheduler.name != "pbt":
            base, _ = self.baseline()
            pts = [base] if base else []
        return pts


DOC_KEYS = {"description"}  # read by people and reports, not by the loader
TOP_KEYS = {f.name for f in dataclasses.fields(JobSpec) if not f.metadata.get("internal")} | {"profiles"} | DOC_KEYS
PHASE_KEYS = {f.name for f in dataclasses.fields(JobSpec) if f.metadata.get("phase")} | DOC_KEYS
OPT_PLACEHOLDER = "<OPT>"


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_job(path: str | Path, profile: str | None = None) -> JobSpec:
    """Read and check a job file; ``profile`` overlays one of its ``profiles`` first."""
    data, lines = load_with_lines(path)
    return job_from_dict(data, Locator(path, lines), str(path), profile)


def job_from_dict(data: dict, loc: Locator, path: str, profile: str | None = None) -> JobSpec:
    data = copy.deepcopy(data)
    profiles = data.pop("profiles", None) or {}
    if not isinstance(profiles, dict):
        raise InputError(loc("profiles"), "'profiles' must be a mapping of name -> overrides")
    if profile:
        if profile not in profiles:
            raise InputError(loc("profiles"), f"unknown profile '{profile}' (this job has: {sorted(profiles) or 'none'})")
        over = copy.deepcopy(profiles[profile])
        phase_over = over.pop("phases", {}) or {}
        data = deep_merge(data, over)
        loc = loc.within(f"profiles.{profile}.")
        if phase_over:
            names = [ph.get("name") for ph in data.get("phases") or []]
            for pname, pover in phase_over.items():
                if pname not in names:
                    raise InputError(loc(f"phases.{pname}"), f"profile '{profile}' overrides unknown phase "
                                                              f"'{pname}' (phases: {names})")
                i = names.index(pname)
                data["phases"][i] = deep_merge(data["phases"][i], pover)
    phases = data.pop("phases", None) or []
    job = build_job(data, loc, path)
    job.profile, job.raw = profile or "", {**copy.deepcopy(data), **({"phases": phases} if phases else {})}
    if phases:
        if not isinstance(phases, list):
            raise InputError(loc("phases"), "'phases' must be a list of phases")
        seen: set[str] = set(job.params) | set(job.tuned_keys())
        names: set[str] = set()
        for i, ph in enumerate(phases):
            ploc = loc.within(*(f"{p}phases.{i}." for p in loc.prefixes))
            if profile:
                ploc = ploc.within(f"profiles.{profile}.phases.{ph.get('name')}.")
            if not isinstance(ph, dict) or "name" not in ph:
                raise InputError(loc(f"phases.{i}"), "each phase is a mapping with a 'name'")
            bad = sorted(set(ph) - PHASE_KEYS)
            if bad:
                raise InputError(ploc(bad[0]), f"unknown key '{bad[0]}' in a phase; known: {sorted(PHASE_KEYS)}")
            if ph["name"] in names:
                raise InputError(ploc("name"), f"two phases named '{ph['name']}'")
            names.add(ph["name"])
            if i == 0 and ph.get("init_from"):
                raise InputError(ploc("init_from"), "the first phase has no previous phase to start from")
            for k, v in _opt_values(ph).items():
                missing = sorted(expr.opt_names(v, k) - seen)
                if missing:
                    raise InputError(ploc(k), f"'{v}' needs <OPT> of {missing}, which no earlier phase chooses "
                                              f"and the job does not set")
            sub = build_job(phase_dict(data, ph, {k: None for k in seen}), ploc, path)
            seen |= set(sub.tuned_keys()) | set(sub.params)
        job.phases = phases
    for b in job.bars:
        if b.phase and b.phase not in [ph["name"] for ph in phases]:
            raise InputError(loc(f"bars.{b.name}"), f"bars.{b.name}: no phase named '{b.phase}' "
                                                    f"(phases: {[ph['name'] for ph in phases]})")
    return job


def _opt_values(ph: dict) -> dict[str, str]:
    """Phase values that use <OPT>: params, and ``set`` expressions of generated trials."""
    out = {k: v for k, v in (ph.get("params") or {}).items() if expr.is_opt(v)}
    trials = ph.get("trials") or {}
    if isinstance(trials, dict) and "expand" in trials:
        out.update({k: v for k, v in (trials.get("set") or {}).items() if expr.is_opt(v)})
    return out


def phase_dict(job_data: dict, ph: dict, carried: dict[str, object]) -> dict:
    """The job file's top level with phase ``ph`` laid over it and ``<OPT>`` resolved from
    ``carried`` (key -> value; a None value only checks structure, as at load time)."""
    from asr_core.storage import join

    d = {k: copy.deepcopy(v) for k, v in job_data.items()
         if k not in ("search_space", "trials", "constraints", "phases", "bars")}  # bars: the study's, and
    # outside each phase's fingerprint (a changed bar reruns nothing)
    base = {k: v for k, v in (job_data.get("params") or {}).items() if not expr.is_opt(v)}
    carried = {**base, **carried}  # <OPT> of a key no phase chose is the job's own value
    d["name"] = ph["name"]  # each phase is an experiment under storage_path/<study name>/
    d["storage_path"] = join(str(job_data.get("storage_path", "experiments")), str(job_data.get("name", "study")))
    params = {**(d.get("params") or {}), **{k: v for k, v in carried.items() if v is not None}}
    for k, v in (ph.get("params") or {}).items():
        if expr.is_opt(v):
            if carried.get(k) is None and expr.opt_names(v, k) - {k for k, x in carried.items() if x is not None}:
                continue  # load-time check: structure only
            v = resolve_opt(v, k, carried)
        params[k] = v
    d["params"] = params
    for k in PHASE_KEYS - {"name", "params"} - DOC_KEYS:  # a phase's value replaces the job's
        if k in ph:
            d[k] = copy.deepcopy(ph[k])
    trials = d.get("trials")
    if isinstance(trials, dict) and "expand" in trials:
        ready = all(x is not None for x in carried.values())
        d["trials"] = expand_trials(trials, carried if ready else None, d.get("family"))
    return d


def resolve_opt(value: str, key: str, carried: dict) -> object:
    """``"<OPT>"`` -> the carried value; an expression with <OPT> -> its value."""
    if value.strip() == OPT_PLACEHOLDER:
        return carried[key]
    env = {f"__opt__{k}": v for k, v in carried.items()}
    return expr.evaluate(expr.substitute_opt(value, key), env)


def _check_driver_settings(fixed: dict, probe: dict, space_raw: dict, trials: dict, loc, where: str) -> None:
    """A searched key or a named trial may not change what the driver builds once for every trial
    (features, augmented copies, the checked data: ``asr_core.train.config.set_by_driver``): each
    trial would silently read the driver's features, not its own."""
    from asr_core.train.config import driver_settings, set_by_driver, split_params

    base = {k: v for k, v in probe.items() if k in fixed or k in ("family", "preset", "train_manifest",
                                                                    "dev_manifest")}
    try:
        want = driver_settings(split_params(base, where=where))
    except (InputError, ValueError):  # the driver's own config fails: reported when it runs
        return
    fix = "every trial reads the features and augmented copies the driver built: run one job (or phase) per value"

    def differs(params: dict) -> list[str]:
        try:
            got = driver_settings(split_params(params, where=where))
        except (InputError, ValueError):
            return []
        return [k for k in want if want[k] != got[k]]

    for k, dist in space_raw.items():
        for v in extremes(dist):
            diff = differs({**probe, k: v})
            if diff:
                why = set_by_driver(k) or f"its value {v!r} sets '{diff[0]}', fixed by the driver before the search"
                raise InputError(loc(f"search_space.{k}"), f"'{k}' cannot be searched: {why}; {fix}", key=k)
    for tname, tparams in trials.items():
        diff = differs({**probe, **{k: v for k, v in tparams.items() if v is not None}})
        if diff:
            key = next((k for k in diff if k in tparams), "preset" if "preset" in tparams else diff[0])
            raise InputError(loc(f"trials.{tname}.{key}"),
                             f"trial '{tname}' sets '{diff[0]}' to another value than the job's: "
                             f"{set_by_driver(diff[0])}; {fix}", key=key)


def expand_trials(spec: dict, carried: dict | None, family: str | None = None) -> dict[str, dict]:
    """``{expand: {k: [values]}, set: {k: expression}}`` -> named trials, one per combination.
    Expanded keys that are no run parameter (``lr_mult``) only feed the expressions and the name.
    With ``carried`` None (load time) expressions are checked for names, not evaluated."""
    import itertools

    grid = spec.get("expand") or {}
    sets = spec.get("set") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ValueError("trials.expand must map each key to a non-empty list of values")
    out = {}
    for vals in itertools.product(*grid.values()):
        combo = dict(zip(grid, vals))
        name = ",".join(f"{k}={v}" for k, v in combo.items())
        params = {k: v for k, v in combo.items() if _is_run_key(family, k)}
        for k, e in sets.items():
            if carried is None:
                unknown = expr.names(expr.substitute_opt(str(e), k)) - set(combo) - {
                    n for n in expr.names(expr.substitute_opt(str(e), k)) if n.startswith("__opt__")}
                if unknown:
                    raise ValueError(f"trials.set.{k}: unknown name(s) {sorted(unknown)} in {e!r}")
                params[k] = None
            else:
                env = {**{f"__opt__{c}": v for c, v in carried.items()}, **combo}
                params[k] = expr.evaluate(expr.substitute_opt(str(e), k), env)
        out[name] = params
    return out


def build_job(data: dict, loc: Locator, path: str) -> JobSpec:
    """One job (or one phase laid over its job) from its YAML mapping, checked; ``loc`` names
    lines. One parser a section, in the order a reader meets them; the first error stops it."""
    _check_top_keys(data, loc, path)
    dspec = _section(data, loc, DataSpec, "data")
    searcher = _section(data, loc, SearcherSpec, "searcher")
    resources = _section(data, loc, ResourcesSpec, "resources")
    params = data.get("params") or {}
    space_raw = data.get("search_space") or {}
    if not isinstance(params, dict):
        raise InputError(loc("params"), "'params' must be a mapping")
    space = SearchSpace.parse(space_raw, loc)
    trials = _named_trials(data, loc)
    sname, sched, mutations = _method(data, loc, searcher, space, trials)
    scheduler = SchedulerSpec(sname, {k: v for k, v in sched.items() if k != "hyperparam_mutations"}, mutations)
    fam, metric_name, mode = _metric_and_mode(data, loc, params)
    require = _require(data, loc, fam)
    probe, run = _check_a_trial_config(data, loc, path, params, space_raw, sname, mutations, trials)
    constraints = _constraints(data, loc, run.params, space_raw, trials)
    _check_every_value(probe, {"search_space": space_raw, "scheduler.hyperparam_mutations":
                               mutations.written if mutations is not None else {}}, constraints, run.params, loc, path)
    _check_points(searcher, fam, space_raw, loc, probe, str(path))
    num_trials, max_conc, max_failures, repeats = _counts(data, loc, path, trials, space, searcher)
    _check_scheduler(scheduler, metric_name, mode, run.train.epochs, max_conc, loc)
    init_from = str(data.get("init_from") or "")
    if init_from not in ("", "best"):
        raise InputError(loc("init_from"), f"init_from is 'best' (the previous phase's best checkpoint), got {init_from!r}")
    return JobSpec(
        path=str(path), name=str(data.get("name", Path(path).stem)), family=data["family"],
        preset=data.get("preset"), data=dspec, params=params, search_space=space_raw, searcher=searcher,
        scheduler=scheduler, metric=metric_name, mode=mode,
        num_trials=num_trials, max_concurrent=max_conc, resources=resources,
        storage_path=str(data.get("storage_path", "experiments")), max_failures=max_failures,
        test_eval=bool(data.get("test_eval", True)), trials=trials, constraints=constraints,
        require=require, init_from=init_from, repeats=repeats, storage_shared=_bool(data, "storage_shared", loc),
        space=space, loggers=_loggers(data, loc), keep_checkpoints=_keep_checkpoints(data, loc),
        bars=_bars(data, loc, fam),
    )


def _check_top_keys(data: dict, loc: Locator, path: str) -> None:
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise InputError(loc(unknown[0]), f"unknown key '{unknown[0]}' in job file; known keys: {sorted(TOP_KEYS)}")
    for req in ("family", "data"):
        if req not in data:
            raise InputError(str(path), f"missing required key '{req}'")


def _section(data: dict, loc: Locator, cls, key: str):
    """A mapping section as its dataclass; an error names the offending sub-key's line."""
    raw = data.get(key, {})
    if not isinstance(raw, dict):
        raise InputError(loc(key), f"'{key}' must be a mapping")
    try:
        return from_dict(cls, raw, where=loc(key))
    except InputError as e:  # point at the offending sub-key's line
        if e.key in raw:
            raise InputError(loc(f"{key}.{e.key}"), e.message, key=e.key) from None
        raise


def _named_trials(data: dict, loc: Locator) -> dict:
    """``trials``: name -> params, or ``{expand: ..., set: ...}`` expanded."""
    trials_raw = data.get("trials") or {}
    try:
        trials = expand_trials(trials_raw, None, data["family"]) \
            if isinstance(trials_raw, dict) and "expand" in trials_raw else trials_raw
    except ValueError as e:
        raise InputError(loc("trials"), str(e)) from None
    if not isinstance(trials, dict) or not all(isinstance(v, dict) for v in trials.values()):
        raise InputError(loc("trials"), "'trials' maps a trial name to its params "
                                        "(or is {expand: {key: [values]}, set: {key: expression}})")
    return trials


def _method(data: dict, loc: Locator, searcher: SearcherSpec, space: SearchSpace, trials: dict):
    """The searcher's name (defaults set on ``searcher``) and the scheduler: its name, its
    options as written and PBT's mutations, each checked against the other."""
    default_sched, default_searcher = default_method(str(data.get("family")))
    space_raw = data.get("search_space") or {}
    if "name" not in (data.get("searcher") or {}):
        # nothing to model without a space: random (TPE needs one)
        searcher.name = default_searcher if space_raw else "random"
    if space.grid and searcher.name in MODEL_SEARCHERS:
        raise InputError(loc("searcher.name"),
                         f"grid dimensions need searcher 'random' or 'grid', not {searcher.name}")
    if trials and "searcher" not in data:
        searcher.name = "grid"
    if trials and searcher.name != "grid":
        raise InputError(loc("searcher.name"), "named trials run with searcher 'grid'")
    # the family's default method is a pair: a job that names its searcher, runs named trials or
    # has nothing to search keeps Tune's default scheduler (fifo: every configuration to the end)
    if "name" in (data.get("searcher") or {}) or trials or not space_raw:
        default_sched = "fifo"
    sched = dict(data.get("scheduler") or {"name": default_sched})
    sname = sched.pop("name", default_sched)
    if sname not in SCHEDULERS:
        raise InputError(loc("scheduler.name"), f"unknown scheduler: {sname} (known: {list(SCHEDULERS)})")
    options = scheduler_options(sname)
    bad = sorted(set(sched) - options)
    if bad:
        raise InputError(loc(f"scheduler.{bad[0]}"), f"unknown option '{bad[0]}' for scheduler {sname}; "
                                                      f"known: {sorted(options)}")
    if searcher.name not in SEARCHERS_FOR[sname]:
        raise InputError(loc("searcher.name"), f"scheduler {sname} runs with searcher "
                                               f"{' or '.join(SEARCHERS_FOR[sname])}, not {searcher.name}")
    mutations = None
    if sname == "pbt":
        muts = sched.get("hyperparam_mutations")
        if not isinstance(muts, dict) or not muts:
            raise InputError(loc("scheduler.hyperparam_mutations"), "pbt needs hyperparam_mutations "
                                                                     "(parameter -> distribution)")
        mutations = SearchSpace.parse(muts, lambda k: loc(f"scheduler.hyperparam_mutations.{k.split('.', 1)[-1]}"))
        if trials or space.grid or data.get("constraints"):
            raise InputError(loc("scheduler.name"), "pbt samples its population itself: use searcher 'random', "
                                                    "no grid, named trials or constraints")
    return sname, sched, mutations


def _metric_and_mode(data: dict, loc: Locator, params: dict):
    """The family (None when unknown: reported with its line later), the job's metric, checked
    against the family's registry, and its mode; the runs' selection is the metric's, not params'."""
    from asr_core.models import get_family

    try:
        fam = get_family(str(data.get("family")))
        default_metric, default_mode = fam.default_metric, fam.default_mode
    except ValueError:  # reported with its line by the trial config's check
        fam, default_metric, default_mode = None, "val_cer", "min"
    if fam is not None and data.get("preset") is not None and data["preset"] not in fam.presets:
        raise InputError(loc("preset"), f"unknown preset for {fam.name}: {data['preset']} "
                                        f"(known: {sorted(fam.presets)})")
    metric_name = str(data["metric"]) if "metric" in data else default_metric
    if fam is not None:
        try:
            default_mode = fam.metric(metric_name).mode
        except ValueError as e:
            raise InputError(loc("metric"), str(e)) from None
    mode = data.get("mode", default_mode)
    if mode not in ("min", "max"):
        raise InputError(loc("mode"), f"mode must be 'min' or 'max', got {mode!r}")
    if fam is not None and mode != default_mode:  # the worst checkpoint would be kept, tested and carried
        raise InputError(loc("mode"), f"{metric_name} is better {'lower' if default_mode == 'min' else 'higher'} "
                                      f"(mode {default_mode}); mode {mode} would select the worst trial and "
                                      f"checkpoint: write mode: {default_mode}, or leave mode out", key="mode")
    if fam is not None:
        # the job's metric decides the runs' selection; a second opinion in params would split it
        sel, _ = fam.selection(metric_name)
        for key, want in (("select_metric", sel), ("select_mode", None)):
            if key in params and (want is None or params[key] != want):
                raise InputError(loc(f"params.{key}"), f"'{key}' is set from the job's metric ({metric_name}, "
                                                       f"{mode}): set 'metric'/'mode' instead")
    return fam, metric_name, mode


def _require(data: dict, loc: Locator, fam) -> dict:
    """``require``: metric -> {min: x} and/or {max: x}, each metric one the family reports, each
    bound a number, min <= max (else nothing could meet it and test evaluation would be skipped
    after the whole search)."""
    require = data.get("require") or {}
    if not isinstance(require, dict) or not all(isinstance(v, dict) and set(v) <= {"min", "max"} and v
                                                 for v in require.values()):
        raise InputError(loc("require"), "'require' maps a metric to {min: x} and/or {max: x}, "
                                         "e.g. {val_lid_acc: {min: 0.9}}")
    for m, bounds in require.items():
        where = loc(f"require.{m}")
        if fam is not None:
            try:
                fam.metric(str(m))
            except ValueError as e:
                raise InputError(where, f"require: {e}", key=m) from None
        for side, v in bounds.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                raise InputError(where, f"require.{m}.{side} is a number, got {v!r}", key=m)
        if bounds.get("min", float("-inf")) > bounds.get("max", float("inf")):
            raise InputError(where, f"require.{m}: min {bounds['min']} > max {bounds['max']}: no trial can meet it",
                             key=m)
    return require


def _check_a_trial_config(data: dict, loc: Locator, path: str, params: dict, space_raw: dict, sname: str,
                          mutations, trials: dict) -> tuple[dict, dict]:
    """A representative trial config (base params and one value a dimension) through the run's
    own parser, then every value of each dimension, every named trial too, PBT's mutations against
    what a running trial can take and the keys the driver builds; an error names the key's line.
    Returns (probe, the representative trial's RunConfig)."""
    from asr_core.train.config import fixed_in_run, split_params

    sample = {k: _representative(v) for k, v in space_raw.items()}
    fixed = {k: v for k, v in params.items() if not expr.is_opt(v)}
    probe = {"family": data["family"], "train_manifest": "x", "dev_manifest": "x", **fixed, **sample}
    if data.get("preset") is not None:
        probe["preset"] = data["preset"]
    if sname == "pbt":
        sample.update({k: _representative(v) for k, v in mutations.written.items()})
    try:
        run = split_params({**probe, **sample}, where=str(path))
    except (InputError, ValueError) as whole:
        raise _blame(whole, data, loc, path, probe, sample, fixed, space_raw) from None
    if sname == "pbt":  # a mutation must take effect in the running trial it is applied to
        for k, dist in mutations.written.items():
            why = fixed_in_run({**probe, **sample}, k, extremes(dist), where=str(path))
            if why:
                raise InputError(loc(f"scheduler.hyperparam_mutations.{k}"),
                                 f"PBT cannot mutate '{k}': {why}; search it with another scheduler")
    for tname, tparams in trials.items():
        try:
            split_params({**probe, **{k: v for k, v in tparams.items() if v is not None}}, where=str(path))
        except (InputError, ValueError) as e:
            raise InputError(loc(f"trials.{tname}"), getattr(e, "message", str(e))) from None
    _check_driver_settings(fixed, probe, space_raw, trials, loc, str(path))
    return probe, run


def _check_every_value(probe: dict, sections: dict[str, dict], constraints: list[str], fixed: dict,
                       loc: Locator, path: str) -> None:
    """Every value a searched dimension can hand a trial, through the run's own parser, one
    dimension at a time over the representative config: every listed value, a range's two ends
    (Tune's uniform never reaches ``high``: the float just below it), and a continuous
    distribution of an integer key refused (each draw would fail its trial mid-search). A value
    that fails a check across keys passes when the job's constraints keep it to combinations
    that parse (``hidden_dim % attention_heads == 0``)."""
    import math

    from asr_core.train.config import key_type

    dims = {k: d for section in sections.values() for k, d in section.items()}
    base = {**probe, **{k: _representative(d) for k, d in dims.items()}}
    for section, space in sections.items():
        for k, dist in space.items():
            (kind, args), = dist.items()
            where = loc(f"{section}.{k}")
            if kind in ("uniform", "loguniform") and key_type(probe["family"], k) is int:
                raise InputError(where, f"'{k}' takes integers: search it with randint: [low, high) or "
                                        f"choice: [...], not {kind}", key=k)
            values = extremes(dist)
            if kind in ("uniform", "loguniform"):
                values[1] = math.nextafter(values[1], values[0])
            for v in values:
                e = _parse_error({**base, k: v}, path)
                if e is not None and constraints and _constrained_ok(base, dims, k, v, constraints, fixed, path):
                    e = None
                if e is not None:
                    shown = f"{v:.6g}" if isinstance(v, float) else repr(v)
                    raise InputError(where, f"value {shown} of {kind} {args}: {getattr(e, 'message', e)}", key=k)


def _parse_error(params: dict, path: str) -> Exception | None:
    from asr_core.train.config import split_params

    try:
        split_params(params, where=path)
    except (InputError, ValueError) as e:
        return e
    return None


def _constrained_ok(base: dict, dims: dict, key: str, value, constraints: list[str], fixed: dict, path: str,
                    most: int = 256) -> bool:
    """Does ``key=value`` parse in every combination of the other dimensions' end values that the
    constraints let through (``most`` combinations at most)? True when none gets through: the
    searcher never hands that value to a trial."""
    import itertools

    others = {k: extremes(d) for k, d in dims.items() if k != key}
    for combo in itertools.islice(itertools.product(*others.values()), most):
        cfg = {**base, **dict(zip(others, combo)), key: value}
        if all(expr.evaluate(c, {**fixed, **cfg}) for c in constraints) and _parse_error(cfg, path) is not None:
            return False
    return True


def _check_scheduler(spec: SchedulerSpec, metric: str, mode: str, epochs: int, max_concurrent: int,
                     loc: Locator) -> None:
    """The scheduler built once at load, so that Ray's own rules (its constructor's asserts:
    grace_period <= max_t, reduction_factor > 1, ...) stop a bad option here, named, before Ray
    starts; an option whose default is a number must be one (Ray would compare 'two' > 0)."""
    from tune_jobs.registry import scheduler_parameters

    params = scheduler_parameters(spec.name)
    for k, v in spec.options.items():
        d = params[k].default
        if isinstance(d, (int, float)) and not isinstance(d, bool) and (
                isinstance(v, bool) or not isinstance(v, (int, float))):
            raise InputError(loc(f"scheduler.{k}"), f"scheduler option '{k}' is a number (default {d}), got {v!r}",
                             key=k)
    try:
        spec.make(metric, mode, epochs=epochs, max_concurrent=max_concurrent)
    except (AssertionError, ValueError, TypeError) as e:
        said = str(e).lower().replace(" ", "_")
        named = [k for k in spec.options if k in said]
        raise InputError(loc(f"scheduler.{named[0]}" if named else "scheduler"),
                         f"scheduler {spec.name} refuses {spec.options or 'its defaults'}: {e}",
                         key=named[0] if named else None) from None


def _blame(whole: Exception, data: dict, loc: Locator, path: str, probe: dict, sample: dict, fixed: dict,
           space_raw: dict) -> InputError:
    """The error of a probe config, at the line of the key to blame: the one the error carries,
    else the first that fails alone (a check across keys, e.g. heads that must divide a width)."""
    from asr_core.train.config import split_params

    k, msg = getattr(whole, "key", None), getattr(whole, "message", str(whole))
    if k in ("family", "preset"):
        return InputError(loc(k), msg, key=k)
    if k not in sample and k not in fixed:
        k = None
        for key in [*fixed, *sample]:
            try:
                split_params({"family": data["family"], "preset": data.get("preset"), "train_manifest": "x",
                              "dev_manifest": "x", key: {**probe, **sample}[key]}, where=str(path))
            except InputError as e:
                k, msg = key, e.message
                break
    if k is None:
        return InputError(str(path), msg)
    section = "params" if k in fixed and k not in sample else (
        "search_space" if k in space_raw else "scheduler.hyperparam_mutations")
    return InputError(loc(f"{section}.{k}"), msg, key=k)


def _constraints(data: dict, loc: Locator, merged: dict, space_raw: dict, trials: dict) -> list[str]:
    """``constraints``: expressions over known parameters only."""
    constraints = data.get("constraints") or []
    if not isinstance(constraints, list):
        raise InputError(loc("constraints"), "'constraints' is a list of expressions")
    known = set(merged) | set(space_raw) | {k for p in trials.values() for k in p}
    for c in constraints:
        try:
            missing = expr.names(str(c)) - known
        except expr.ExprError as e:
            raise InputError(loc("constraints"), str(e)) from None
        if missing:
            raise InputError(loc("constraints"), f"constraint {c!r} names unknown parameter(s) {sorted(missing)}")
    return [str(c) for c in constraints]


def _check_points(searcher: SearcherSpec, fam, space_raw: dict, loc: Locator, probe: dict, path: str) -> None:
    """``searcher.points_to_evaluate``: presets the family has, values inside the space, and each
    point through the run's own parser over the representative config, as named trials are (a
    point's bad value failed its trial mid-search)."""
    for i, p in enumerate(searcher.points_to_evaluate):
        if isinstance(p, str) and (fam is None or p not in fam.presets):
            raise InputError(loc("searcher.points_to_evaluate"),
                             f"point {i}: unknown preset '{p}' (known: {sorted(fam.presets) if fam else []})")
        values = {k: fam.presets[p][k] for k in space_raw if k in fam.presets[p]} if isinstance(p, str) else p
        for k, v in (values or {}).items():
            why = _outside(space_raw.get(k), v)
            if why:
                raise InputError(loc("searcher.points_to_evaluate"),
                                 f"point {i}{f' (preset {p})' if isinstance(p, str) else ''}: {k}={v!r} {why}")
        if isinstance(p, dict):
            e = _parse_error({**probe, **p}, path)
            if e is not None:
                raise InputError(loc("searcher.points_to_evaluate"), f"point {i}: {getattr(e, 'message', e)}")


def _counts(data: dict, loc: Locator, path: str, trials: dict, space: SearchSpace, searcher: SearcherSpec):
    """(num_trials, max_concurrent, max_failures, repeats): with a grid or named trials, as in
    Tune, num_trials repeats the whole grid."""
    try:
        max_conc = int(data.get("max_concurrent", 1))
        max_failures = int(data.get("max_failures", 0))
        num_trials = int(data.get("num_trials", 1))
        repeats = 1
        if trials or space.grid:
            from tune_jobs.searchers import grid_size

            repeats = num_trials
            num_trials = grid_size(space.grid, trials, searcher.points_to_evaluate) * repeats
    except (TypeError, ValueError) as e:
        raise InputError(str(path), f"num_trials/max_concurrent/max_failures must be integers ({e})") from None
    for key, least in (("num_trials", 1), ("max_concurrent", 1), ("max_failures", 0)):
        value = int(data.get(key, least))  # as written (a grid's num_trials counts repeats)
        if value < least:
            raise InputError(loc(key), f"'{key}' must be >= {least}, got {value}")
    return num_trials, max_conc, max_failures, repeats


def _bars(data: dict, loc: Locator, fam) -> tuple:
    """``bars``: figure -> "OP VALUE" (analysis.bars); a figure is one of ``FIGURES`` or a metric
    the family reports. A phase qualifier (``finetune.gain``) is checked against the phases by
    ``job_from_dict``."""
    from analysis.bars import BarError, parse_bars

    def is_metric(name: str) -> bool:
        try:
            return fam is None or bool(fam.metric(name))
        except ValueError:
            return False

    try:
        return parse_bars(data.get("bars"), lambda k: loc(f"bars.{k}" if k else "bars"), is_metric)
    except BarError as e:
        raise InputError(e.where, e.message) from None


def _loggers(data: dict, loc) -> list[str]:
    from tune_jobs.registry import LOGGERS, missing_logger

    names = data.get("loggers", ["tensorboard"])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(loc("loggers"), f"'loggers' is a list of names ({', '.join(LOGGERS)}), got {names!r}")
    for n in names:
        if n not in LOGGERS:
            raise InputError(loc("loggers"), f"unknown logger '{n}' (known: {', '.join(LOGGERS)})")
        why = missing_logger(n)
        if why:
            raise InputError(loc("loggers"), why)
    return list(dict.fromkeys(["tensorboard", *names]))


def _keep_checkpoints(data: dict, loc) -> int:
    v = data.get("keep_checkpoints", 2)
    if isinstance(v, bool) or not isinstance(v, int) or v < 2:
        raise InputError(loc("keep_checkpoints"), f"'keep_checkpoints' is an integer >= 2 (a trial's best and its "
                                                  f"latest, which a paused trial resumes from), got {v!r}")
    return v


def _bool(data: dict, key: str, loc) -> bool:
    v = data.get(key, False)
    if not isinstance(v, bool):
        raise InputError(loc(key), f"'{key}' must be true or false, got {v!r}")
    return v


def _is_run_key(family: str | None, key: str) -> bool:
    """Is ``key`` a parameter of a run of ``family`` (else a helper of generated trials)?"""
    from asr_core.models import get_family
    from asr_core.train.config import _GROUPS, RESERVED

    try:
        fam = get_family(str(family))
    except ValueError:
        return True
    return key in RESERVED or key in fam.config_keys() or any(
        key in {f.name for f in dataclasses.fields(c)} for _, c in _GROUPS)


def _outside(spec: Any, v: Any) -> str:
    """Why value ``v`` lies outside the written distribution ``spec`` ('' when inside)."""
    if not isinstance(spec, dict) or len(spec) != 1:
        return "is not a searched parameter" if spec is None else ""
    (kind, args), = spec.items()
    if kind in ("choice", "grid"):
        return "" if v in args else f"is not one of {kind} {args}"
    lo, hi = float(args[0]), float(args[1])
    try:
        ok = lo <= float(v) < hi if kind == "randint" else lo <= float(v) <= hi
    except (TypeError, ValueError):
        ok = False
    return "" if ok else f"is outside {kind} {args}"


def _representative(spec: Any) -> Any:
    if isinstance(spec, dict) and len(spec) == 1:
        (kind, args), = spec.items()
        if kind == "randint":
            return int(args[0])
        if isinstance(args, list) and args:
            return args[0]
    return spec
