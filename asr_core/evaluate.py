"""Score a checkpoint on any manifest: CER and WER with the checkpoint's own tokenizer and CMVN."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from asr_core.data.features import FeatureConfig
from asr_core.data.manifest import read_manifest
from asr_core.data.synth import default_cache_dir
from asr_core.data.tokenizer import CharTokenizer
from asr_core.metrics import asr_counts
from asr_core.models import get_family
from asr_core.train import checkpoint as ckpt
from asr_core.train.config import split_params
from asr_core.train.data import dataset_for, duration_limit, within_limit

EVAL_BATCH_BINS = 1_000_000  # frames x mels in one evaluation batch


def load_model(ckpt_dir: str):
    meta = ckpt.load_meta(ckpt_dir)
    run = split_params(meta["params"], where=f"{ckpt_dir}/meta.json")
    family = get_family(run.family)
    tok = CharTokenizer.from_dict(meta["tokenizer"])
    model = build_model(meta["params"], tok, ckpt.load_state(ckpt_dir)["model"], where=f"{ckpt_dir}/meta.json")
    return model, family, tok, run, meta


def build_model(params: dict, tok: CharTokenizer, state: dict, where: str = "<checkpoint>"):
    """A family's model from a checkpoint's params and weights, in eval mode."""
    run = split_params(params, where=where)
    model = get_family(run.family).build(run.model, tok.vocab_size, run.features.n_mels)
    model.load_state_dict(state)
    return model.eval()


def utterance_rows(hyp_ids: list[list[int]], batch, tokenizer) -> list[dict]:
    """One row per utterance: reference, hypothesis and its error counts (one jiwer pass over the
    batch, split per sentence by asr_core.metrics.sentence_edits; the rows' sums give the batch's
    CER and WER)."""
    import jiwer

    from asr_core.metrics import sentence_edits

    hyps = [tokenizer.decode(ids) for ids in hyp_ids]
    refs = list(batch.texts)
    chars = sentence_edits(jiwer.process_characters(refs, hyps))
    words = sentence_edits(jiwer.process_words(refs, hyps))
    return [{"id": uid, "reference": ref, "hypothesis": hyp, "char_errors": ce, "chars": cn,
             "word_errors": we, "words": wn}
            for uid, ref, hyp, (ce, cn), (we, wn) in zip(batch.ids, refs, hyps, chars, words)]


def open_split(meta: dict, run, tok, manifest_path: str, cache_dir: str | None = None, skip_bad: bool = False,
               progress: bool = True, batch_bins: int = EVAL_BATCH_BINS, max_duration: float | None = None):
    """(manifest, dataset) of a manifest read with a checkpoint's features, tokenizer and CMVN.
    Rows over ``max_duration`` seconds (default: the longest whose frames fit ``batch_bins``) are
    refused naming their line, or skipped under ``skip_bad``, before any feature is extracted (a
    3-hour row ran past 240 s in extraction and decoding)."""
    feats = FeatureConfig(**meta["features"])
    manifest = read_manifest(manifest_path, skip_bad=skip_bad)
    limit = max_duration or duration_limit(dataclasses.replace(run.data, max_duration=0.0), feats, batch_bins, 0)
    kept = within_limit(manifest.utterances, limit, lambda u: manifest.where.get(u.id, manifest.path), skip_bad,
                        manifest.skipped)
    if len(kept) < len(manifest.utterances):  # a subset: its own feature-store entry
        manifest = dataclasses.replace(manifest, utterances=kept, key=f"{manifest.key}|<= {limit:g} s")
    mean = np.asarray(meta["cmvn"]["mean"], np.float32)
    std = np.asarray(meta["cmvn"]["std"], np.float32)
    data = dataset_for(manifest, tok, feats,
                       # this machine's cache: the environment first, then what the run recorded
                       cache_dir or os.environ.get("SPEECHTUNE_CACHE") or run.data.cache_dir or str(default_cache_dir()),
                       mean, std,
                       run.data.with_lang_tag, progress=progress, feature_store=run.data.feature_store,
                       skip_bad=skip_bad, skipped=manifest.skipped)
    return manifest, data


def check_decode_overrides(family, model_cfg, overrides: dict, ckpt_dir: str) -> None:
    """Decoding options given over a checkpoint's own: each one its family has, each value one its
    config accepts (``--decoder prefix_beam`` on a conformer_aed checkpoint printed "(overridden:
    decoder)" and changed nothing)."""
    import dataclasses

    from asr_core.config import from_dict
    from asr_core.errors import InputError

    unknown = sorted(set(overrides) - set(family.decode_keys))
    if unknown:
        raise InputError(str(ckpt_dir), f"a {family.name} checkpoint has no decoding option {', '.join(unknown)} "
                                        f"(its decoding: {', '.join(sorted(family.decode_keys))})")
    if overrides:
        from_dict(type(model_cfg), {**dataclasses.asdict(model_cfg), **overrides}, where=f"{ckpt_dir} (decoding)")


@torch.no_grad()
def evaluate(ckpt_dir: str, manifest_path: str, cache_dir: str | None = None, batch_bins: int = EVAL_BATCH_BINS,
             skip_bad: bool = False, progress: bool = True, per_utterance: bool = False,
             max_duration: float | None = None, **decode_overrides) -> dict:
    """Metrics of a checkpoint on a manifest; ``decode_overrides`` (``decoder``, ``beam_size``,
    ``lexicon`` ...) replace the checkpoint's own decoding settings, and ``decoding`` in the result
    says which were used. ``per_utterance`` (ASR families) adds ``rows``: one per utterance."""
    model, family, tok, run, meta = load_model(ckpt_dir)
    check_decode_overrides(family, run.model, decode_overrides, ckpt_dir)
    manifest, data = open_split(meta, run, tok, manifest_path, cache_dir, skip_bad, progress, batch_bins,
                                max_duration)
    counts: dict[str, float] = {}
    rows: list[dict] = []
    padding = family.pads(run.model)
    asr = family.decode is not None and family.validation_counts is None
    for batch in data.iterate(data.batches(batch_bins, padding=padding)):
        if asr and (decode_overrides or per_utterance):
            hyps = family.decode(model, batch, tok, **decode_overrides)
            c = asr_counts(hyps, batch, tok, run.data.with_lang_tag)
            if per_utterance:
                rows += utterance_rows(hyps, batch, tok)
        else:
            c = family.counts(model, batch, tok, run.data.with_lang_tag)
        for k, v in c.items():
            counts[k] = counts.get(k, 0.0) + float(v)
    metrics = family.metrics(counts)
    out = {"cer": metrics.get("val_cer", float("nan")), "wer": metrics.get("val_wer", float("nan")),
           "metrics": {k.removeprefix("val_"): v for k, v in metrics.items()},
           "utterances": len(data), "skipped": len(manifest.skipped), "skipped_rows": manifest.skipped,
           "checkpoint": str(ckpt_dir), "decoding": family.decoding(run.model, decode_overrides),
           "epoch": meta["epoch"]}
    if per_utterance and asr:
        out["rows"] = rows
    return out
