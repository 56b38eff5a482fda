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
    "conformer_aed": "asr_core.models.conformer_aed",
    "crnn_ctc": "asr_core.models.crnn_ctc",
    "seq2seq": "asr_core.models.seq2seq",
    "tts_acoustic": "asr_core.models.tts_acoustic",
    "wavenet_ctc": "asr_core.models.wavenet_ctc",
}


@dataclass(frozen=True)
class Family:
    name: str
    config_cls: type
    # build(config, vocab_size, feat_dim) -> nn.Module
    build: Callable[[Any, int, int], torch.nn.Module]
    # compute_loss(model, batch) -> (summed loss over the batch, number of utterances)
    compute_loss: Callable[..., tuple[torch.Tensor, int]]
    # decode(model, batch, beam_size=None) -> token-id sequences, one per utterance (ASR families;
    # None for tts_acoustic). beam_size None = the config's own decoding setting.
    decode: Callable[..., list[list[int]]] | None
    presets: dict[str, dict] = field(default_factory=dict)
    default_metric: str = "val_cer"
    default_mode: str = "min"
    # training keys the family's runs default to (under presets and the user's values)
    train_defaults: dict = field(default_factory=dict)
    # validation_counts(model, batch, tokenizer, with_lang_tag) -> additive counts (summed over
    # batches and workers); summarize(counts) -> metrics. Default: ASR error counts of decode().
    validation_counts: Callable[..., dict[str, float]] | None = None
    summarize: Callable[[dict[str, float]], dict[str, float]] | None = None

    def counts(self, model, batch, tokenizer, with_lang_tag: bool) -> dict[str, float]:
        if self.validation_counts is not None:
            return self.validation_counts(model, batch, tokenizer, with_lang_tag)
        from asr_core.metrics import asr_counts

        return asr_counts(self.decode(model, batch), batch, tokenizer, with_lang_tag)

    def metrics(self, counts: dict[str, float]) -> dict[str, float]:
        if self.summarize is not None:
            return self.summarize(counts)
        from asr_core.metrics import asr_metrics

        return asr_metrics(counts)

    def reported_metrics(self) -> set[str]:
        """Every metric name a run of this family reports each epoch (the validation metrics come
        from the family's own summary, so the list cannot drift from the code)."""
        from collections import defaultdict

        val = {"val_loss", *self.metrics(defaultdict(float))}
        loop = {"train_loss", "epoch", "step", "epoch_time_s", "utts_per_s", "lr", "cpu_s", "model_params",
                "best_epoch", "steps_to_target", "num_nodes"}
        return val | loop | {f"best_{m}" for m in val} | {f"{m}_auc" for m in val}

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


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
