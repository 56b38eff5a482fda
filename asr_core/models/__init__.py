"""Model families. A family is one file exposing ``FAMILY``; the registry imports it lazily.

A family supplies a config dataclass, a builder, a loss and a decoder; the training loop is
shared by all families (DESIGN.md, data flow step 3).
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

_MODULES = {
    "crnn_ctc": "asr_core.models.crnn_ctc",
}


@dataclass(frozen=True)
class Family:
    name: str
    config_cls: type
    # build(config, vocab_size, feat_dim) -> nn.Module
    build: Callable[[Any, int, int], torch.nn.Module]
    # compute_loss(model, batch) -> (summed loss over the batch, number of utterances)
    compute_loss: Callable[..., tuple[torch.Tensor, int]]
    # decode(model, batch) -> list of token-id sequences (one per utterance)
    decode: Callable[..., list[list[int]]]
    presets: dict[str, dict] = field(default_factory=dict)
    default_metric: str = "val_cer"

    def make_config(self, params: dict, preset: str | None = None, where: str = "<config>"):
        from asr_core.config import from_dict

        base: dict = {}
        if preset is not None:
            if preset not in self.presets:
                raise ValueError(f"unknown preset for {self.name}: {preset} (known: {sorted(self.presets)})")
            base = dict(self.presets[preset])
        return from_dict(self.config_cls, {**base, **params}, where=where)

    def config_keys(self) -> set[str]:
        import dataclasses

        return {f.name for f in dataclasses.fields(self.config_cls)}


class _Registry(Mapping):
    """name -> Family, importing a family's module only when it is first asked for."""

    def __getitem__(self, name: str) -> Family:
        if name not in _MODULES:
            raise ValueError(f"unknown family: {name} (known: {sorted(_MODULES)})")
        return importlib.import_module(_MODULES[name]).FAMILY

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)

    def __contains__(self, name: object) -> bool:
        return name in _MODULES


FAMILIES: Mapping[str, Family] = _Registry()


def get_family(name: str) -> Family:
    return FAMILIES[name]
