"""Score a checkpoint on any manifest: CER and WER with the checkpoint's own tokenizer and CMVN."""
from __future__ import annotations

import numpy as np
import torch

from asr_core.data.features import FeatureConfig
from asr_core.data.manifest import read_manifest
from asr_core.data.synth import default_cache_dir
from asr_core.data.tokenizer import CharTokenizer
from asr_core.metrics import ErrorCounts
from asr_core.models import get_family
from asr_core.train import checkpoint as ckpt
from asr_core.train.config import split_params
from asr_core.train.data import dataset_for


def load_model(ckpt_dir: str):
    meta = ckpt.load_meta(ckpt_dir)
    run = split_params(meta["params"], where=f"{ckpt_dir}/meta.json")
    family = get_family(run.family)
    tok = CharTokenizer.from_dict(meta["tokenizer"])
    model = family.build(run.model, tok.vocab_size, run.features.n_mels)
    model.load_state_dict(ckpt.load_state(ckpt_dir)["model"])
    model.eval()
    return model, family, tok, run, meta


@torch.no_grad()
def evaluate(ckpt_dir: str, manifest_path: str, cache_dir: str | None = None, batch_bins: int = 1_000_000,
             skip_bad: bool = False, progress: bool = True) -> dict:
    model, family, tok, run, meta = load_model(ckpt_dir)
    manifest = read_manifest(manifest_path, skip_bad=skip_bad)
    mean = np.asarray(meta["cmvn"]["mean"], np.float32)
    std = np.asarray(meta["cmvn"]["std"], np.float32)
    data = dataset_for(manifest, tok, FeatureConfig(**meta["features"]),
                       cache_dir or run.data.cache_dir or str(default_cache_dir()), mean, std,
                       run.data.with_lang_tag, progress=progress)
    errs = ErrorCounts()
    for batch in data.iterate(data.batches(batch_bins)):
        hyps = [tok.decode(ids) for ids in family.decode(model, batch)]
        errs.add(batch.texts, hyps)
    return {"cer": errs.cer, "wer": errs.wer, "utterances": len(data), "skipped": len(manifest.skipped),
            "checkpoint": str(ckpt_dir), "epoch": meta["epoch"]}
