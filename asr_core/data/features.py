"""Log-mel filterbank features: a feature store built once per job, read by every node.

**The store** (``<root>/<key>/``, root = the job's object storage, a shared path, or this
machine's cache when everything is local) holds, per (manifest content, feature settings) key:
``part-NNNNN.arrow`` shards (Arrow IPC, zstd-compressed buffers, features as float16 unless
``feature_dtype: float32``),
``stats.json`` (CMVN mean and std, from the float32 values before rounding) and ``index.json``
(shards, counts, rows skipped and why), written last: its presence means the entry is complete.
Extraction runs as Ray tasks over shards of the manifest when Ray is up (one CPU each, a
progress bar over the shards), in this process otherwise. A second job on the same data finds
``index.json`` and extracts nothing.

**The node cache** (``<cache_dir>/features/<key>/feats.arrow``): each node reads the shards it
needs once, under a file lock (one download per node, whichever worker comes first), writes them
uncompressed, and every trial and worker of that node memory-maps the same file.

Why float16: Kaldi log-mel values lie in about [-23, 30] (log of an energy floor of 1e-10 up to
loud speech); float16 keeps 11 significant bits, so rounding adds at most 2^-11 relative error,
at most 0.0078 absolute for values below 32 (half a unit in the last place for [16, 32)), about
0.002 after CMVN divides by std (3 to 5 here): far below the frame-to-frame variation of speech.
``benchmarks/features.py`` measures the error and shows a model's CER does not change.
Why not lilcom (lhotse's codec): it would add a compiled dependency, and its decompressed copy
could not be memory-mapped any better than this one; pyarrow already compresses.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import soundfile
import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF
from filelock import FileLock

from asr_core import storage
from asr_core.data.manifest import Manifest, Utterance
from asr_core.errors import InputError, KeyProblem
from asr_core.progress_bar import progress_bar

if TYPE_CHECKING:
    from asr_core.data.augment import Perturbation

log = logging.getLogger(__name__)

FEATS_FILE = "feats.arrow"
STATS_FILE = "stats.json"
INDEX_FILE = "index.json"
FORMAT_VERSION = 2  # part of the key: entries of another layout are never read


@dataclass(frozen=True)
class FeatureConfig:
    n_mels: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    sample_rate: int = 16000
    # how the store keeps the values: float16 (half the bytes; see the module doc) or float32
    feature_dtype: Literal["float16", "float32"] = "float16"
    # how features are normalised as they are read (not stored: the store keeps the raw log-mels):
    # "global", ESPnet's GlobalMVN (the training set's mean and std); "utterance", each utterance's
    # own mean removed (ESPnet's UtteranceMVN with norm_vars=False, Kaldi's per-utterance CMN), then
    # the training set's std: a channel or a noise floor the training set never had shifts the
    # log-mels of a whole utterance, and the utterance's mean takes that shift away
    cmvn: Literal["global", "utterance"] = "global"

    def validate(self) -> None:
        if self.n_mels <= 0:
            raise KeyProblem("n_mels", "key 'n_mels' must be positive")
        if self.frame_shift_ms <= 0 or self.frame_length_ms < self.frame_shift_ms:
            raise KeyProblem("frame_length_ms", "keys 'frame_length_ms'/'frame_shift_ms': need 0 < shift <= length")


def compute_fbank(wav: torch.Tensor, sr: int, cfg: FeatureConfig, vtln_warp: float = 1.0) -> torch.Tensor:
    """(samples,) float waveform -> (T, n_mels) log-mel filterbank (Kaldi-compatible, as ESPnet/icefall);
    ``vtln_warp``: Kaldi's VTLN warp of the mel bins (an augmented copy's ``vtlp``)."""
    if sr != cfg.sample_rate:
        wav = AF.resample(wav, sr, cfg.sample_rate)
    return kaldi.fbank(
        wav.unsqueeze(0) * 32768.0,  # Kaldi's scale
        num_mel_bins=cfg.n_mels,
        frame_length=cfg.frame_length_ms,
        frame_shift=cfg.frame_shift_ms,
        dither=0.0,
        energy_floor=1e-10,
        sample_frequency=cfg.sample_rate,
        vtln_warp=vtln_warp,
    )


def load_audio(u: Utterance, cached: dict | None = None) -> tuple[np.ndarray, int]:
    """The utterance's samples (mono float32) and rate: local path or URI, honouring ``offset`` and
    ``duration``. ``cached`` keeps the last remote file's bytes (segments of one recording)."""
    if storage.is_remote(u.audio):
        if cached is not None and cached.get("uri") == u.audio:
            data = cached["bytes"]
        else:
            data = storage.read_bytes(u.audio)
            if cached is not None:
                cached.update(uri=u.audio, bytes=data)
        src = io.BytesIO(data)
    else:
        src = u.audio
    with soundfile.SoundFile(src) as f:
        sr = f.samplerate
        start = int(round(u.offset * sr))
        if start:
            f.seek(start)
        frames = int(round(u.duration * sr))
        # a segment (Kaldi segments, a cut) ends at offset + duration; a whole-file row whose
        # duration was rounded when written (up to 10 ms) keeps every sample
        cut = u.duration > 0 and f.frames - start - frames > sr // 100
        data = f.read(frames if cut else -1, dtype="float32", always_2d=True)
    return data.mean(axis=1), sr


# FeatureConfig keys applied as features are read, not as they are stored: not in the store's key
READ_TIME_KEYS = ("cmvn",)


def store_key(manifest: Manifest, cfg: FeatureConfig, perturb: "Perturbation | None" = None) -> str:
    """Content key: the manifest's source bytes and location (``Manifest.key``), the size and
    modification time of every audio file it names (a repaired or replaced file is extracted
    again, as make and rsync decide it), the settings, and for an augmented copy its recipe."""
    h = hashlib.sha1(manifest.key.encode())
    files = sorted({u.audio for u in manifest.utterances})
    for uri, (size, mtime) in sorted(storage.stats(files).items()):
        h.update(f"{uri}\t{size}\t{mtime}\n".encode())
    stored = {k: v for k, v in asdict(cfg).items() if k not in READ_TIME_KEYS}
    h.update(json.dumps({**stored, "version": FORMAT_VERSION}, sort_keys=True).encode())
    if perturb is not None:
        h.update(perturb.key().encode())
    return h.hexdigest()[:20]


def default_root(cache_dir: str | os.PathLike) -> str:
    return str(Path(cache_dir) / "feature-store")


def _schema(n_mels: int, dtype: str) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("num_frames", pa.int32()), ("feats", pa.large_list(pa.from_numpy_dtype(
        np.dtype(dtype))))], metadata={"n_mels": str(n_mels)})


def extract_shard(utts: list[Utterance], where: dict[str, str], cfg: FeatureConfig, out_uri: str,
                  skip_bad: bool, perturb: "Perturbation | None" = None) -> dict:
    """Features of ``utts`` into one shard file at ``out_uri``; returns its counts and CMVN sums.
    Audio that cannot be read is an InputError naming the manifest's file and line, or, with
    ``skip_bad``, listed in ``skipped``. ``perturb`` (an augmented copy, ``augment.py``) changes
    each waveform first; what it drew is returned by id in ``perturbations``."""
    total = np.zeros(cfg.n_mels, np.float64)
    total_sq = np.zeros(cfg.n_mels, np.float64)
    frames, skipped = 0, {}
    ids, counts, feats = [], [], []
    cached: dict = {}
    drawn: dict[str, dict] = {}
    for u in utts:
        try:
            wav, sr = load_audio(u, cached)
            if wav.size < sr * cfg.frame_length_ms / 1000:
                raise _TooShort(f"audio of utterance '{u.id}' is {1000 * wav.size / sr:.0f} ms long, shorter than "
                                f"one analysis window ({cfg.frame_length_ms:g} ms): {u.audio}")
            wav = torch.from_numpy(wav)
            if perturb is not None:
                wav, drawn[u.id] = perturb(wav, sr, u.id)
            fb = compute_fbank(wav, sr, cfg, drawn.get(u.id, {}).get("vtlp", 1.0)).numpy()  # (T, F)
        except Exception as e:  # a missing or unreadable file, from libsndfile or the object store
            err = InputError(where.get(u.id, u.id), str(e) if isinstance(e, _TooShort) else
                             f"audio of utterance '{u.id}' unreadable: {u.audio} ({type(e).__name__}: {e})")
            if not skip_bad:
                raise err from None
            skipped[u.id] = str(err)
            continue
        total += fb.sum(0)
        total_sq += (fb.astype(np.float64) ** 2).sum(0)
        frames += fb.shape[0]
        ids.append(u.id)
        counts.append(fb.shape[0])
        feats.append(fb.reshape(-1).astype(cfg.feature_dtype))
    schema = _schema(cfg.n_mels, cfg.feature_dtype)
    batch = pa.record_batch([pa.array(ids, pa.string()), pa.array(counts, pa.int32()),
                             pa.array(feats, schema.field("feats").type)], schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_batch(batch)
    storage.write_bytes(out_uri, sink.getvalue().to_pybytes())
    return {"utterances": len(ids), "frames": frames, "sum": total.tolist(), "sum_sq": total_sq.tolist(),
            "skipped": skipped, "perturbations": drawn}


class _TooShort(ValueError):
    pass


def _shards(n: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous row ranges: a few per CPU (even progress, stragglers small), 32..1000 rows each."""
    size = min(1000, max(32, math.ceil(n / max(1, 4 * workers))))
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def ensure_store(manifest: Manifest, cfg: FeatureConfig, root: str, *, skip_bad: bool = False,
                 progress: bool = True, parallel: bool = True, entry: str = "",
                 perturb: "Perturbation | None" = None) -> tuple[str, int]:
    """The store entry of ``manifest`` under ``root`` (built if missing). Returns (its URI, the
    number of utterances this call extracted: 0 when the entry was there). With ``parallel`` and
    Ray up, shards are extracted by Ray tasks on the cluster's CPUs. ``entry``: the entry the
    job's driver built (a trial's workers need not compute the key again). ``perturb``: the
    entry is that augmented copy of the manifest (``augment.py``)."""
    if entry and storage.is_file(storage.join(entry, INDEX_FILE)):
        return entry, 0
    entry = storage.join(root, store_key(manifest, cfg, perturb))
    local = not storage.is_remote(entry)
    lock = FileLock(entry + ".lock") if local else None
    if local:
        Path(entry).parent.mkdir(parents=True, exist_ok=True)
    with lock if lock is not None else _nolock():
        if storage.is_file(storage.join(entry, INDEX_FILE)):
            return entry, 0
        storage.remove_dir(entry)  # shards an interrupted extraction left: written completely or not at all
        log.info("extracting features of %s into %s", manifest.path, entry)
        utts = manifest.utterances
        use_ray = parallel and _ray_up()
        ranges = _shards(len(utts), _cluster_cpus() if use_ray else 1)
        parts = [f"part-{i:05d}.arrow" for i in range(len(ranges))]
        args = [(utts[a:b], {u.id: manifest.where.get(u.id, manifest.path) for u in utts[a:b]}, cfg,
                 storage.join(entry, p), skip_bad, perturb) for (a, b), p in zip(ranges, parts)]
        name = Path(manifest.path.split(':')[-1]).name + (f" (augmented copy {perturb.copy})" if perturb else "")
        bar = progress_bar(len(utts), f"features {name}", "utt", enabled=progress)
        results = _run_ray(args, bar) if use_ray else [_tick(bar, extract_shard(*a)) for a in args]
        bar.close()
        frames = sum(r["frames"] for r in results)
        total = np.sum([r["sum"] for r in results], axis=0)
        total_sq = np.sum([r["sum_sq"] for r in results], axis=0)
        mean = total / max(frames, 1)
        std = np.sqrt(np.maximum(total_sq / max(frames, 1) - mean**2, 1e-8))
        skipped = {**manifest.skipped_ids, **{k: v for r in results for k, v in r["skipped"].items()}}
        storage.write_text(storage.join(entry, STATS_FILE),
                           json.dumps({"mean": mean.tolist(), "std": std.tolist(), "frames": frames}))
        index = {"manifest": manifest.path, "n_mels": cfg.n_mels, "dtype": cfg.feature_dtype, "features": asdict(cfg),
                 "parts": [{"file": p, "utterances": r["utterances"]} for p, r in zip(parts, results)],
                 "utterances": sum(r["utterances"] for r in results), "frames": frames, "skipped": skipped}
        if perturb is not None:  # the recipe and each utterance's draw: what the copy is, readable
            index["perturbation"] = json.loads(perturb.key())
            index["perturbations"] = {k: v for r in results for k, v in r["perturbations"].items()}
        storage.write_text(storage.join(entry, INDEX_FILE), json.dumps(index))  # last: the entry is complete
        return entry, sum(r["utterances"] for r in results)


class _nolock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _tick(bar, result: dict) -> dict:
    bar.update(result["utterances"] + len(result["skipped"]))
    return result


def _ray_up() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def _cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _extract_task(*args) -> dict:
    torch.set_num_threads(1)  # one CPU per task: the parallelism comes from the tasks
    return extract_shard(*args)


def _run_ray(args: list[tuple], bar) -> list[dict]:
    import ray

    task = ray.remote(num_cpus=1, max_retries=2, retry_exceptions=False)(_extract_task)
    refs = [task.remote(*a) for a in args]
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            _tick(bar, ray.get(done[0]))
        except InputError as e:
            for r in pending:
                ray.cancel(r)
            raise InputError(e.where, e.message) from None  # the user's error, without Ray's wrapping
    return ray.get(refs)


class FeatureStore:
    """Features of one manifest, memory-mapped from this node's cache. ``extracted`` counts
    utterances extracted by the call that opened it (0 when the store already held them)."""

    def __init__(self, path: Path, extracted: int = 0):
        self.path = path
        self.extracted = extracted
        table = pa.ipc.open_file(pa.memory_map(str(path / FEATS_FILE), "r")).read_all()
        self.n_mels = int(table.schema.metadata[b"n_mels"])
        self.ids = table.column("id").to_pylist()
        self.num_frames = np.asarray(table.column("num_frames").to_numpy(), dtype=np.int64)
        self._rows: list[tuple[np.ndarray, int, int]] = []
        for chunk in table.column("feats").chunks:  # zero-copy views into the mapped file
            values = chunk.values.to_numpy(zero_copy_only=True)
            offsets = chunk.offsets.to_numpy()
            for j in range(len(chunk)):
                self._rows.append((values, int(offsets[j]), int(offsets[j + 1])))
        self.index = {u: i for i, u in enumerate(self.ids)}
        stats = json.loads((path / STATS_FILE).read_text())
        self.mean = np.asarray(stats["mean"], dtype=np.float32)
        self.std = np.asarray(stats["std"], dtype=np.float32)
        index = json.loads((path / INDEX_FILE).read_text())
        self.skipped: dict[str, str] = index.get("skipped", {})
        self.perturbations: dict[str, dict] = index.get("perturbations", {})  # an augmented copy's draws

    def __len__(self) -> int:
        return len(self.ids)

    def feats(self, i: int) -> np.ndarray:
        values, start, end = self._rows[i]
        return values[start:end].reshape(-1, self.n_mels)  # (T, F) float16 (or float32), a view


def open_store(entry: str, cache_dir: str | os.PathLike, extracted: int = 0) -> FeatureStore:
    """Map store entry ``entry`` from this node's cache, reading its shards into the cache first
    if this node has not yet (once per node: a file lock makes the other workers wait)."""
    key = entry.rstrip("/").rsplit("/", 1)[-1]
    out = Path(cache_dir) / "features" / key
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not (out / FEATS_FILE).is_file():
            index_text = storage.read_text(storage.join(entry, INDEX_FILE))
            if index_text is None:
                raise InputError(entry, "feature store entry not found or incomplete (no index.json): was it "
                                        "written where this node can read it? A local storage path must be the "
                                        "same disk on every node (storage_shared), else use object storage")
            index = json.loads(index_text)
            schema = _schema(int(index["n_mels"]), index["dtype"])
            tmp = out / (FEATS_FILE + ".tmp")
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                for part in index["parts"]:
                    with pa.ipc.open_file(pa.BufferReader(storage.read_bytes(storage.join(entry, part["file"])))) as r:
                        for i in range(r.num_record_batches):
                            writer.write_batch(r.get_batch(i))  # decompressed on read, written plain
            (out / STATS_FILE).write_bytes(storage.read_bytes(storage.join(entry, STATS_FILE)))
            (out / INDEX_FILE).write_text(index_text)
            os.replace(tmp, out / FEATS_FILE)  # last: its presence means the copy is complete
    return FeatureStore(out, extracted)


def load_features(manifest: Manifest, cfg: FeatureConfig, cache_dir: str | os.PathLike, progress: bool = True,
                  root: str | None = None, skip_bad: bool = False, parallel: bool = False) -> FeatureStore:
    """The features of ``manifest``, from the store under ``root`` (default: this machine's cache),
    extracted first if nobody has, mapped from this node's cache."""
    entry, extracted = ensure_store(manifest, cfg, root or default_root(cache_dir), skip_bad=skip_bad,
                                    progress=progress, parallel=parallel)
    return open_store(entry, cache_dir, extracted)
