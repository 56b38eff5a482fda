"""A run's flat parameter dict, split into training, data and family configs.

Users write one flat namespace (``lr``, ``batch_bins``, ``lstm_hidden`` ...), as in the seeds'
tables; every key must belong to exactly one of the three dataclasses below.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from asr_core.config import from_dict
from asr_core.data.features import FeatureConfig
from asr_core.errors import InputError
from asr_core.models import get_family


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw"] = "adamw"
    weight_decay: float = 0.0
    batch_bins: int = 400_000  # ESPnet "numel" meaning, see asr_core.data.batching
    grad_clip: float = 5.0
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = 0
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError("key 'epochs' must be >= 1")
        if self.lr <= 0:
            raise ValueError("key 'lr' must be > 0")
        if self.batch_bins <= 0:
            raise ValueError("key 'batch_bins' must be > 0")


@dataclass
class DataConfig:
    train_manifest: str = ""
    dev_manifest: str = ""
    cache_dir: str = ""
    skip_bad: bool = False
    max_train_utts: int = 0  # 0 = all; a small number overfits a subset (tests)
    with_lang_tag: bool = False  # prefix targets with the language tag token

    def validate(self) -> None:
        if not self.train_manifest or not self.dev_manifest:
            raise ValueError("keys 'train_manifest' and 'dev_manifest' are required")


@dataclass
class RunConfig:
    family: str
    preset: str | None
    train: TrainConfig
    data: DataConfig
    features: FeatureConfig
    model: Any
    params: dict  # the flat dict it came from (recorded in checkpoints)


_GROUPS = (("train", TrainConfig), ("data", DataConfig), ("features", FeatureConfig))
RESERVED = {"family", "preset"}


def split_params(params: dict, where: str = "<config>") -> RunConfig:
    """``{"family": ..., "preset": ..., **flat}`` -> RunConfig; unknown keys name themselves."""
    if "family" not in params:
        raise InputError(where, "key 'family' is required")
    family = get_family(params["family"])
    preset = params.get("preset")
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
            raise InputError(where, f"unknown key '{k}' for family {family.name}; known keys: {allowed}")
    try:
        model_cfg = family.make_config(model, preset, where=where)
    except InputError:
        raise
    except ValueError as e:
        raise InputError(where, str(e)) from None
    return RunConfig(
        family=family.name,
        preset=preset,
        train=from_dict(TrainConfig, groups["train"], where),
        data=from_dict(DataConfig, groups["data"], where),
        features=from_dict(FeatureConfig, groups["features"], where),
        model=model_cfg,
        params=dict(params),
    )
