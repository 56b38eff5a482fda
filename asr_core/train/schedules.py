"""Optimizers and learning-rate schedules named in the seeds.

Per-step schedules are one ``LambdaLR`` whose factor composes linear warm-up with the decay:
torch's ``SequentialLR`` chaining of ``LinearLR`` with ``CosineAnnealingWarmRestarts`` resets the
second scheduler at the milestone and cannot express seed 004's multi-stage cosine, so the
formulas are written out here (each is a line). ``plateau`` is torch's ``ReduceLROnPlateau``
stepped once per epoch on the run's selection metric.
"""
from __future__ import annotations

import math

import torch

from asr_core.train.config import TrainConfig

OPTIMIZERS = {
    "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax,
    "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD,
}


def param_groups(model: torch.nn.Module, cfg: TrainConfig, split: bool = True) -> list[dict]:
    """The optimizer's parameter groups: weight decay on matrices, embeddings and convolution
    kernels; none on biases and normalisation gains (every parameter of fewer than 2 dimensions,
    nanoGPT's rule), unless ``decay_bias_and_norm`` or not ``split`` (one group: every parameter
    decays, as checkpoints written before the split were trained). The no-decay group carries
    ``no_decay`` so that a PBT mutation of ``weight_decay`` leaves it at 0. Empty groups are
    left out."""
    params = list(model.parameters())
    if cfg.decay_bias_and_norm or not split:
        return [{"params": params}]
    groups = [{"params": [p for p in params if p.dim() >= 2]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "no_decay": True}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, split: bool = True) -> torch.optim.Optimizer:
    kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "sgd":
        kwargs["momentum"] = cfg.momentum
    return OPTIMIZERS[cfg.optimizer](param_groups(model, cfg, split), **kwargs)


def lr_factor(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step`` (0-based)."""
    warm = cfg.warmup_steps + int(round(cfg.warmup_epochs * steps_per_epoch))
    floor = cfg.min_lr / cfg.lr
    if cfg.schedule == "noam":  # ESPnet WarmupLR: peaks at cfg.lr when step == warmup
        s, w = step + 1, max(warm, 1)
        return max(floor, w ** 0.5 * min(s ** -0.5, s * w ** -1.5))
    if warm and step < warm:
        return (step + 1) / warm
    after = step - warm
    if cfg.schedule == "cosine":
        span = max(1, total_steps - warm)
        stage = max(1, math.ceil(span / cfg.cosine_stages))
        p = min(1.0, (after % stage) / stage) if after < span else 1.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
    if cfg.schedule == "cosine_restarts":  # SGDR (Loshchilov & Hutter): periods T_0, T_0*m, ...
        period, t = cfg.restart_steps, after
        while t >= period:
            t -= period
            period = int(math.ceil(period * cfg.restart_mult))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t / period))
    if cfg.schedule == "step":
        return max(floor, cfg.step_gamma ** ((step // max(1, steps_per_epoch)) // cfg.step_size))
    return 1.0  # constant (after warm-up); plateau adjusts per epoch


class Schedule:
    """The run's LR schedule: ``step()`` after every optimizer step, ``epoch_end(metric)`` after
    every validation. Its state goes into checkpoints."""

    def __init__(self, opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int, steps_per_epoch: int,
                 mode: str = "min"):
        self.cfg = cfg
        if cfg.schedule == "plateau":
            self.inner = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode=mode, patience=cfg.plateau_patience, factor=cfg.plateau_factor, min_lr=cfg.min_lr)
        else:
            self.inner = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: lr_factor(cfg, s, total_steps, steps_per_epoch))

    def step(self) -> None:
        if self.cfg.schedule != "plateau":
            self.inner.step()

    def epoch_end(self, metric: float) -> None:
        if self.cfg.schedule == "plateau" and metric == metric:  # NaN never counts as a plateau step
            self.inner.step(metric)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)

    def rebase(self, lr: float) -> None:
        """Make ``lr`` the base rate after loading another run's state (PBT's mutated ``lr``),
        keeping the schedule's position: the current rate becomes ``lr`` times its factor."""
        for g in self.inner.optimizer.param_groups:
            g["initial_lr"] = lr
        if self.cfg.schedule == "plateau":
            for g in self.inner.optimizer.param_groups:
                g["lr"] = lr
            return
        self.inner.base_lrs = [lr] * len(self.inner.base_lrs)
        factors = [f(self.inner.last_epoch) for f in self.inner.lr_lambdas]
        for g, f in zip(self.inner.optimizer.param_groups, factors):
            g["lr"] = lr * f
