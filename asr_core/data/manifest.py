"""Manifests: one utterance a row with ``id``, ``audio``, ``duration``, ``text``, ``language`` and
optional ``offset`` (seconds into the audio file) and ``speaker``.

The same form serves the synthesized demo corpora and real corpora. A manifest is named by a
*spec*: a JSONL file (local path or object-store URI), or ``FORMAT:SOURCE`` for the formats
speech teams keep (``kaldi:``, ``nemo:``, ``lhotse:``, ``hf:``, ``commonvoice:``; see
``asr_core.data.importers``), read into the same rows and checked by the same rules. Audio
paths may be absolute, URIs, or relative to the manifest's own folder (local or remote).

Every transcript is read in Unicode NFC (composed) form, as torchaudio's and ESPnet's text
front-ends expect: "é" typed as e + a combining accent (NFD, as macOS file names and some
exports write it) is the same character as the composed "é" of another corpus. A UTF-8 byte
order mark at a file's start is tolerated. Durations and offsets are finite, a duration is
> 0 when given, and ``offset + duration`` lies within the audio file.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable

import soundfile

from asr_core import storage
from asr_core.data.importers import FORMATS
from asr_core.errors import InputError

log = logging.getLogger(__name__)

REQUIRED = ("id", "audio", "text")
# how far past the audio's end ``offset + duration`` may reach: one 10 ms feature frame (segment
# times are written rounded)
END_SLACK_S = 0.01


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: str  # absolute path or URI once read
    duration: float  # seconds of speech (the segment's length when ``offset`` is set); 0 = unknown
    text: str
    language: str = "en"
    speaker: str = ""  # voice variant for synthesized corpora; optional for real ones
    offset: float = 0.0  # where the utterance starts in ``audio`` (Kaldi segments, NeMo, lhotse cuts)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not self.offset:
            d.pop("offset")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Utterance":
        return cls(
            id=str(d["id"]),
            audio=str(d["audio"]),
            duration=float(d.get("duration") or 0.0),
            text=str(d["text"]),
            language=str(d.get("language") or "en"),
            speaker=str(d.get("speaker") or ""),
            offset=float(d.get("offset") or 0.0),
        )


@dataclass
class Manifest:
    path: str  # the spec it was read from
    utterances: list[Utterance]
    skipped: list[str]  # "file:line: reason" for rows dropped under skip_bad
    key: str = ""  # content hash of the source files (feature-store key; see features.store_key)
    where: dict[str, str] = field(default_factory=dict)  # utterance id -> "file:line"
    skipped_ids: dict[str, str] = field(default_factory=dict)  # id -> reason, rows with an id that were dropped

    def __len__(self) -> int:
        return len(self.utterances)


def split_spec(spec: str) -> tuple[str, str]:
    """``"kaldi:/data/train"`` -> ("kaldi", "/data/train"); a plain path or URI -> ("jsonl", it)."""
    head, sep, rest = str(spec).partition(":")
    if sep and head in FORMATS and not rest.startswith("//"):
        return head, rest
    return "jsonl", str(spec)


def normalize_spec(spec: str) -> str:
    """A spec with its local path made absolute (URIs and the format prefix kept)."""
    fmt, src = split_spec(spec)
    return storage.normalize(src) if fmt == "jsonl" else f"{fmt}:{storage.normalize(src)}"


def spec_is_remote(spec: str) -> bool:
    return storage.is_remote(split_spec(spec)[1])


def audio_info(uri: str) -> soundfile._SoundFileInfo:
    """Header of a local or remote audio file (any format libsndfile reads: wav, flac, ogg, mp3)."""
    if storage.is_remote(uri):
        return soundfile.info(io.BytesIO(storage.read_bytes(uri)))
    return soundfile.info(uri)


def _check_row(d: dict, where: str, base: str, check_audio: bool) -> Utterance:
    missing = [k for k in REQUIRED if k not in d or d[k] is None]
    if missing:
        raise InputError(where, f"missing key(s) {missing}; a row needs id, audio, text (duration, language, "
                                "offset, speaker optional)")
    text = unicodedata.normalize("NFC", str(d["text"])).strip()
    if not text:
        raise InputError(where, f"utterance '{d['id']}' has an empty transcript")
    audio = storage.resolve_against(base, str(d["audio"]))
    try:
        duration = float(d["duration"]) if d.get("duration") is not None else None
        offset = float(d.get("offset") or 0.0)
    except (TypeError, ValueError):
        raise InputError(where, f"duration/offset must be numbers, got {d.get('duration')!r}/{d.get('offset')!r}") \
            from None
    if not math.isfinite(offset) or (duration is not None and not math.isfinite(duration)):
        raise InputError(where, f"duration/offset must be finite numbers, got {duration}/{offset}")
    if offset < 0 or (duration is not None and duration <= 0):
        raise InputError(where, f"offset must be >= 0 and duration > 0 (leave duration out to read it from "
                                f"the audio), got offset {offset}, duration {duration}")
    # Local audio is checked here (cheap); remote audio when features are extracted (each file is
    # read there anyway, by the node that extracts it), which names the same file and line.
    if check_audio and not storage.is_remote(audio):
        if not os.path.isfile(audio):
            raise InputError(where, f"audio file not found: {audio}")
        try:
            info = soundfile.info(audio)
        except Exception as e:  # soundfile raises RuntimeError/LibsndfileError subclasses
            raise InputError(where, f"audio file unreadable: {audio} ({e})") from None
        if info.frames == 0:
            raise InputError(where, f"audio file has no samples: {audio}")
        length = info.frames / info.samplerate
        if offset >= length:
            raise InputError(where, f"offset {offset} s is past the end of {audio} ({length:.2f} s)")
        if duration is None:
            duration = length - offset
        elif offset + duration > length + END_SLACK_S:
            raise InputError(where, f"offset {offset} s + duration {duration} s runs past the end of {audio} "
                                    f"({length:.2f} s)")
    return Utterance.from_dict({**d, "text": text, "audio": audio, "duration": duration or 0.0, "offset": offset})


def read_manifest(spec: str | os.PathLike, *, skip_bad: bool = False, check_audio: bool = True,
                  audio_dir: str | None = None, allow_pipes: bool = False, **reader_options) -> Manifest:
    """Read and validate a manifest (any spec, see the module doc). A bad row is an
    :class:`InputError` naming ``file:line``, unless ``skip_bad``, in which case it is dropped and
    listed in ``Manifest.skipped``. ``audio_dir``: where an import may write audio (a dataset's
    embedded bytes; with ``allow_pipes``, the output of Kaldi pipe commands); without it such rows
    are errors that say how to import them."""
    fmt, src = split_spec(str(spec))
    raw = FORMATS[fmt](src, audio_dir=audio_dir, allow_pipes=allow_pipes, **reader_options)
    utts: list[Utterance] = []
    skipped: list[str] = []
    skipped_ids: dict[str, str] = {}
    where_of: dict[str, str] = {}
    for where, d in raw.rows:
        try:
            if isinstance(d, InputError):
                raise d
            u = _check_row(d, where, raw.base, check_audio)
            if u.id in where_of:
                raise InputError(where, f"duplicate utterance id '{u.id}' (first at {where_of[u.id]})")
        except InputError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
            if isinstance(d, dict) and "id" in d and str(d["id"]) not in where_of:
                skipped_ids[str(d["id"])] = str(e)
            continue
        where_of[u.id] = where
        utts.append(u)
    if skipped:
        log.warning("%s: skipped %d bad row(s); first: %s", spec, len(skipped), skipped[0])
    if not utts:
        raise InputError(str(spec), "manifest has no usable utterances")
    return Manifest(str(spec), utts, skipped, key=raw.digest, where=where_of, skipped_ids=skipped_ids)


def write_manifest(path: str | os.PathLike, utts: Iterable[Utterance], relative_to: str | None = None) -> None:
    """Write a manifest atomically (``storage.write_text``): a partial file is never left at
    ``path`` nor beside it."""
    rows = []
    for u in utts:
        d = u.to_dict()
        if relative_to is not None and not storage.is_remote(d["audio"]):
            d["audio"] = os.path.relpath(d["audio"], relative_to)
        rows.append(json.dumps(d, ensure_ascii=False) + "\n")
    storage.write_text(str(path), "".join(rows))


def manifest_stats(m: Manifest) -> dict:
    """Utterances, hours, duration percentiles, languages, speakers and character set of ``m``
    (an unknown duration is read from the audio file's header)."""
    import numpy as np

    durations = []
    for u in m.utterances:
        d = u.duration
        if not d:
            info = audio_info(u.audio)
            d = info.frames / info.samplerate - u.offset
        durations.append(d)
    dur = np.asarray(durations, dtype=np.float64)
    langs: dict[str, int] = {}
    for u in m.utterances:
        langs[u.language] = langs.get(u.language, 0) + 1
    chars = sorted(set("".join(u.text for u in m.utterances)))
    return {"utterances": len(m), "hours": float(dur.sum() / 3600), "seconds": float(dur.sum()),
            "duration_percentiles": {p: float(np.percentile(dur, p)) for p in (0, 5, 50, 95, 100)},
            "mean_duration": float(dur.mean()), "languages": dict(sorted(langs.items(), key=lambda kv: -kv[1])),
            "speakers": len({u.speaker for u in m.utterances if u.speaker}), "characters": "".join(chars),
            "skipped": len(m.skipped)}


def group_skipped(skipped: list[str]) -> list[str]:
    """Skip reasons ("file:line: why") grouped by kind (quoted values, paths and numbers set
    aside), each kind with its count and then every row: what --skip-bad prints."""
    import re

    groups: dict[str, list[str]] = {}
    for s in skipped:
        why = s.split(": ", 1)[1] if ": " in s else s
        kind = re.sub(r"'[^']*'|\S*/\S+|\d+(\.\d+)?", "…", why.split(" (")[0])
        groups.setdefault(kind, []).append(s)
    out = [f"--skip-bad: skipped {len(skipped)} bad row(s):"]
    for kind, rows in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        out.append(f"  {len(rows)} x {kind}")
        out += [f"    {r}" for r in rows]
    return out
