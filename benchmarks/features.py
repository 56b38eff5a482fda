"""The feature store, measured: extraction speed with 1 and 2 CPUs, bytes per hour of audio in
float16 against float32, the rounding error float16 adds, and the CER of one model trained on
float16 features against the same model trained on float32 features. One run, side by side.

    .venv/bin/python benchmarks/features.py [--utts 10000] [--train-utts 2500] [--epochs 6]

The corpus is demo-mono synthesized at ``--utts`` training utterances (cached in
SPEECHTUNE_CACHE, like the demo's). Extraction runs as the job's driver runs it: Ray tasks over
shards of the manifest, on a local Ray with 1 CPU, then with 2, each into a fresh store.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import tune_jobs  # noqa: F401  (Train/Tune integration env, before ray.train loads)
import numpy as np
import ray
import torch

from asr_core import storage
from asr_core.data.features import FeatureConfig, compute_fbank, ensure_store, load_audio, open_store
from asr_core.data.manifest import read_manifest
from asr_core.data.synth import ensure_corpus
from asr_core.evaluate import evaluate
from cluster.local import init_ray
from tune_jobs.runner import run_train
from tune_jobs.spec import ResourcesSpec


def extract(manifest, cfg: FeatureConfig, cpus: int, root: str) -> tuple[float, float, str]:
    """utt/s of two extractions on a fresh local Ray with ``cpus`` CPUs: the first as a job on a
    fresh cluster sees it (Ray's worker processes start and import torch), the second into
    another store with those workers already up (the steady state)."""
    init_ray(num_cpus=cpus)
    rates = []
    try:
        for run in ("cold", "warm"):
            t0 = time.perf_counter()
            entry, n = ensure_store(manifest, cfg, os.path.join(root, run), progress=True, parallel=True)
            rates.append(n / (time.perf_counter() - t0))
            assert n == len(manifest)
    finally:
        ray.shutdown()
    return rates[0], rates[1], entry


def store_bytes(entry: str) -> int:
    return sum(size for name, size in storage.files_under(entry).items() if name.startswith("part-"))


def rounding_error(manifest, cfg: FeatureConfig, entry: str, cache: str, n: int = 200) -> tuple[float, float, float]:
    """Max absolute, RMS, and max relative error of the stored float16 values against float32."""
    store = open_store(entry, cache)
    worst = sq = count = rel = 0.0
    for u in manifest.utterances[:n]:
        wav, sr = load_audio(u)
        exact = compute_fbank(torch.from_numpy(wav), sr, cfg).numpy()
        diff = np.abs(store.feats(store.index[u.id]).astype(np.float32) - exact)
        worst = max(worst, float(diff.max()))
        rel = max(rel, float((diff / np.maximum(np.abs(exact), 1e-6)).max()))
        sq += float((diff.astype(np.float64) ** 2).sum())
        count += diff.size
    return worst, (sq / count) ** 0.5, rel


def train_and_score(m: dict, dtype: str, a, storage_dir: str) -> tuple[float, float]:
    params = {"family": "crnn_ctc", "preset": "demo_small", "train_manifest": m["train"], "dev_manifest": m["dev"],
              "epochs": a.epochs, "max_train_utts": a.train_utts, "n_mels": 40, "batch_bins": 200_000,
              "warmup_steps": 100, "lr": 3e-3, "feature_dtype": dtype, "seed": 0}
    result = run_train(params, ResourcesSpec(num_workers=1, cpus_per_worker=2), storage_dir, f"features_{dtype}",
                       num_cpus=2, progress=False)
    ray.shutdown()
    ev = evaluate(result.checkpoint.path, m["test"], progress=False)
    return ev["cer"], result.metrics["val_cer"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utts", type=int, default=10_000, help="training utterances synthesized (the corpus)")
    ap.add_argument("--train-utts", type=int, default=2500, help="of which the CER comparison trains on")
    ap.add_argument("--epochs", type=int, default=6)
    a = ap.parse_args()
    t0 = time.perf_counter()
    m = ensure_corpus("demo-mono", train=a.utts, dev=200, test=200)
    print(f"corpus: {a.utts} training utterances ({time.perf_counter() - t0:.0f} s to synthesize or find)")
    manifest = read_manifest(m["train"])
    hours = sum(u.duration for u in manifest.utterances) / 3600
    cfg16, cfg32 = FeatureConfig(n_mels=40), FeatureConfig(n_mels=40, feature_dtype="float32")
    with tempfile.TemporaryDirectory() as tmp:
        cold1, warm1, _ = extract(manifest, cfg16, 1, os.path.join(tmp, "one"))
        cold2, warm2, entry16 = extract(manifest, cfg16, 2, os.path.join(tmp, "two"))
        init_ray(num_cpus=2)
        entry32, _ = ensure_store(manifest, cfg32, os.path.join(tmp, "f32"), progress=True, parallel=True)
        ray.shutdown()
        b16, b32 = store_bytes(entry16), store_bytes(entry32)
        raw32 = 4 * 40 * int(__import__("json").loads(storage.read_text(storage.join(entry16, "index.json")))["frames"])
        worst, rms, rel = rounding_error(manifest, cfg16, entry16, os.path.join(tmp, "node"))
        cer16, val16 = train_and_score(m, "float16", a, os.path.join(tmp, "runs"))
        cer32, val32 = train_and_score(m, "float32", a, os.path.join(tmp, "runs"))
    print(f"\ncorpus: {len(manifest)} utterances, {hours:.2f} hours; 40 log-mel bins, 100 frames/s")
    print("extraction, Ray tasks          :  1 CPU       2 CPUs     ratio (goal >= 1.8)")
    print(f"  workers up (steady state)    : {warm1:6.1f} utt/s  {warm2:6.1f} utt/s  {warm2 / warm1:5.2f}")
    print(f"  fresh cluster (worker start) : {cold1:6.1f} utt/s  {cold2:6.1f} utt/s  {cold2 / cold1:5.2f}")
    print(f"float32 values, uncompressed   : {raw32 / hours / 2**20:8.1f} MiB per hour of audio")
    print(f"store, float32 (zstd)          : {b32 / hours / 2**20:8.1f} MiB per hour of audio")
    print(f"store, float16 (zstd, ours)    : {b16 / hours / 2**20:8.1f} MiB per hour of audio")
    print(f"ratio ours / float32 store     : {b16 / b32:8.3f}   (goal <= 0.50)")
    print(f"ratio ours / float32 values    : {b16 / raw32:8.3f}")
    print(f"float16 rounding error         : max {worst:.4f}, RMS {rms:.5f} (log-mel units), max relative {rel:.2e}")
    print(f"crnn_ctc demo_small, {a.train_utts} utts x {a.epochs} epochs, test split (200 unseen):")
    print(f"  trained on float32 features  : test CER {100 * cer32:.2f}%  (last val CER {100 * val32:.2f}%)")
    print(f"  trained on float16 features  : test CER {100 * cer16:.2f}%  (last val CER {100 * val16:.2f}%)")
    print(f"  difference float16 - float32 : {100 * (cer16 - cer32):+.2f} points")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
