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
    # the validation metrics it reports, with their directions (asr_core.metrics); a test checks
    # them against what ``metrics()`` computes, so the declaration cannot drift from the code
    validation_metrics: Mapping[str, Any] = field(default_factory=lambda: _asr_metrics())
    # training keys the family's runs default to (under presets and the user's values)
    train_defaults: dict = field(default_factory=dict)
    # validation_counts(model, batch, tokenizer, with_lang_tag) -> additive counts (summed over
    # batches and workers); summarize(counts) -> metrics. Default: ASR error counts of decode().
    validation_counts: Callable[..., dict[str, float]] | None = None
    summarize: Callable[[dict[str, float]], dict[str, float]] | None = None
    # hooks for what one family does differently; the shared loop and evaluate ask these, never
    # the config's attributes. pads(config): batches mix lengths with padding (wavenet_ctc's
    # PADDING off batches equal lengths only).
    pads: Callable[[Any], bool] = lambda config: True
    # the config keys that choose how it decodes (evaluate prints them with any overrides)
    decode_keys: tuple[str, ...] = ()
    # decode-time tuning (tune_jobs.decode_tune): acoustic(model, batch) -> one output per
    # utterance, computed once per checkpoint and cached; decode_cached(model, outputs, tokenizer,
    # **settings) -> token ids from those outputs; decode_space: what is searched by default
    # (job-file syntax). None where the family cannot decode from a cache.
    acoustic: Callable[..., list] | None = None
    decode_cached: Callable[..., list[list[int]]] | None = None
    decode_space: Mapping[str, Any] = field(default_factory=dict)
    # decodings besides a checkpoint's own that a search's test evaluation measures on the dev
    # split, keeping the best for the test figures (conformer_aed: joint CTC/attention beam search,
    # tens of points of WER better than the CTC head's greedy output at CPU scale)
    test_decodings: tuple[dict, ...] = ()

    def decoding(self, config, overrides: dict | None = None) -> dict:
        """How a checkpoint of this config decodes: its decoding keys, with ``overrides`` over them."""
        return {**{k: getattr(config, k) for k in self.decode_keys}, **(overrides or {})}

    def dims(self, config, vocab_size: int, n_mels: int) -> tuple[int, int]:
        """(output tokens, input feature dimension) the model is built for: the data's, unless the
        config pins them (crnn_ctc's ``num_classes`` / ``input_dim``, seed 004)."""
        return (getattr(config, "num_classes", 0) or vocab_size, getattr(config, "input_dim", 0) or n_mels)

    def counts(self, model, batch, tokenizer, with_lang_tag: bool, edits: list | None = None) -> dict[str, float]:
        """Additive validation counts of one batch; an ASR family also appends each utterance's
        edit counts to ``edits`` (kept with the checkpoint for confidence intervals)."""
        if self.validation_counts is not None:
            return self.validation_counts(model, batch, tokenizer, with_lang_tag)
        from asr_core.metrics import asr_counts

        return asr_counts(self.decode(model, batch), batch, tokenizer, with_lang_tag, edits)

    def metrics(self, counts: dict[str, float]) -> dict[str, float]:
        if self.summarize is not None:
            return self.summarize(counts)
        from asr_core.metrics import asr_metrics

        return asr_metrics(counts)

    def reported_metrics(self) -> set[str]:
        """Every metric name a run of this family reports each epoch."""
        from asr_core.metrics import LOOP_METRICS

        val = set(self.validation_metrics)
        return val | set(LOOP_METRICS) | {f"best_{m}" for m in val} | {f"{m}_auc" for m in val}

    def metric(self, name: str):
        """The ``Metric`` (name, mode, format) of a name this family reports; ``best_M`` and
        ``M_auc`` go the way ``M`` goes. An unknown name is an error listing the family's metrics."""
        from asr_core.metrics import LOOP_METRICS, derived

        m = derived(name, {**LOOP_METRICS, **self.validation_metrics})
        if m is None:
            raise ValueError(f"family {self.name} does not report '{name}'; it reports: "
                             f"{', '.join(sorted(self.reported_metrics()))}")
        return m

    @property
    def default_mode(self) -> str:
        return self.metric(self.default_metric).mode

    def selection(self, metric: str) -> tuple[str, str]:
        """(per-epoch validation metric, mode) that picks a run's best epoch, early-stops it and
        keeps its checkpoints when it is ranked by ``metric``: the metric itself, the ``M`` of
        ``best_M`` / ``M_auc``, else the family's default (``steps_to_target``)."""
        from asr_core.metrics import selection_metric

        sel = selection_metric(metric, self.validation_metrics) or self.default_metric
        return sel, self.metric(sel).mode

    def make_config(self, params: dict, where: str = "<config>"):
        """The model's config from its keys (presets are expanded before, by the job layer)."""
        from asr_core.config import from_dict

        return from_dict(self.config_cls, params, where=where)

    def config_keys(self) -> set[str]:
        import dataclasses

        return {f.name for f in dataclasses.fields(self.config_cls)}


def _asr_metrics():
    from asr_core.metrics import ASR_METRICS

    return ASR_METRICS


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
