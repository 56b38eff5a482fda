"""CNN + BiLSTM + CTC (seed 004): Conv1d/BatchNorm/GELU front end with time downsampling,
a BiLSTM stack with locked dropout, an MLP classifier, CTC loss, greedy decoding."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from asr_core.models import Family


@dataclass
class CRNNConfig:
    conv_channels: tuple[int, ...] = (256, 256)
    conv_kernels: tuple[int, ...] = (5, 5)
    conv_strides: tuple[int, ...] = (1, 2)  # total time downsampling = product
    lstm_hidden: int = 256  # per direction
    lstm_layers: int = 2
    lstm_dropout: float = 0.1  # locked (variational) dropout between LSTM layers
    mlp_dim: int = 512
    dropout: float = 0.1  # classifier dropout

    def validate(self) -> None:
        if not (len(self.conv_channels) == len(self.conv_kernels) == len(self.conv_strides)):
            raise ValueError("conv_channels, conv_kernels and conv_strides must have the same length")
        if self.lstm_layers < 1 or self.lstm_hidden < 1:
            raise ValueError("lstm_layers and lstm_hidden must be >= 1")
        for k in ("lstm_dropout", "dropout"):
            if not 0.0 <= getattr(self, k) < 1.0:
                raise ValueError(f"key '{k}' must be in [0, 1)")


class LockedDropout(nn.Module):
    """One dropout mask per sequence, shared over time (AWD-LSTM); input (B, T, C)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - self.p) / (1 - self.p)
        return x * mask


class CRNN(nn.Module):
    def __init__(self, cfg: CRNNConfig, vocab_size: int, feat_dim: int):
        super().__init__()
        self.cfg = cfg
        layers, c_in = [], feat_dim
        for c_out, k, s in zip(cfg.conv_channels, cfg.conv_kernels, cfg.conv_strides):
            layers += [nn.Conv1d(c_in, c_out, k, stride=s, padding=k // 2), nn.BatchNorm1d(c_out), nn.GELU()]
            c_in = c_out
        self.front = nn.Sequential(*layers)
        self.lstms = nn.ModuleList()
        for i in range(cfg.lstm_layers):
            self.lstms.append(nn.LSTM(c_in if i == 0 else 2 * cfg.lstm_hidden, cfg.lstm_hidden,
                                      batch_first=True, bidirectional=True))
        self.locked = LockedDropout(cfg.lstm_dropout)
        self.cls = nn.Sequential(
            nn.Linear(2 * cfg.lstm_hidden, cfg.mlp_dim), nn.Dropout(cfg.dropout), nn.GELU(),
            nn.Linear(cfg.mlp_dim, vocab_size),
        )

    def out_lens(self, lens: torch.Tensor) -> torch.Tensor:
        for k, s in zip(self.cfg.conv_kernels, self.cfg.conv_strides):
            lens = (lens + 2 * (k // 2) - k) // s + 1
        return lens

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.front(feats.transpose(1, 2)).transpose(1, 2)  # (B, T', C)
        lens = self.out_lens(lens).clamp(min=1, max=x.size(1))
        # No PackedSequence: on CPU its backward zero-fills the whole packed tensor at every
        # time step (measured 6x slower here). Batches are length-bucketed, so the few padded
        # frames the backward direction reads first cost little.
        for i, lstm in enumerate(self.lstms):
            x, _ = lstm(x)  # (B, T', 2H)
            if i < len(self.lstms) - 1:
                x = self.locked(x)
        return self.cls(x).log_softmax(-1), lens  # (B, T', V), (B,)


def build(cfg: CRNNConfig, vocab_size: int, feat_dim: int) -> CRNN:
    return CRNN(cfg, vocab_size, feat_dim)


def compute_loss(model: nn.Module, batch) -> tuple[torch.Tensor, int]:
    log_probs, out_lens = model(batch.feats, batch.feat_lens)
    loss = F.ctc_loss(log_probs.transpose(0, 1), batch.targets, out_lens, batch.target_lens,
                      blank=0, reduction="sum", zero_infinity=True)
    return loss, len(batch)


def greedy_ctc(log_probs: torch.Tensor, lens: torch.Tensor) -> list[list[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks. (B, T, V) -> token ids."""
    best = log_probs.argmax(-1)  # (B, T)
    out = []
    for b in range(best.size(0)):
        seq = torch.unique_consecutive(best[b, : int(lens[b])])
        out.append([int(t) for t in seq if t != 0])
    return out


@torch.no_grad()
def decode(model: nn.Module, batch) -> list[list[int]]:
    log_probs, out_lens = model(batch.feats, batch.feat_lens)
    return greedy_ctc(log_probs, out_lens)


PRESETS = {
    # CPU-sized: trains in minutes on the demo corpus.
    "demo_small": dict(conv_channels=[128, 128], conv_kernels=[5, 5], conv_strides=[1, 3],
                       lstm_hidden=128, lstm_layers=2, lstm_dropout=0.1, mlp_dim=256, dropout=0.1),
    "tiny": dict(conv_channels=[64, 64], conv_kernels=[5, 5], conv_strides=[1, 2],
                 lstm_hidden=64, lstm_layers=1, lstm_dropout=0.0, mlp_dim=128, dropout=0.0),
}

FAMILY = Family(name="crnn_ctc", config_cls=CRNNConfig, build=build, compute_loss=compute_loss,
                decode=decode, presets=PRESETS, default_metric="val_cer")
