"""Checkpoints: ``state.pt`` (model, optimizer, scheduler, epoch), ``meta.json`` (what is
needed to rebuild the model and read new audio: family, params, tokenizer, CMVN, metrics) and,
for ASR families, ``edits.json``: each dev utterance's character and word edit counts at that
epoch, from which reports draw confidence intervals without decoding again
(analysis.confidence)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

# the files and JSON parts, here too: a checkpoint is one module to its writers (loop, evaluate)
from asr_core.train.checkpoint_files import (EDITS, META, STATE, edits_record, load_edits,  # noqa: F401
                                            load_meta, write_edits)


def save(dirpath: str | os.PathLike, *, model, optimizer, scheduler, epoch: int, run, tokenizer,
         mean, std, metrics: dict, loop: dict | None = None, trial_id: str | None = None,
         experiment: str | None = None, edits: list | None = None) -> None:
    d = Path(dirpath)
    d.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "loop": loop or {}}, d / STATE)
    meta = {
        "family": run.family, "params": run.params, "epoch": epoch,
        "tokenizer": tokenizer.to_dict(), "features": asdict(run.features),
        "cmvn": {"mean": [float(x) for x in mean], "std": [float(x) for x in std]},
        "metrics": metrics,
        "trial_id": trial_id or "",  # who wrote it: a PBT recipient or a fine-tuning run can tell
        "experiment": experiment or "",  # (asr_core.train.loop.restore_case)
    }
    (d / META).write_text(json.dumps(meta, ensure_ascii=False, indent=1))
    if edits:
        write_edits(d / EDITS, edits, split="dev", epoch=epoch)


def load_state(dirpath: str | os.PathLike) -> dict:
    return torch.load(Path(dirpath) / STATE, map_location="cpu", weights_only=False)
