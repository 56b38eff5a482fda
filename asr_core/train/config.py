"""A run's flat parameter dict, split into training, data and family configs.

Users write one flat namespace (``lr``, ``batch_bins``, ``lstm_hidden`` ...), as in the seeds'
tables; every key must belong to exactly one of the three dataclasses below.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from asr_core.config import from_dict
from asr_core.data.augment import WAVEFORM_KEYS, AugmentConfig
from asr_core.data.features import READ_TIME_KEYS, FeatureConfig
from asr_core.errors import InputError, KeyProblem
from asr_core.models import get_family


@dataclass
class TrainConfig:
    epochs: int = 10
    nepochs: int = 0  # seed 000's name for ``epochs``; when > 0 it sets ``epochs``
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw", "adamax", "adagrad", "sgd"] = "adamw"
    weight_decay: float = 0.0
    # weight decay on biases and normalisation gains too (every parameter of fewer than 2
    # dimensions); off by default, as in nanoGPT, torchtune and ESPnet recipes (asr_core.train.schedules)
    decay_bias_and_norm: bool = False
    momentum: float = 0.9  # sgd only
    batch_bins: int = 400_000  # ESPnet "numel" meaning, see asr_core.data.batching
    batch_size: int = 0  # > 0: this many utterances a batch (seeds 001/002's BATCH) instead of batch_bins
    accum_grad: int = 1  # optimizer step every accum_grad batches
    prefetch: int = 4  # batches assembled ahead by a background thread; 0 = in the training step
    grad_clip: float = 5.0  # max gradient norm; 0 = off
    # Learning-rate schedule (asr_core.train.schedules): per step unless noted.
    schedule: Literal["constant", "noam", "cosine", "cosine_restarts", "plateau", "step"] = "cosine"
    warmup_steps: int = 0
    warmup_epochs: float = 0.0  # seed 004's warm-up in epochs (0.2); added to warmup_steps
    cosine_stages: int = 1  # cosine: the span after warm-up split into this many restarts (seed 004: 3)
    restart_steps: int = 1000  # cosine_restarts: first period (SGDR T_0)
    restart_mult: float = 1.0  # cosine_restarts: period growth (SGDR T_mult)
    min_lr: float = 0.0
    plateau_patience: int = 3  # plateau: epochs without improvement of select_metric
    plateau_factor: float = 0.5
    step_size: int = 10  # step: epochs between decays
    step_gamma: float = 0.5
    amp: bool = False  # mixed precision: fp16 + loss scaling on CUDA, bf16 on CPU
    early_stop_patience: int = 0  # epochs without improvement of select_metric; 0 = off
    early_stop_min_delta: float = 0.0
    select_metric: str = ""  # metric that picks the best epoch; "" = the family's default
    select_mode: Literal["", "min", "max"] = ""
    target_metric: str = ""  # steps_to_target: first step at which this metric passes target_value
    target_value: float = float("nan")
    finetune: bool = False  # a checkpoint from another run gives weights only; epochs/schedule restart
    seed: int = 0

    def validate(self) -> None:
        if self.nepochs > 0:
            self.epochs = self.nepochs
        if self.epochs < 1:
            raise KeyProblem("epochs", "key 'epochs' must be >= 1")
        if self.lr <= 0:
            raise KeyProblem("lr", "key 'lr' must be > 0")
        if self.batch_bins <= 0 or self.batch_size < 0:
            raise KeyProblem("batch_bins", "key 'batch_bins' must be > 0 and 'batch_size' >= 0")
        if self.prefetch < 0:
            raise KeyProblem("prefetch", "key 'prefetch' must be >= 0")
        if self.accum_grad < 1:
            raise KeyProblem("accum_grad", "key 'accum_grad' must be >= 1")
        if self.cosine_stages < 1 or self.restart_steps < 1 or self.restart_mult < 1:
            raise KeyProblem("cosine_stages", "keys 'cosine_stages', 'restart_steps' and 'restart_mult' must be >= 1")
        if self.schedule == "plateau" and (self.warmup_steps or self.warmup_epochs):
            raise KeyProblem("schedule", "key 'schedule': plateau takes no warm-up (set warmup_steps: 0)")
        if self.target_metric and self.target_value != self.target_value:
            raise KeyProblem("target_value", "key 'target_value' is required with 'target_metric'")


@dataclass
class DataConfig:
    train_manifest: str = ""
    dev_manifest: str = ""
    cache_dir: str = ""  # this node's cache (the memory-mapped copy of the features)
    feature_store: str = ""  # where the job's features are stored (object storage, shared path); "" = the cache
    train_features: str = ""  # the store entries the job's driver built for the two manifests (set by
    dev_features: str = ""    # the runner: a trial's workers use them without computing keys again)
    train_aug_features: list[str] = dataclasses.field(default_factory=list)  # ... and the augmented copies
    skip_bad: bool = False
    max_train_utts: int = 0  # 0 = all; a small number overfits a subset (tests)
    # longest utterance (seconds) a run accepts; 0 = the longest that fits batch_bins alone
    # (batch_bins / n_mels frames). A longer one is an error naming it, or skipped with skip_bad.
    max_duration: float = 0.0
    with_lang_tag: bool = False  # prefix targets with the language tag token

    def validate(self) -> None:
        if not self.train_manifest or not self.dev_manifest:
            raise KeyProblem("train_manifest", "keys 'train_manifest' and 'dev_manifest' are required")
        if self.max_duration < 0:
            raise KeyProblem("max_duration", "key 'max_duration' must be >= 0")


@dataclass
class RunConfig:
    family: str
    preset: str | None
    train: TrainConfig
    data: DataConfig
    features: FeatureConfig
    model: Any
    augment: AugmentConfig
    params: dict  # the flat dict it came from, with presets and family defaults (recorded in checkpoints)
    given: dict = dataclasses.field(default_factory=dict)  # the flat dict as given (what a trial config carries)


_GROUPS = (("train", TrainConfig), ("data", DataConfig), ("features", FeatureConfig), ("augment", AugmentConfig))
RESERVED = {"family", "preset", "experiment"}  # experiment: a named trial's name (seed 001)


def _family_of(params: dict, where: str):
    """The family and the preset ``params`` name, both checked."""
    if "family" not in params:
        raise InputError(where, "key 'family' is required", key="family")
    try:
        family = get_family(params["family"])
    except ValueError as e:
        raise InputError(where, str(e), key="family") from None
    preset = params.get("preset")
    if preset is not None and preset not in family.presets:
        raise InputError(where, f"unknown preset for {family.name}: {preset} (known: {sorted(family.presets)})",
                         key="preset")
    return family, preset


def _grouped(params: dict, family, where: str) -> tuple[dict[str, dict], dict]:
    """Each key to its config group (``_GROUPS``) or to the model's config; an unknown key names itself."""
    groups: dict[str, dict] = {g: {} for g, _ in _GROUPS}
    model: dict = {}
    known = {g: {f.name for f in dataclasses.fields(cls)} for g, cls in _GROUPS}
    model_keys = family.config_keys()
    for k, v in params.items():
        if k in RESERVED:
            continue
        owner = [g for g in known if k in known[g]]
        if owner:
            groups[owner[0]][k] = v
        elif k in model_keys:
            model[k] = v
        else:
            allowed = sorted(set().union(*known.values(), model_keys))
            raise InputError(where, f"unknown key '{k}' for family {family.name}; known keys: {allowed}", key=k)
    return groups, model


def _check_family_fit(family, train: TrainConfig, augment: AugmentConfig, features: FeatureConfig,
                      augment_keys: dict, where: str) -> None:
    """What a config may say only of some families: metrics it reports, augmentation, CMVN."""
    for key in ("select_metric", "target_metric"):  # names the family reports (asr_core.metrics)
        name = getattr(train, key)
        if name and name not in family.validation_metrics:
            raise InputError(where, f"key '{key}': '{name}' is not a validation metric of {family.name}; "
                                    f"it reports: {', '.join(sorted(family.validation_metrics))}", key=key)
    if family.decode is None and not augment.is_default():
        key = next(iter(augment_keys))
        raise InputError(where, f"key '{key}': augmentation is for the ASR families; {family.name} learns to "
                                "produce features, not to transcribe them", key=key)
    if family.decode is None and features.cmvn != "global":
        raise InputError(where, f"key 'cmvn': {family.name} predicts the features, which it must learn at the "
                                "training set's scale; only 'global' applies", key="cmvn")


def split_params(params: dict, where: str = "<config>") -> RunConfig:
    """``{"family": ..., "preset": ..., **flat}`` -> RunConfig; unknown keys name themselves."""
    family, preset = _family_of(params, where)
    given = dict(params)
    # A preset is a flat dict like the user's (seed tables mix model and training keys).
    merged = {**family.train_defaults, **(family.presets[preset] if preset else {}), **params}
    if "epochs" in params and "nepochs" not in params:  # the user's epochs beat a preset's nepochs
        merged.pop("nepochs", None)
    groups, model = _grouped(merged, family, where)
    try:
        model_cfg = family.make_config(model, where=where)
    except InputError:
        raise
    except ValueError as e:
        raise InputError(where, str(e)) from None
    train = from_dict(TrainConfig, groups["train"], where)
    augment = from_dict(AugmentConfig, groups["augment"], where)
    features = from_dict(FeatureConfig, groups["features"], where)
    _check_family_fit(family, train, augment, features, groups["augment"], where)
    return RunConfig(family=family.name, preset=preset, train=train, data=from_dict(DataConfig, groups["data"], where),
                     features=features, model=model_cfg, augment=augment, params=dict(merged), given=given)


def key_type(family: str, key: str) -> Any:
    """The declared type of run key ``key`` of ``family`` (``int | None`` -> int), None when the
    key is no field (a job's loader asks before it draws a value of a searched key)."""
    import types
    import typing

    for cls in (*(c for _, c in _GROUPS), get_family(family).config_cls):
        if key in {f.name for f in dataclasses.fields(cls)}:
            tp = typing.get_type_hints(cls)[key]
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1
            return args[0] if optional else tp
    return None


# What a running trial cannot take changed (a PBT mutation of it is refused when the job loads):
# the length of the run, the optimizer's and the schedule's kind (their saved states would not
# load), and the selection pair the job sets. Data and feature keys are fixed by the driver, which
# built the features and the tokenizer before the search.
FIXED_IN_RUN = {"epochs", "nepochs", "optimizer", "schedule", "finetune", "select_metric", "select_mode",
                "target_metric", "target_value", "decay_bias_and_norm"}


# DataConfig keys each worker applies itself (not what the driver extracted and checked)
WORKER_DATA_KEYS = ("max_train_utts",)
# what the job's driver builds once for every trial: the checked data, the stored features and the
# augmented copies (read-time feature keys such as cmvn excluded)
DRIVER_KEYS = {group: [f.name for f in dataclasses.fields(cls) if f.name not in READ_TIME_KEYS + WORKER_DATA_KEYS]
               for group, cls in _GROUPS if group in ("data", "features")}
DRIVER_KEYS["augment"] = list(WAVEFORM_KEYS)


def set_by_driver(key: str) -> str:
    """Why ``key`` is the same for every trial of a job ('' when a trial may set its own): the job's
    driver extracts the features, builds the augmented copies and checks the data once, before the
    search, and every trial reads what it built."""
    if key in DRIVER_KEYS["augment"]:
        return "it sets the augmented copies of the training set, built by the driver before the search"
    group = next((g for g, keys in DRIVER_KEYS.items() if key in keys), None)
    return f"it is a {group} setting, fixed by the driver before the search" if group else ""


def driver_settings(run: RunConfig) -> dict:
    """The settings of ``run`` that the job's driver fixes for every trial (``DRIVER_KEYS``)."""
    return {k: getattr(getattr(run, g), k) for g, keys in DRIVER_KEYS.items() for k in keys}


def fixed_in_run(params: dict, key: str, values: list, where: str = "<config>") -> str:
    """Why a running trial of ``params`` cannot take ``key`` changed to one of ``values`` ('' when
    it can). A model key is fixed when its values build models whose parameter shapes differ
    (a width, a layer count): the donor's weights would not load."""
    family = get_family(params["family"])
    if key in FIXED_IN_RUN:
        return "it cannot change in a running trial"
    why = set_by_driver(key)
    if why:
        return why
    if key not in family.config_keys():
        return ""
    shapes = set()
    for v in values:
        run = split_params({**params, key: v}, where=where)
        model = family.build(run.model, *family.dims(run.model, 32, run.features.n_mels))
        shapes.add(tuple((k, tuple(t.shape)) for k, t in model.state_dict().items()))
        if len(shapes) > 1:
            return (f"it changes the model's shape ({values[0]!r} and {v!r} build different layers), "
                    "so a donor's weights would not load")
    return ""
