"""Utterances per second: our Ray Train loop (1 worker) vs a bare PyTorch loop, in one run.

Same model (crnn_ctc, same preset and seed), same cached features, same length-bucketed
batches, same number of threads. Only the training passes are timed in both: the Ray figure is
the loop's own ``utts_per_s`` metric (training time of each epoch, validation excluded).

    .venv/bin/python benchmarks/train_throughput.py [--utts 1000] [--epochs 3] [--preset demo_small]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import tune_jobs  # noqa: F401  (Train/Tune integration env, before ray.train loads)
import torch

from asr_core.data.batching import shard
from asr_core.data.synth import ensure_corpus
from asr_core.models import get_family
from asr_core.train.config import split_params
from asr_core.train.data import prepare_data
from asr_core.train.loop import make_optimizer
from tune_jobs.runner import run_train
from tune_jobs.spec import ResourcesSpec


def bare_loop(params: dict, epochs: int, threads: int) -> float:
    torch.set_num_threads(threads)
    run = split_params(params)
    family = get_family(run.family)
    torch.manual_seed(run.train.seed)
    data = prepare_data(run.data, run.features, progress=False)
    model = family.build(run.model, data.tokenizer.vocab_size, run.features.n_mels)
    opt = make_optimizer(model, run.train)
    batches = data.train.batches(run.train.batch_bins)
    rates = []
    for epoch in range(1, epochs + 1):
        model.train()
        n, t0 = 0, time.perf_counter()
        for idx in shard(batches, 0, 1, run.train.seed, epoch):
            b = data.train.collate(idx)
            log_probs, out_lens = model(b.feats, b.feat_lens)
            loss = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), b.targets, out_lens, b.target_lens,
                                                reduction="sum", zero_infinity=True)
            opt.zero_grad()
            (loss / len(b)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), run.train.grad_clip)
            opt.step()
            n += len(b)
        rates.append(n / (time.perf_counter() - t0))
    return max(rates[1:] or rates)  # first epoch warms up allocators in both


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utts", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--preset", default="demo_small")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    m = ensure_corpus("demo-mono", train=2500)  # the demo's corpus: shares its cache
    params = {"family": "crnn_ctc", "preset": a.preset, "train_manifest": m["train"], "dev_manifest": m["dev"],
              "epochs": a.epochs, "max_train_utts": a.utts, "batch_bins": 400_000, "schedule": "constant"}
    # The bare loop runs before and after the Ray run and the two are averaged, so that a slow
    # or fast spell of this shared machine does not land on one side only.
    bare_before = bare_loop(params, a.epochs, a.threads)
    with tempfile.TemporaryDirectory() as storage:
        result = run_train(params, ResourcesSpec(num_workers=1, cpus_per_worker=a.threads), storage, "bench",
                           num_cpus=a.threads)
        ours = max(result.metrics_dataframe["utts_per_s"].iloc[1:].tolist() or [result.metrics["utts_per_s"]])
    bare_after = bare_loop(params, a.epochs, a.threads)
    bare = (bare_before + bare_after) / 2
    print(f"model crnn_ctc/{a.preset}, {a.utts} utterances, {a.epochs} epochs, {a.threads} threads")
    print(f"bare PyTorch loop     : {bare:8.1f} utt/s   (before Ray {bare_before:.1f}, after {bare_after:.1f})")
    print(f"Ray Train (1 worker)  : {ours:8.1f} utt/s")
    print(f"ratio ours/bare       : {ours / bare:8.3f}   (goal >= 0.90)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
