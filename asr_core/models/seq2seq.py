"""Attention encoder-decoder (Listen, Attend and Spell style) with a CTC variant (seed 001).

Encoder: a strided Conv1d then a pyramidal BiLSTM (each layer halves time by stacking frame
pairs). Decoder (``decoder_type: attention``): an LSTM cell over the previous token and context,
dot-product attention over the encoder, cross-entropy with label smoothing or focal loss
(``focal_gamma``). ``decoder_type: ctc`` (preset ``ctc_small``) puts a CTC head on the encoder.
Presets ``small``, ``medium``, ``large``, ``ctc_small`` are seed 001's model names; its metrics
are ``val_char_acc`` and ``val_seq_acc`` (exact transcripts).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from asr_core.decoding import ctc_loss, greedy_ctc
from asr_core.models import Family
from asr_core.models.rnn import BiLSTM
from asr_core.models.seq_common import add_sos_eos, beam_each, smoothed_ce, strip_eos
from asr_core.errors import KeyProblem


@dataclass
class Seq2SeqConfig:
    decoder_type: Literal["attention", "ctc"] = "attention"
    encoder_dim: int = 256  # per direction
    encoder_layers: int = 3  # pyramidal: every layer after the first halves time
    decoder_dim: int = 512
    embed_dim: int = 128
    attention_dim: int = 256
    dropout: float = 0.1
    label_smoothing: float = 0.0
    focal_gamma: float = 0.0  # > 0: focal loss (seed 001's focal_loss_experiment)
    beam_size: int = 1  # 1 = greedy
    # longest hypothesis, in tokens per encoder frame: fast demo speech reaches 26 characters/s
    # against 25 encoder frames/s after 4x subsampling, and a cap at 1.0 cut their last letters
    max_len_ratio: float = 2.0

    def validate(self) -> None:
        if self.encoder_layers < 1:
            raise KeyProblem("encoder_layers", "key 'encoder_layers' must be >= 1")
        if self.focal_gamma < 0 or not 0 <= self.label_smoothing < 1:
            raise KeyProblem("focal_gamma", "keys 'focal_gamma' >= 0 and 'label_smoothing' in [0, 1) required")


class Encoder(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig, feat_dim: int):
        super().__init__()
        h = cfg.encoder_dim
        self.conv = nn.Conv1d(feat_dim, h, 3, stride=2, padding=1)
        # LayerNorm, not BatchNorm: batch statistics taken over padded frames, and running ones in
        # eval, made validation on the training set itself drop sequences that training had learned
        self.norm = nn.LayerNorm(h)
        self.lstms = nn.ModuleList(
            BiLSTM(h if i == 0 else 4 * h, h) for i in range(cfg.encoder_layers))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.gelu(self.norm(self.conv(feats.transpose(1, 2)).transpose(1, 2)))  # (B, T/2, H)
        lens = ((lens - 1) // 2 + 1).clamp(max=x.size(1))
        for i, lstm in enumerate(self.lstms):
            if i > 0:  # pyramid: (B, T, 2H) -> (B, T/2, 4H)
                T = x.size(1) // 2 * 2
                x = x[:, :T].reshape(x.size(0), T // 2, -1)
                lens = (lens // 2).clamp(min=1)
            x = lstm(self.drop(x), lens.clamp(min=1, max=x.size(1)))  # (B, T', 2H)
        return x, lens.clamp(min=1, max=x.size(1))


class Seq2Seq(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig, vocab_size: int, feat_dim: int):
        super().__init__()
        self.cfg = cfg
        self.sos = self.eos = vocab_size  # one extra output: <sos/eos>
        self.encoder = Encoder(cfg, feat_dim)
        enc_out = 2 * cfg.encoder_dim
        if cfg.decoder_type == "ctc":
            self.ctc = nn.Linear(enc_out, vocab_size)
            return
        self.embed = nn.Embedding(vocab_size + 1, cfg.embed_dim)
        self.cell = nn.LSTMCell(cfg.embed_dim + enc_out, cfg.decoder_dim)
        self.query = nn.Linear(cfg.decoder_dim, cfg.attention_dim)
        self.key = nn.Linear(enc_out, cfg.attention_dim)
        self.out = nn.Sequential(nn.Linear(cfg.decoder_dim + enc_out, cfg.decoder_dim), nn.Tanh(),
                                 nn.Dropout(cfg.dropout), nn.Linear(cfg.decoder_dim, vocab_size + 1))

    def init_state(self, enc: torch.Tensor) -> tuple:
        h = enc.new_zeros(enc.size(0), self.cfg.decoder_dim)
        return h, torch.zeros_like(h), enc.new_zeros(enc.size(0), enc.size(2)), self.key(enc)  # h, c, ctx, keys

    def step(self, enc: torch.Tensor, pad: torch.Tensor, y: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        """One decoder step: previous tokens y (B,) -> next-token logits (B, V+1), new state."""
        h, c, ctx, keys = state
        h, c = self.cell(torch.cat([self.embed(y), ctx], -1), (h, c))
        scores = torch.einsum("ba,bta->bt", self.query(h), keys) / keys.size(-1) ** 0.5
        att = scores.masked_fill(pad, -1e9).softmax(-1)  # (B, T)
        ctx = torch.einsum("bt,btd->bd", att, enc)  # (B, 2H)
        return self.out(torch.cat([h, ctx], -1)), (h, c, ctx, keys)

    def decode_steps(self, enc: torch.Tensor, pad: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder over prefixes ``ys`` (B, L) -> log-probs (B, L, V+1)."""
        state, outs = self.init_state(enc), []
        for t in range(ys.size(1)):
            logits, state = self.step(enc, pad, ys[:, t], state)
            outs.append(logits)
        return torch.stack(outs, 1).log_softmax(-1)

    @torch.no_grad()
    def greedy(self, enc: torch.Tensor, pad: torch.Tensor, max_len: int) -> list[list[int]]:
        """Incremental greedy decoding of a batch."""
        B = enc.size(0)
        y = torch.full((B,), self.sos, dtype=torch.long, device=enc.device)
        done = torch.zeros(B, dtype=torch.bool, device=enc.device)
        state, out = self.init_state(enc), []
        for _ in range(max_len):
            logits, state = self.step(enc, pad, y, state)
            y = torch.where(done, torch.full_like(y, self.eos), logits.argmax(-1))
            out.append(y)
            done |= y == self.eos
            if bool(done.all()):
                break
        return [strip_eos(row, self.eos) for row in torch.stack(out, 1).tolist()]

    def forward(self, feats, lens, targets, target_lens) -> torch.Tensor:
        enc, enc_lens = self.encoder(feats, lens)
        if self.cfg.decoder_type == "ctc":
            return ctc_loss(self.ctc(enc).log_softmax(-1), enc_lens, targets, target_lens)
        pad = torch.arange(enc.size(1), device=enc.device)[None] >= enc_lens[:, None]
        ys_in, ys_out = add_sos_eos(targets, target_lens, self.sos, self.eos)
        return smoothed_ce(self.decode_steps(enc, pad, ys_in), ys_out, self.cfg.label_smoothing, self.cfg.focal_gamma)


def build(cfg: Seq2SeqConfig, vocab_size: int, feat_dim: int) -> Seq2Seq:
    return Seq2Seq(cfg, vocab_size, feat_dim)


def compute_loss(model: nn.Module, batch) -> tuple[torch.Tensor, int]:
    return model(batch.feats, batch.feat_lens, batch.targets, batch.target_lens), len(batch)


@torch.no_grad()
def decode(model: Seq2Seq, batch, tokenizer=None, **overrides) -> list[list[int]]:
    enc, enc_lens = model.encoder(batch.feats, batch.feat_lens)
    if model.cfg.decoder_type == "ctc":
        return greedy_ctc(model.ctc(enc).log_softmax(-1), enc_lens)
    pad = torch.arange(enc.size(1), device=enc.device)[None] >= enc_lens[:, None]
    max_len = max(4, int(enc.size(1) * model.cfg.max_len_ratio))
    beam = int(overrides.get("beam_size", model.cfg.beam_size))
    if beam <= 1:
        return model.greedy(enc, pad, max_len)
    return beam_each(enc, pad, enc_lens, lambda e, p, ys: model.decode_steps(e, p, ys)[:, -1], model.sos, model.eos,
                     max_len, beam)


PRESETS = {
    # seed 001's model names; sizes grow with encoder and decoder width
    "small": dict(decoder_type="attention", encoder_dim=256, encoder_layers=3, decoder_dim=512, embed_dim=128,
                  attention_dim=256, dropout=0.1),
    "medium": dict(decoder_type="attention", encoder_dim=384, encoder_layers=3, decoder_dim=768, embed_dim=256,
                   attention_dim=384, dropout=0.2),
    "large": dict(decoder_type="attention", encoder_dim=512, encoder_layers=4, decoder_dim=1024, embed_dim=256,
                  attention_dim=512, dropout=0.3),
    "ctc_small": dict(decoder_type="ctc", encoder_dim=256, encoder_layers=3, dropout=0.1),
    # CPU-sized for tests
    "tiny": dict(decoder_type="attention", encoder_dim=96, encoder_layers=2, decoder_dim=192, embed_dim=64,
                 attention_dim=96, dropout=0.0),
}

FAMILY = Family(name="seq2seq", config_cls=Seq2SeqConfig, build=build, compute_loss=compute_loss, decode=decode,
                presets=PRESETS, default_metric="val_char_acc", decode_keys=("decoder_type", "beam_size"))
