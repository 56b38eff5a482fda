"""JSONL manifests: one utterance a line with ``id``, ``audio``, ``duration``, ``text``, ``language``.

The same form serves the synthesized demo corpora and real corpora. Audio paths may be
absolute or relative to the manifest's folder.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import soundfile

from asr_core.errors import InputError

log = logging.getLogger(__name__)

REQUIRED = ("id", "audio", "text")


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: str  # absolute path once read
    duration: float
    text: str
    language: str = "en"
    speaker: str = ""  # voice variant for synthesized corpora; optional for real ones

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Utterance":
        return cls(
            id=str(d["id"]),
            audio=str(d["audio"]),
            duration=float(d.get("duration", 0.0)),
            text=str(d["text"]),
            language=str(d.get("language", "en")),
            speaker=str(d.get("speaker", "")),
        )


@dataclass
class Manifest:
    path: str
    utterances: list[Utterance]
    skipped: list[str]  # "file:line: reason" for rows dropped under skip_bad

    def __len__(self) -> int:
        return len(self.utterances)


def _check_row(raw: str, where: str, base: Path, check_audio: bool) -> Utterance:
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InputError(where, f"not valid JSON ({e.msg})") from None
    if not isinstance(d, dict):
        raise InputError(where, "a manifest line must be a JSON object")
    missing = [k for k in REQUIRED if k not in d]
    if missing:
        raise InputError(where, f"missing key(s) {missing}; a row needs id, audio, text (duration, language optional)")
    text = str(d["text"]).strip()
    if not text:
        raise InputError(where, f"utterance '{d['id']}' has an empty transcript")
    audio = Path(str(d["audio"]))
    if not audio.is_absolute():
        audio = base / audio
    duration = d.get("duration")
    if check_audio:
        if not audio.is_file():
            raise InputError(where, f"audio file not found: {audio}")
        try:
            info = soundfile.info(str(audio))
        except Exception as e:  # soundfile raises RuntimeError/LibsndfileError subclasses
            raise InputError(where, f"audio file unreadable: {audio} ({e})") from None
        if info.frames == 0:
            raise InputError(where, f"audio file has no samples: {audio}")
        if duration is None:
            duration = info.frames / info.samplerate
    return Utterance.from_dict({**d, "text": text, "audio": str(audio), "duration": float(duration or 0.0)})


def read_manifest(path: str | os.PathLike, *, skip_bad: bool = False, check_audio: bool = True) -> Manifest:
    """Read and validate a manifest. A bad row is an :class:`InputError` naming ``file:line``,
    unless ``skip_bad``, in which case it is dropped and listed in ``Manifest.skipped``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "manifest not found")
    base = path.resolve().parent
    utts: list[Utterance] = []
    skipped: list[str] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                u = _check_row(raw, where, base, check_audio)
                if u.id in seen:
                    raise InputError(where, f"duplicate utterance id '{u.id}'")
            except InputError as e:
                if not skip_bad:
                    raise
                skipped.append(str(e))
                continue
            seen.add(u.id)
            utts.append(u)
    if skipped:
        log.warning("%s: skipped %d bad row(s); first: %s", path, len(skipped), skipped[0])
    if not utts:
        raise InputError(str(path), "manifest has no usable utterances")
    return Manifest(str(path), utts, skipped)


def write_manifest(path: str | os.PathLike, utts: Iterable[Utterance], relative_to: str | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for u in utts:
            d = u.to_dict()
            if relative_to is not None:
                d["audio"] = os.path.relpath(d["audio"], relative_to)
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
