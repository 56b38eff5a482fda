"""Importers for the corpus formats speech teams keep, all in one place (lhotse's layout).

Each reader turns a source (local path or object-store URI) into manifest rows, each with the
``file:line`` it came from, so a bad row is named the same way whatever the format, and
``read_manifest`` checks them all by one set of rules. ``speechtune data import FORMAT SRC
OUT.jsonl`` writes them as JSONL; a job may also name ``FORMAT:SRC`` directly as a manifest.

  * ``kaldi``: a Kaldi/ESPnet data directory (``wav.scp``, ``text``, optional ``segments``,
    ``utt2spk``, ``utt2lang``). Relative ``wav.scp`` paths resolve against the data directory.
    A pipe entry (``sox ... |``) runs only with ``--allow-pipes`` at import time, writing its
    output as a wav file beside the new manifest (what ESPnet's ``format_wav_scp.py`` does), so
    that no trial runs a shell command.
  * ``nemo``: NeMo JSON-lines (``audio_filepath``, ``duration``, ``text``, ``offset``, ``lang``).
  * ``lhotse``: a lhotse CutSet manifest (``.jsonl`` or ``.jsonl.gz``), parsed by lhotse itself
    (optional extra ``speechtune[lhotse]``).
  * ``hf``: a Hugging Face dataset saved with ``save_to_disk``, or a local audio folder
    (``audiofolder``: audio files plus ``metadata.csv``/``metadata.jsonl``), read by ``datasets``
    (optional extra ``speechtune[hf]``).
  * ``commonvoice``: a Common Voice release folder (``train.tsv``/``dev.tsv``/``test.tsv``,
    ``clips/*.mp3``, ``clip_durations.tsv`` when present), or one of its ``.tsv`` files.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from asr_core import storage
from asr_core.errors import InputError


@dataclass
class RawSource:
    """What an importer hands to :func:`read_manifest`: rows as dicts of the manifest's keys
    (or the InputError that row is), each with its ``file:line``; the folder relative audio paths
    resolve against; and a digest of the source files' bytes."""
    base: str
    rows: list[tuple[str, dict | InputError]]
    digest: str


def read_jsonl(src: str, **_) -> RawSource:
    try:
        data = storage.read_bytes(storage.normalize(src))
    except FileNotFoundError:
        raise InputError(str(src), "manifest not found") from None
    rows: list[tuple[str, dict | InputError]] = []
    for lineno, raw in enumerate(data.decode("utf-8-sig").splitlines(), start=1):  # a BOM is no text
        if not raw.strip():
            continue
        where = f"{src}:{lineno}"
        try:
            d = json.loads(raw)
        except json.JSONDecodeError as e:
            rows.append((where, InputError(where, f"not valid JSON ({e.msg})")))
            continue
        rows.append((where, d if isinstance(d, dict) else InputError(where, "a manifest line must be a JSON object")))
    return RawSource(storage.parent(storage.normalize(src)), rows, digest_of(storage.normalize(src), data))


def digest_of(location: str, *blobs: bytes) -> str:
    h = hashlib.sha1(location.encode())  # relative audio paths resolve against the location
    for b in blobs:
        h.update(hashlib.sha1(b).digest())
    return h.hexdigest()


def _lines(uri: str, required: bool = True) -> tuple[list[str], bytes]:
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        if required:
            raise InputError(uri, "file not found") from None
        return [], b""
    return data.decode("utf-8-sig").splitlines(), data  # -sig: a BOM (Windows editors) is no text


def _kv(uri: str, required: bool = True) -> tuple[dict[str, tuple[str, str]], bytes, list[tuple[str, InputError]]]:
    """A Kaldi ``key value...`` file -> key -> (value, file:line); malformed lines as errors."""
    lines, data = _lines(uri, required)
    out: dict[str, tuple[str, str]] = {}
    bad: list[tuple[str, InputError]] = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        where = f"{uri}:{i}"
        if not value.strip() and not uri.endswith("text"):
            bad.append((where, InputError(where, f"expected '<id> <value>', got {line.strip()!r}")))
            continue
        out[key] = (value.strip(), where)
    return out, data, bad


def read_kaldi(src: str, audio_dir: str | None = None, allow_pipes: bool = False, **_) -> RawSource:
    d = storage.normalize(src)
    if not storage.exists(d):
        raise InputError(src, "Kaldi data directory not found")
    wav, b_wav, bad = _kv(storage.join(d, "wav.scp"))
    text, b_text, bad_t = _kv(storage.join(d, "text"))
    segments, b_seg, bad_s = _kv(storage.join(d, "segments"), required=False)
    spk, b_spk, _ = _kv(storage.join(d, "utt2spk"), required=False)
    lang, b_lang, _ = _kv(storage.join(d, "utt2lang"), required=False)
    rows: list[tuple[str, dict | InputError]] = [*bad, *bad_t, *bad_s]

    audio: dict[str, str | InputError] = {}
    for rec, (value, where) in wav.items():
        if value.endswith("|"):
            if not (allow_pipes and audio_dir):
                audio[rec] = InputError(where, f"recording '{rec}' is a pipe command ({value!r}); commands run only "
                                               "at import: `speechtune data import kaldi SRC OUT.jsonl --allow-pipes`")
                continue
            audio[rec] = _run_pipe(rec, value[:-1], where, audio_dir)
        else:
            audio[rec] = storage.resolve_against(d, value)

    for utt, (transcript, where) in text.items():
        row: dict = {"id": utt, "text": transcript}
        if segments:
            if utt not in segments:
                rows.append((where, InputError(where, f"utterance '{utt}' has no line in {d}/segments")))
                continue
            seg, seg_where = segments[utt]
            parts = seg.split()
            try:
                rec, start, end = parts[0], float(parts[1]), float(parts[2])
                if end <= start:
                    raise ValueError
            except (IndexError, ValueError):
                rows.append((seg_where, InputError(seg_where, f"expected '<utt> <recording> <start> <end>' with "
                                                              f"end > start, got {utt} {seg!r}")))
                continue
            row.update(offset=start, duration=round(end - start, 6))
            where = seg_where if rec not in audio else where
        else:
            rec = utt
        src_audio = audio.get(rec)
        if src_audio is None:
            rows.append((where, InputError(where, f"utterance '{utt}': recording '{rec}' is not in {d}/wav.scp")))
            continue
        if isinstance(src_audio, InputError):
            rows.append((where, src_audio))
            continue
        row["audio"] = src_audio
        if utt in spk:
            row["speaker"] = spk[utt][0]
        if utt in lang:
            row["language"] = lang[utt][0]
        rows.append((where, row))
    return RawSource(d, rows, digest_of(d, b_wav, b_text, b_seg, b_spk, b_lang))


def _run_pipe(rec: str, command: str, where: str, audio_dir: str) -> str | InputError:
    out = Path(audio_dir) / f"{rec}.wav"
    out.parent.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(command, shell=True, capture_output=True)  # the user allowed it: --allow-pipes
    if p.returncode != 0 or not p.stdout:
        return InputError(where, f"pipe command for '{rec}' failed (exit {p.returncode}): "
                                 f"{p.stderr.decode(errors='replace').strip()[:300]}")
    out.write_bytes(p.stdout)
    return str(out)


def read_nemo(src: str, **_) -> RawSource:
    raw = read_jsonl(src)
    rows: list[tuple[str, dict | InputError]] = []
    for where, d in raw.rows:
        if isinstance(d, InputError):
            rows.append((where, d))
            continue
        if "audio_filepath" not in d:
            rows.append((where, InputError(where, "missing key 'audio_filepath' (a NeMo manifest row has "
                                                  "audio_filepath, duration, text)")))
            continue
        path = str(d["audio_filepath"])
        offset = float(d.get("offset") or 0.0)
        uid = d.get("utt_id") or d.get("id") or Path(path).stem + (f"-{round(offset * 1000):08d}" if offset else "")
        row = {"id": str(uid), "audio": path, "text": d.get("text"), "duration": d.get("duration"), "offset": offset}
        if d.get("lang"):
            row["language"] = d["lang"]
        if d.get("speaker") is not None:
            row["speaker"] = str(d["speaker"])
        rows.append((where, row))
    return RawSource(raw.base, rows, raw.digest)


def read_lhotse(src: str, audio_dir: str | None = None, allow_pipes: bool = False, **_) -> RawSource:
    try:
        from lhotse.serialization import deserialize_item
    except ImportError:
        raise InputError(src, "reading lhotse manifests needs lhotse: pip install 'speechtune[lhotse]'") from None
    uri = storage.normalize(src)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise InputError(src, "lhotse manifest not found") from None
    text = (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode("utf-8")  # by content, not name
    base = storage.parent(uri)
    rows: list[tuple[str, dict | InputError]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{src}:{lineno}"
        try:
            cut = deserialize_item(json.loads(line))
        except Exception as e:  # lhotse raises plain exceptions of several kinds for a bad item
            rows.append((where, InputError(where, f"not a lhotse cut ({type(e).__name__}: {e})")))
            continue
        rows.append((where, _cut_row(cut, where, audio_dir if allow_pipes else None)))
    return RawSource(base, rows, digest_of(uri, data))


def _cut_row(cut, where: str, pipe_dir: str | None) -> dict | InputError:
    """One cut as a manifest row; ``pipe_dir``: where a command source may write (None: refused)."""
    rec = getattr(cut, "recording", None)
    if rec is None or not rec.sources:
        return InputError(where, f"cut '{cut.id}' has no recording")
    source = rec.sources[0]
    if source.type == "command":
        if pipe_dir is None:
            return InputError(where, f"cut '{cut.id}': the recording is a command; commands run only at import "
                                     "(`speechtune data import lhotse SRC OUT.jsonl --allow-pipes`)")
        audio = _run_pipe(rec.id, source.source, where, pipe_dir)
        if isinstance(audio, InputError):
            return audio
    elif source.type in ("file", "url"):
        audio = source.source
    else:
        return InputError(where, f"cut '{cut.id}': recording source type '{source.type}' is not supported")
    sups = [s for s in cut.supervisions if s.text]
    row = {"id": cut.id, "audio": audio, "offset": float(cut.start), "duration": float(cut.duration),
           "text": " ".join(s.text for s in sups)}
    if sups and sups[0].language:
        row["language"] = sups[0].language
    if sups and sups[0].speaker:
        row["speaker"] = sups[0].speaker
    return row


def read_hf(src: str, audio_dir: str | None = None, audio_column: str = "audio", text_column: str = "text",
            **_) -> RawSource:
    """A saved dataset (``save_to_disk``) or a local audio folder. Audio the dataset embeds as
    bytes is written as files into ``audio_dir`` (``speechtune data import``'s output folder)."""
    try:
        import datasets
    except ImportError:
        raise InputError(src, "reading Hugging Face datasets needs datasets: pip install 'speechtune[hf]'") from None
    path = Path(src)
    if not path.is_dir():
        raise InputError(src, "not a folder: give a dataset saved with save_to_disk, or an audio folder")
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise InputError(src, f"a DatasetDict: name one split's folder, e.g. {path / splits[0]} (splits: {splits})")
    if not ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()):
        return _audiofolder(path, audio_column, text_column)
    ds = datasets.load_from_disk(str(path))
    for col in (audio_column, text_column):
        if col not in ds.column_names:
            raise InputError(src, f"no column '{col}' (columns: {ds.column_names}); name them with "
                                  "--audio-column/--text-column")
    if isinstance(ds.features[audio_column], datasets.Audio):
        ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
    rows: list[tuple[str, dict | InputError]] = []
    h = hashlib.sha1()
    for i, ex in enumerate(ds):
        where = f"{src}: row {i}"
        a = ex[audio_column]
        uid = str(ex.get("id") or ex.get("utt_id") or (Path(a["path"]).stem if isinstance(a, dict) and a.get("path")
                                                        else f"row{i:07d}"))
        if isinstance(a, str):
            audio = a
        elif isinstance(a, dict) and a.get("path") and os.path.isfile(a["path"]):
            audio = a["path"]
        elif isinstance(a, dict) and a.get("bytes"):
            if audio_dir is None:
                rows.append((where, InputError(where, "the dataset embeds its audio as bytes: write it out with "
                                                      "`speechtune data import hf SRC OUT.jsonl`")))
                continue
            suffix = Path(a.get("path") or "x.wav").suffix or ".wav"
            out = Path(audio_dir) / f"{uid}{suffix}"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(a["bytes"])
            audio = str(out)
        else:
            rows.append((where, InputError(where, f"column '{audio_column}' holds no readable audio ({str(a)[:80]})")))
            continue
        h.update(f"{uid}\t{audio}\t{ex[text_column]}\n".encode())
        row = {"id": uid, "audio": audio, "text": ex[text_column]}
        for key, col in (("language", "language"), ("language", "locale"), ("speaker", "speaker_id"),
                         ("speaker", "speaker")):
            if ex.get(col) not in (None, ""):
                row[key] = str(ex[col])
        rows.append((where, row))
    return RawSource(str(path.resolve()), rows, digest_of(str(path.resolve()), h.digest()))


def _audiofolder(path: Path, audio_column: str, text_column: str) -> RawSource:
    """An audio folder in the ``datasets`` audiofolder layout: audio files and ``metadata.csv`` or
    ``metadata.jsonl`` with a ``file_name`` column. Read here rather than through
    ``load_dataset("audiofolder")``, whose builder re-encodes every file (it needs torchcodec and
    FFmpeg) when all we need is each file's path and transcript."""
    rows: list[tuple[str, dict | InputError]] = []
    if (path / "metadata.jsonl").is_file():
        meta = path / "metadata.jsonl"
        lines = meta.read_text(encoding="utf-8").splitlines()
        records = [(f"{meta}:{i}", l) for i, l in enumerate(lines, start=1) if l.strip()]
        parsed = []
        for where, l in records:
            try:
                parsed.append((where, json.loads(l)))
            except json.JSONDecodeError as e:
                parsed.append((where, InputError(where, f"not valid JSON ({e.msg})")))
    elif (path / "metadata.csv").is_file():
        meta = path / "metadata.csv"
        with open(meta, newline="", encoding="utf-8") as f:
            parsed = [(f"{meta}:{i}", r) for i, r in enumerate(csv.DictReader(f), start=2)]
    else:
        raise InputError(str(path), "neither a saved dataset (dataset_info.json) nor an audio folder "
                                    "(metadata.csv / metadata.jsonl with a file_name column)")
    name_col = "file_name" if audio_column == "audio" else audio_column
    for where, r in parsed:
        if isinstance(r, InputError):
            rows.append((where, r))
            continue
        if not r.get(name_col) or text_column not in r:
            rows.append((where, InputError(where, f"needs columns '{name_col}' and '{text_column}' "
                                                  f"(has {sorted(r)}); name them with --audio-column/--text-column")))
            continue
        row = {"id": r.get("id") or Path(r[name_col]).stem, "audio": str(path / r[name_col]), "text": r[text_column]}
        if r.get("speaker_id") or r.get("speaker"):
            row["speaker"] = str(r.get("speaker_id") or r.get("speaker"))
        if r.get("language") or r.get("locale"):
            row["language"] = str(r.get("language") or r.get("locale"))
        rows.append((where, row))
    return RawSource(str(path.resolve()), rows, digest_of(str(path.resolve()), meta.read_bytes()))


def read_commonvoice(src: str, split: str = "train", **_) -> RawSource:
    uri = storage.normalize(src)
    tsv = uri if uri.endswith(".tsv") else storage.join(uri, f"{split}.tsv")
    root = storage.parent(tsv)
    lines, data = _lines(tsv)
    durations: dict[str, float] = {}
    dur_lines, dur_data = _lines(storage.join(root, "clip_durations.tsv"), required=False)
    for row in csv.DictReader(dur_lines, delimiter="\t", quoting=csv.QUOTE_NONE):
        try:
            durations[row["clip"]] = float(row["duration[ms]"]) / 1000.0
        except (KeyError, TypeError, ValueError):
            continue
    rows: list[tuple[str, dict | InputError]] = []
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None) or []
    if "path" not in header or "sentence" not in header:
        raise InputError(f"{tsv}:1", f"expected a Common Voice header with 'path' and 'sentence', got {header}")
    for lineno, values in enumerate(reader, start=2):
        where = f"{tsv}:{lineno}"
        if not values:
            continue
        if len(values) != len(header):
            rows.append((where, InputError(where, f"expected {len(header)} tab-separated columns, got {len(values)}")))
            continue
        r = dict(zip(header, values))
        if not r["path"]:
            rows.append((where, InputError(where, "empty 'path'")))
            continue
        row = {"id": Path(r["path"]).stem, "audio": storage.join(root, "clips", r["path"]), "text": r["sentence"],
               "speaker": r.get("client_id", "")}
        if r.get("locale"):
            row["language"] = r["locale"]
        if r["path"] in durations:
            row["duration"] = durations[r["path"]]
        rows.append((where, row))
    return RawSource(root, rows, digest_of(tsv, data, dur_data))


# name -> reader(src, audio_dir=None, allow_pipes=False, **options) -> RawSource
FORMATS = {
    "jsonl": read_jsonl,
    "kaldi": read_kaldi,
    "nemo": read_nemo,
    "lhotse": read_lhotse,
    "hf": read_hf,
    "commonvoice": read_commonvoice,
}
