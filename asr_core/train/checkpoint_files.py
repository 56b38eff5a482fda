"""A checkpoint's files by name, and its JSON parts: ``meta.json`` and ``edits.json`` (each dev
utterance's character and word edit counts at that epoch). Apart from ``checkpoint.py`` (which
writes ``state.pt`` with torch) so that the analysis reads a checkpoint's JSON without torch."""
from __future__ import annotations

import json
import os
from pathlib import Path

STATE = "state.pt"
META = "meta.json"
EDITS = "edits.json"


def edits_record(edits: list) -> dict:
    """``(utterance id, char errors, chars, word errors, words)`` rows as the record
    ``edits.json`` holds and analysis.confidence reads: ids, char and word pairs, by id."""
    rows = sorted(edits)
    return {"ids": [r[0] for r in rows], "char": [[int(r[1]), int(r[2])] for r in rows],
            "word": [[int(r[3]), int(r[4])] for r in rows]}


def write_edits(path: str | os.PathLike, edits: list, split: str, epoch: int | None = None) -> None:
    Path(path).write_text(json.dumps({"split": split, "epoch": epoch, **edits_record(edits)}))


def load_edits(dirpath: str | os.PathLike) -> dict | None:
    p = Path(dirpath) / EDITS
    return json.loads(p.read_text()) if p.is_file() else None


def load_meta(dirpath: str | os.PathLike) -> dict:
    return json.loads((Path(dirpath) / META).read_text())


def state_size_problem(dirpath: str | os.PathLike, meta: dict) -> str:
    """'' when ``state.pt`` is there at the size ``meta`` recorded (or ``meta`` recorded none: a
    checkpoint written before it did), else what is wrong: the cheap check (no read of the state)
    that keeps a truncated checkpoint from being chosen as a search's best; loading one checks
    its checksum too (``checkpoint.verify``)."""
    want = (meta.get("state") or {}).get("bytes")
    if want is None:
        return ""
    path = Path(dirpath) / STATE
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    return f"{path} is {size} bytes, meta.json recorded {want}" if size != want else ""
