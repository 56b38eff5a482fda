"""The per-worker training loop, the same for every family (icefall's split of the loop).

Runs inside a Ray Train worker (``train_loop_per_worker``): each worker reads its own shard of
length-bucketed batches, gradients are averaged by DDP (gloo on CPU, NCCL on GPU), validation
counts are summed over workers, and every epoch reports metrics and a checkpoint.
"""
from __future__ import annotations

import math
import os
import tempfile
import time

import torch
import torch.distributed as dist

from asr_core.data.batching import SpeechDataset, shard
from asr_core.metrics import ErrorCounts
from asr_core.models import Family, get_family
from asr_core.train import checkpoint as ckpt
from asr_core.train.config import RunConfig, TrainConfig, split_params
from asr_core.train.data import prepare_data


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Per-step schedule: linear warm-up over ``warmup_steps``, then constant or cosine to 0."""
    warm = max(cfg.warmup_steps, 0)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if _world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


def train_one_epoch(model, family: Family, data: SpeechDataset, batches, optimizer, scheduler,
                    cfg: TrainConfig) -> tuple[float, int]:
    """One pass over this worker's batches; returns (summed loss, utterances) of this worker."""
    model.train()
    total, n = 0.0, 0
    device = next(model.parameters()).device
    for batch in data.iterate(batches):
        batch = batch.to(device)
        loss, count = family.compute_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        (loss / count).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        total += float(loss.detach())
        n += count
    return total, n


@torch.no_grad()
def compute_validation_loss(model, family: Family, data: SpeechDataset, batches, tokenizer) -> dict:
    """Loss and error counts over this worker's validation batches, summed across workers."""
    model.eval()
    inner = getattr(model, "module", model)  # decode without DDP's forward hooks
    loss_sum, n = 0.0, 0
    errs = ErrorCounts()
    device = next(inner.parameters()).device
    for batch in data.iterate(batches):
        batch = batch.to(device)
        loss, count = family.compute_loss(inner, batch)
        loss_sum += float(loss)
        n += count
        hyps = [tokenizer.decode(ids) for ids in family.decode(inner, batch)]
        errs.add(batch.texts, hyps)
    loss_sum, n, *counts = _all_sum([loss_sum, n, *errs.as_list()])
    errs = ErrorCounts(*[int(c) for c in counts])
    return {"val_loss": loss_sum / n if n else float("nan"), "val_cer": errs.cer, "val_wer": errs.wer}


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point. ``config`` is the run's flat parameter dict (plus family/preset)."""
    import ray.train
    import ray.train.torch

    run: RunConfig = split_params(config, where="trial config")
    family = get_family(run.family)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(run.train.seed)
    data = prepare_data(run.data, run.features, progress=False)
    tok = data.tokenizer

    model = family.build(run.model, tok.vocab_size, run.features.n_mels)
    train_batches = data.train.batches(run.train.batch_bins)
    dev_batches = shard(data.dev.batches(run.train.batch_bins), rank, world, 0, 0, shuffle=False)
    steps_per_epoch = len(train_batches) // world if len(train_batches) >= world else len(train_batches)
    optimizer = make_optimizer(model, run.train)
    scheduler = make_scheduler(optimizer, run.train, steps_per_epoch * run.train.epochs)

    start_epoch = 1
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            state = ckpt.load_state(d)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1

    model = ray.train.torch.prepare_model(model)  # DDP when world > 1; moves to the device

    for epoch in range(start_epoch, run.train.epochs + 1):
        t0 = time.perf_counter()
        mine = shard(train_batches, rank, world, run.train.seed, epoch)
        loss_sum, n = train_one_epoch(model, family, data.train, mine, optimizer, scheduler, run.train)
        train_time = time.perf_counter() - t0
        loss_sum, n = _all_sum([loss_sum, n])
        val = compute_validation_loss(model, family, data.dev, dev_batches, tok)
        metrics = {
            "epoch": epoch,
            "train_loss": loss_sum / n if n else float("nan"),
            **val,
            "epoch_time_s": time.perf_counter() - t0,
            "utts_per_s": n / train_time if train_time > 0 else float("nan"),
            "lr": optimizer.param_groups[0]["lr"],
        }
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                inner = getattr(model, "module", model)
                ckpt.save(tmp, model=inner, optimizer=optimizer, scheduler=scheduler, epoch=epoch, run=run,
                          tokenizer=tok, mean=data.train.mean, std=data.train.std, metrics=metrics)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
