"""The input pipeline, measured in one run on the same batches of the demo corpus:

1. batches/s of the loader alone (gather from the memory-mapped store, normalise, pad) against
   training steps/s of crnn_ctc ``demo_small`` (forward, CTC loss, backward, optimizer step);
2. the training loop's utterances/s with batches assembled by the background thread
   (``prefetch: 4``, the default) against assembled in the step (``prefetch: 0``), epochs of
   the two alternating so that a slow spell of the machine does not land on one side only.

    .venv/bin/python benchmarks/input_pipeline.py [--utts 1000] [--rounds 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

import tune_jobs  # noqa: F401
import torch

from asr_core.data.batching import shard
from asr_core.data.synth import ensure_corpus
from asr_core.models import get_family
from asr_core.train.config import split_params
from asr_core.train.data import prepare_data
from asr_core.train.loop import StepState, train_one_epoch
from asr_core.train.schedules import Schedule, make_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utts", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3, help="epochs of each variant, alternating")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a demo trial has 1 CPU)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m = ensure_corpus("demo-mono", train=2500)  # the demo's corpus: shares its cache
    run = split_params({"family": "crnn_ctc", "preset": "demo_small", "train_manifest": m["train"],
                        "dev_manifest": m["dev"], "max_train_utts": a.utts, "n_mels": 40, "batch_bins": 200_000,
                        "schedule": "constant", "epochs": 100})
    data = prepare_data(run.data, run.features, progress=False)
    family = get_family(run.family)
    torch.manual_seed(0)
    model = family.build(run.model, data.tokenizer.vocab_size, run.features.n_mels)
    opt = make_optimizer(model, run.train)
    batches = data.train.batches(run.train.batch_bins)
    sched = Schedule(opt, run.train, 10_000, len(batches))

    # 1. the loader alone, then the step alone on already assembled batches
    t0 = time.perf_counter()
    for _ in range(a.rounds):
        for _b in data.train.iterate(batches):
            pass
    loader_bps = a.rounds * len(batches) / (time.perf_counter() - t0)
    ready = [data.train.collate(b) for b in batches]
    model.train()
    t0 = time.perf_counter()
    for b in ready:
        loss, count = family.compute_loss(model, b)
        opt.zero_grad()
        (loss / count).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), run.train.grad_clip)
        opt.step()
    step_sps = len(ready) / (time.perf_counter() - t0)

    # 2. the loop, background batches against batches assembled in the step
    rates: dict[int, list[float]] = {4: [], 0: []}
    state = StepState()
    for r in range(a.rounds):
        for prefetch in ((4, 0) if r % 2 == 0 else (0, 4)):
            cfg = dataclasses.replace(run.train, prefetch=prefetch)
            t0 = time.perf_counter()
            _, n = train_one_epoch(model, family, data.train, shard(batches, 0, 1, 0, r + 1), opt, sched, cfg, state)
            rates[prefetch].append(n / (time.perf_counter() - t0))

    print(f"crnn_ctc/demo_small, {len(data.train)} utterances, {len(batches)} batches, {a.threads} torch thread(s)")
    print(f"loader alone                 : {loader_bps:8.1f} batches/s")
    print(f"training step alone          : {step_sps:8.1f} steps/s")
    print(f"ratio loader / step          : {loader_bps / step_sps:8.1f}   (goal >= 3)")
    bg, inline = max(rates[4]), max(rates[0])
    print(f"loop, background batches     : {bg:8.1f} utt/s   (epochs: {', '.join(f'{x:.1f}' for x in rates[4])})")
    print(f"loop, batches in the step    : {inline:8.1f} utt/s   (epochs: {', '.join(f'{x:.1f}' for x in rates[0])})")
    print(f"ratio background / in step   : {bg / inline:8.3f}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
