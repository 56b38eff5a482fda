"""Dilated residual 1-D convolutions + CTC (seed 002, WaveNet-style acoustic model).

``NUM_STACKS`` stacks, each of residual blocks with dilations 1, 2, 4 ... ``MAX_DIL``; every block
is a gated dilated convolution (tanh * sigmoid) with residual and skip outputs; ``BATCHNORM``
puts a BatchNorm before each residual block; ``PADDING`` off batches only utterances of equal
length so that no frame is padding (seed 002's padding experiment). Names are the seed's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from asr_core.models import Family
from asr_core.models.ctc import DECODE_KEYS, DECODE_SPACE, CTCDecoding, acoustic, compute_loss, decode, \
    decode_cached
from asr_core.errors import KeyProblem


@dataclass
class WaveNetConfig(CTCDecoding):
    MAX_DIL: int = 64  # largest dilation in a stack (a power of 2)
    NUM_STACKS: int = 3
    BATCHNORM: bool = False
    PADDING: bool = True
    channels: int = 128  # residual channels
    skip_channels: int = 128
    kernel_size: int = 3
    subsample: int = 2  # stride of the input convolution (frames per output step)
    dropout: float = 0.1

    def validate(self) -> None:
        self.validate_decoding()
        if self.MAX_DIL < 1 or self.MAX_DIL & (self.MAX_DIL - 1):
            raise KeyProblem("MAX_DIL", f"key 'MAX_DIL' must be a power of 2, got {self.MAX_DIL}")
        if self.NUM_STACKS < 1 or self.channels < 1 or self.subsample < 1:
            raise KeyProblem("NUM_STACKS", "keys 'NUM_STACKS', 'channels' and 'subsample' must be >= 1")
        if self.kernel_size % 2 == 0:
            raise KeyProblem("kernel_size", "key 'kernel_size' must be odd (centred, non-causal convolutions)")


class ResidualBlock(nn.Module):
    def __init__(self, cfg: WaveNetConfig, dilation: int):
        super().__init__()
        c = cfg.channels
        self.norm = nn.BatchNorm1d(c) if cfg.BATCHNORM else nn.Identity()
        self.conv = nn.Conv1d(c, 2 * c, cfg.kernel_size, dilation=dilation,
                              padding=dilation * (cfg.kernel_size - 1) // 2)
        self.res = nn.Conv1d(c, c, 1)
        self.skip = nn.Conv1d(c, cfg.skip_channels, 1)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(self.norm(x))  # (B, 2C, T)
        a, g = h.chunk(2, dim=1)
        h = self.drop(torch.tanh(a) * torch.sigmoid(g))  # (B, C, T)
        return (x + self.res(h)) * mask * math.sqrt(0.5), self.skip(h) * mask


class WaveNetCTC(nn.Module):
    def __init__(self, cfg: WaveNetConfig, vocab_size: int, feat_dim: int):
        super().__init__()
        self.cfg = cfg
        s = cfg.subsample
        self.inp = nn.Conv1d(feat_dim, cfg.channels, 2 * s - 1 if s > 1 else 1, stride=s, padding=s - 1)
        dilations = [2 ** i for i in range(int(math.log2(cfg.MAX_DIL)) + 1)]
        self.blocks = nn.ModuleList(ResidualBlock(cfg, d) for _ in range(cfg.NUM_STACKS) for d in dilations)
        self.out = nn.Sequential(nn.ReLU(), nn.Conv1d(cfg.skip_channels, cfg.skip_channels, 1), nn.ReLU(),
                                 nn.Conv1d(cfg.skip_channels, vocab_size, 1))

    def out_lens(self, lens: torch.Tensor) -> torch.Tensor:
        s = self.cfg.subsample
        k = 2 * s - 1 if s > 1 else 1
        return (lens + 2 * (s - 1) - k) // s + 1

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inp(feats.transpose(1, 2))  # (B, C, T')
        lens = self.out_lens(lens).clamp(min=1, max=x.size(2))
        mask = (torch.arange(x.size(2), device=x.device)[None] < lens[:, None]).unsqueeze(1).to(x.dtype)  # (B, 1, T')
        x = x * mask
        skip = 0
        for block in self.blocks:
            x, s = block(x, mask)
            skip = skip + s
        logits = self.out(skip).transpose(1, 2)  # (B, T', V)
        return logits.log_softmax(-1), lens


def build(cfg: WaveNetConfig, vocab_size: int, feat_dim: int) -> WaveNetCTC:
    return WaveNetCTC(cfg, vocab_size, feat_dim)


PRESETS = {
    # Seed 002's reference network: MAX_DIL=64, NUM_STACKS=3, BatchNorm on, no padding.
    "seed002": dict(MAX_DIL=64, NUM_STACKS=3, BATCHNORM=True, PADDING=False, channels=128, skip_channels=128),
    # CPU-sized for tests and demos.
    "tiny": dict(MAX_DIL=8, NUM_STACKS=2, BATCHNORM=True, PADDING=True, channels=64, skip_channels=64,
                 subsample=2, dropout=0.0),
}

FAMILY = Family(name="wavenet_ctc", config_cls=WaveNetConfig, build=build, compute_loss=compute_loss,
                decode=decode, presets=PRESETS, default_metric="val_cer", pads=lambda cfg: cfg.PADDING,
                decode_keys=DECODE_KEYS,
                acoustic=acoustic, decode_cached=decode_cached, decode_space=DECODE_SPACE)
