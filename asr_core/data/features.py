"""Log-mel filterbank features, computed once per node into a shared memory-mapped cache.

The cache is an Arrow IPC file per (manifest content, feature settings): every trial and every
worker on the node maps the same file, so no trial extracts features a second time. A file lock
makes the first worker on a node extract while the others wait, then all read.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import soundfile
import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF
from filelock import FileLock
from tqdm import tqdm

from asr_core.data.manifest import Manifest

log = logging.getLogger(__name__)

FEATS_FILE = "feats.arrow"
STATS_FILE = "stats.json"


@dataclass(frozen=True)
class FeatureConfig:
    n_mels: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    sample_rate: int = 16000

    def validate(self) -> None:
        if self.n_mels <= 0:
            raise ValueError("key 'n_mels' must be positive")
        if self.frame_shift_ms <= 0 or self.frame_length_ms < self.frame_shift_ms:
            raise ValueError("keys 'frame_length_ms'/'frame_shift_ms': need 0 < shift <= length")


def compute_fbank(wav: torch.Tensor, sr: int, cfg: FeatureConfig) -> torch.Tensor:
    """(samples,) float waveform -> (T, n_mels) log-mel filterbank (Kaldi-compatible, as ESPnet/icefall)."""
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
    )


def cache_key(manifest_path: str, cfg: FeatureConfig) -> str:
    h = hashlib.sha1()
    with open(manifest_path, "rb") as f:
        h.update(f.read())
    h.update(os.path.abspath(manifest_path).encode())  # relative audio paths resolve against it
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    return h.hexdigest()[:20]


class FeatureStore:
    """Features of one manifest, memory-mapped from the cache. ``extracted`` counts utterances
    this process computed (0 when the cache was already there)."""

    def __init__(self, path: Path, extracted: int):
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

    def __len__(self) -> int:
        return len(self.ids)

    def feats(self, i: int) -> np.ndarray:
        values, start, end = self._rows[i]
        return values[start:end].reshape(-1, self.n_mels)  # (T, F), a view


def _extract(manifest: Manifest, cfg: FeatureConfig, out: Path, progress: bool) -> int:
    schema = pa.schema(
        [("id", pa.string()), ("num_frames", pa.int32()), ("feats", pa.large_list(pa.float32()))],
        metadata={"n_mels": str(cfg.n_mels), "manifest": manifest.path},
    )
    tmp = out / (FEATS_FILE + ".tmp")
    total = np.zeros(cfg.n_mels, np.float64)
    total_sq = np.zeros(cfg.n_mels, np.float64)
    frames = 0
    batch: dict[str, list] = {"id": [], "num_frames": [], "feats": []}
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        def flush():
            if batch["id"]:
                writer.write_batch(pa.record_batch([pa.array(batch[k], type=schema.field(k).type)
                                                    for k in ("id", "num_frames", "feats")], schema=schema))
                for v in batch.values():
                    v.clear()

        for u in tqdm(manifest.utterances, desc=f"features {Path(manifest.path).name}", unit="utt",
                      disable=not progress):
            data, sr = soundfile.read(u.audio, dtype="float32", always_2d=True)
            wav = torch.from_numpy(data.mean(axis=1))
            fb = compute_fbank(wav, sr, cfg).numpy()  # (T, F)
            total += fb.sum(0)
            total_sq += (fb.astype(np.float64) ** 2).sum(0)
            frames += fb.shape[0]
            batch["id"].append(u.id)
            batch["num_frames"].append(fb.shape[0])
            batch["feats"].append(fb.reshape(-1))
            if len(batch["id"]) >= 256:
                flush()
        flush()
    mean = total / max(frames, 1)
    std = np.sqrt(np.maximum(total_sq / max(frames, 1) - mean**2, 1e-8))
    (out / STATS_FILE).write_text(json.dumps({"mean": mean.tolist(), "std": std.tolist(), "frames": frames}))
    os.replace(tmp, out / FEATS_FILE)  # last: its presence means the entry is complete
    return len(manifest.utterances)


def load_features(manifest: Manifest, cfg: FeatureConfig, cache_dir: str | os.PathLike,
                  progress: bool = True) -> FeatureStore:
    """Map the cached features of ``manifest``, extracting them first if this node has none."""
    key = cache_key(manifest.path, cfg)
    out = Path(cache_dir) / "features" / key
    out.mkdir(parents=True, exist_ok=True)
    extracted = 0
    with FileLock(str(out) + ".lock"):
        if not (out / FEATS_FILE).is_file():
            log.info("extracting features of %s into %s", manifest.path, out)
            extracted = _extract(manifest, cfg, out, progress)
    store = FeatureStore(out, extracted)
    missing = [u.id for u in manifest.utterances if u.id not in store.index]
    if missing:  # a cache built from an unfiltered manifest still serves a filtered one
        raise RuntimeError(f"feature cache {out} lacks {len(missing)} utterance(s), e.g. {missing[0]}")
    return store
