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

from asr_core.errors import InputError

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
        "state": file_digest(d / STATE),  # checked when read: a truncated or altered state.pt is named
        "tokenizer": tokenizer.to_dict(), "features": asdict(run.features),
        "cmvn": {"mean": [float(x) for x in mean], "std": [float(x) for x in std]},
        "metrics": metrics,
        "trial_id": trial_id or "",  # who wrote it: a PBT recipient or a fine-tuning run can tell
        "experiment": experiment or "",  # (asr_core.train.loop.restore_case)
    }
    (d / META).write_text(json.dumps(meta, ensure_ascii=False, indent=1))
    if edits:
        write_edits(d / EDITS, edits, split="dev", epoch=epoch)


def file_digest(path: Path) -> dict:
    """``{"bytes": size, "sha256": hex}`` of a file (hashlib reads it in blocks)."""
    import hashlib

    with open(path, "rb") as f:
        return {"bytes": path.stat().st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


class BrokenCheckpoint(InputError):
    """A checkpoint whose ``state.pt`` is missing, truncated or altered: ``where`` names the file."""


def verify(dirpath: str | os.PathLike) -> None:
    """Raise ``BrokenCheckpoint`` unless ``state.pt`` is there and matches the size and checksum
    its ``meta.json`` recorded (a checkpoint written before meta.json held them is checked by
    torch's own reading only)."""
    path = Path(dirpath) / STATE
    if not path.is_file():
        raise BrokenCheckpoint(str(path), "checkpoint state is missing")
    try:
        want = load_meta(dirpath).get("state")
    except (OSError, ValueError) as e:
        raise BrokenCheckpoint(str(Path(dirpath) / META), f"checkpoint meta.json unreadable ({e})") from None
    if want:
        got = file_digest(path)
        if got != want:
            raise BrokenCheckpoint(str(path), f"checkpoint is broken: {got['bytes']} bytes (sha256 "
                                              f"{got['sha256'][:12]}), meta.json recorded {want['bytes']} bytes "
                                              f"(sha256 {want['sha256'][:12]})")


def load_state(dirpath: str | os.PathLike) -> dict:
    """``state.pt``, verified first (``verify``); one torch cannot read is a ``BrokenCheckpoint`` too."""
    verify(dirpath)
    path = Path(dirpath) / STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # torch's zip reader: RuntimeError
        raise BrokenCheckpoint(str(path), f"checkpoint state unreadable ({e})") from None


def restore_intact(checkpoint) -> tuple[dict | None, dict | None, str]:
    """(state, meta, note) of a Ray ``checkpoint`` a run resumes from; when it is broken, of the
    newest intact checkpoint beside it (the run's earlier ones Ray kept), each broken one named
    in ``note``; (None, None, note) when none is intact: the run starts from scratch, and says so.
    Read through the checkpoint's own filesystem (a local path or object storage)."""
    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    fs, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)

    def candidates():  # the folder is listed only once the latest is found broken (a resume's common case: not)
        yield path
        yield from sorted((i.path for i in fs.get_file_info(pafs.FileSelector(parent))
                           if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
                           and i.base_name < name), reverse=True)

    broken = []
    for candidate in candidates():
        with Checkpoint(candidate, filesystem=fs).as_directory() as d:
            try:
                state, meta = load_state(d), load_meta(d)
            except BrokenCheckpoint as e:
                broken.append(f"{candidate}/{Path(e.where).name}: {e.message}")  # e.where: a local copy's path
                continue
        note = "" if not broken else f"{'; '.join(broken)}: resumed from {candidate} (epoch {state['epoch']})"
        return state, meta, note
    return None, None, f"{'; '.join(broken)}: no intact checkpoint left: the run starts again from epoch 1"
