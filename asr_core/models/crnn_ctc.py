"""CNN + BiLSTM + CTC (seed 004): Conv1d/BatchNorm/GELU front end with time downsampling,
a BiLSTM stack with locked dropout, an MLP classifier, CTC loss; greedy, prefix beam or
flashlight (lexicon, KenLM) decoding. Preset ``seed004`` is the seed's published network."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from asr_core.models import Family
from asr_core.models.ctc import DECODE_KEYS, DECODE_SPACE, CTCDecoding, acoustic, compute_loss, decode, \
    decode_cached
from asr_core.models.rnn import BiLSTM
from asr_core.errors import KeyProblem


@dataclass
class CRNNConfig(CTCDecoding):
    conv_channels: tuple[int, ...] = (256, 256)
    conv_kernels: tuple[int, ...] = (5, 5)
    conv_strides: tuple[int, ...] = (1, 2)  # total time downsampling = product
    lstm_hidden: int = 256  # per direction
    lstm_layers: int = 2
    lstm_dropout: float = 0.1  # locked (variational) dropout between LSTM layers
    mlp_dim: int = 512
    dropout: float = 0.1  # classifier dropout
    input_dim: int = 0  # 0 = the features' dimension; seed004 pins 15
    num_classes: int = 0  # 0 = the tokenizer's size; seed004 pins 41

    def validate(self) -> None:
        self.validate_decoding()
        if not (len(self.conv_channels) == len(self.conv_kernels) == len(self.conv_strides)):
            raise ValueError("conv_channels, conv_kernels and conv_strides must have the same length")
        if self.lstm_layers < 1 or self.lstm_hidden < 1:
            raise ValueError("lstm_layers and lstm_hidden must be >= 1")
        for k in ("lstm_dropout", "dropout"):
            if not 0.0 <= getattr(self, k) < 1.0:
                raise KeyProblem(k, f"key '{k}' must be in [0, 1)")


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
        layers, c_in = [], cfg.input_dim or feat_dim
        for c_out, k, s in zip(cfg.conv_channels, cfg.conv_kernels, cfg.conv_strides):
            layers += [nn.Conv1d(c_in, c_out, k, stride=s, padding=k // 2), nn.BatchNorm1d(c_out), nn.GELU()]
            c_in = c_out
        self.front = nn.Sequential(*layers)
        self.lstms = nn.ModuleList()
        for i in range(cfg.lstm_layers):
            self.lstms.append(BiLSTM(c_in if i == 0 else 2 * cfg.lstm_hidden, cfg.lstm_hidden))
        self.locked = LockedDropout(cfg.lstm_dropout)
        self.cls = nn.Sequential(
            nn.Linear(2 * cfg.lstm_hidden, cfg.mlp_dim), nn.Dropout(cfg.dropout), nn.GELU(),
            nn.Linear(cfg.mlp_dim, cfg.num_classes or vocab_size),
        )

    def out_lens(self, lens: torch.Tensor) -> torch.Tensor:
        for k, s in zip(self.cfg.conv_kernels, self.cfg.conv_strides):
            lens = (lens + 2 * (k // 2) - k) // s + 1
        return lens

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.front(feats.transpose(1, 2)).transpose(1, 2)  # (B, T', C)
        lens = self.out_lens(lens).clamp(min=1, max=x.size(1))
        for i, lstm in enumerate(self.lstms):
            x = lstm(x, lens)  # (B, T', 2H)
            if i < len(self.lstms) - 1:
                x = self.locked(x)
        return self.cls(x).log_softmax(-1), lens  # (B, T', V), (B,)


def build(cfg: CRNNConfig, vocab_size: int, feat_dim: int) -> CRNN:
    for key, have in (("input_dim", feat_dim), ("num_classes", vocab_size)):
        want = getattr(cfg, key)
        if want and have and want != have:
            raise KeyProblem(key, f"key '{key}': the config pins {want} but the data gives {have} "
                             f"(set {key}: 0 to follow the data, or n_mels to match)")
    return CRNN(cfg, vocab_size, feat_dim)


PRESETS = {
    # CPU-sized: trains in minutes on the demo corpus, with augmentation (asr_core/data/augment.py):
    # three copies of the training set with speed 0.8-1.3 and white noise (the corpora's kind) at 10-30 dB,
    # SpecAugment, each utterance's own mean removed (cmvn: utterance) and a front-end stride of 2 (50
    # frames a second: the fastest speech keeps more than two frames a character for CTC). `make demo`;
    # the README gives what each part did to test and test_hard CER
    "demo_small": dict(conv_channels=[128, 128], conv_kernels=[5, 5], conv_strides=[1, 2],
                       lstm_hidden=160, lstm_layers=2, lstm_dropout=0.1, mlp_dim=256, dropout=0.1,
                       aug_copies=3, speed_perturb=[0.8, 0.9, 1.0, 1.1, 1.2, 1.3], noise_snr=[10.0, 30.0],
                       noise_types=["white"], specaug=True, cmvn="utterance"),
    # Seed 004's best network (its model summary, 22,322,217 parameters): 15-dim input, 41 classes.
    "seed004": dict(conv_channels=[1024, 1024], conv_kernels=[7, 5], conv_strides=[1, 2],
                    lstm_hidden=512, lstm_layers=2, lstm_dropout=0.3, mlp_dim=4096, dropout=0.3,
                    input_dim=15, num_classes=41),
    "tiny": dict(conv_channels=[64, 64], conv_kernels=[5, 5], conv_strides=[1, 2],
                 lstm_hidden=64, lstm_layers=1, lstm_dropout=0.0, mlp_dim=128, dropout=0.0),
}

FAMILY = Family(name="crnn_ctc", config_cls=CRNNConfig, build=build, compute_loss=compute_loss,
                decode=decode, presets=PRESETS, default_metric="val_cer", decode_keys=DECODE_KEYS,
                acoustic=acoustic, decode_cached=decode_cached, decode_space=DECODE_SPACE)
