"""Conformer (or Transformer) encoder + Transformer decoder ASR with an optional CTC head (seed 000).

Parameter names are the seed's (ESPnet's): ``hidden_dim``, ``attention_heads``, ``linear_units``,
``eblocks``, ``edropout``, ``econformer_kernel_size`` (0 = plain Transformer encoder),
``eposition_embedding_type`` (absolute | relative), ``dblocks``, ``ddropout``, ``ctc_weight``
(0 = attention only), ``label_smoothing``. SpecAugment (``specaug``, on by default for this family)
masks frequency and time of the training batches (``asr_core.data.augment``).
Decoding: greedy, attention beam search (``beam_size``), joint CTC/attention (``decode_ctc_weight``).
Bilingual runs put the language tag first in the target, so the decoder predicts it first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from asr_core.decoding import CTCPrefixScorer, attention_beam_search, ctc_loss, greedy_ctc
from asr_core.models import Family
from asr_core.models.seq_common import add_sos_eos, batched_greedy, beam_each, sinusoid, smoothed_ce, strip_eos
from asr_core.errors import KeyProblem


@dataclass
class ConformerAEDConfig:
    hidden_dim: int = 256
    attention_heads: int = 4
    linear_units: int = 2048
    eblocks: int = 12
    edropout: float = 0.1
    econformer_kernel_size: int = 31  # 0 = Transformer encoder blocks
    eposition_embedding_type: Literal["absolute", "relative"] = "relative"
    dblocks: int = 6
    ddropout: float = 0.1
    ctc_weight: float = 0.3  # 0 = attention only (no CTC head is built)
    label_smoothing: float = 0.1
    rel_clip: int = 64  # relative positions beyond +-rel_clip share one bias
    # greedy / beam: the attention decoder (beam optionally joint with CTC, decode_ctc_weight);
    # ctc: the CTC head alone, greedy (ESPnet's decoding with ctc_weight 1.0, without the prefix search)
    decode_mode: Literal["greedy", "beam", "ctc"] = "greedy"
    beam_size: int = 4
    decode_ctc_weight: float = 0.0  # joint CTC/attention scoring in beam search
    # longest hypothesis, in tokens per encoder frame: fast demo speech reaches 26 characters/s
    # against 25 encoder frames/s after 4x subsampling, and a cap at 1.0 cut their last letters
    max_len_ratio: float = 2.0

    def validate(self) -> None:
        if self.hidden_dim % self.attention_heads:
            raise KeyProblem("attention_heads", f"key 'attention_heads' ({self.attention_heads}) must divide "
                             f"'hidden_dim' ({self.hidden_dim})")
        if self.econformer_kernel_size and self.econformer_kernel_size % 2 == 0:
            raise KeyProblem("econformer_kernel_size", "key 'econformer_kernel_size' must be odd or 0")
        if not 0.0 <= self.ctc_weight <= 1.0 or not 0.0 <= self.decode_ctc_weight <= 1.0:
            raise KeyProblem("ctc_weight", "keys 'ctc_weight' and 'decode_ctc_weight' must be in [0, 1]")
        if self.decode_ctc_weight > 0 and self.ctc_weight == 0:
            raise KeyProblem("decode_ctc_weight", "key 'decode_ctc_weight' needs a CTC head (ctc_weight > 0)")
        if self.ctc_weight == 1.0:
            raise KeyProblem("ctc_weight", "key 'ctc_weight' = 1 leaves the decoder untrained; use a CTC family")
        if self.decode_mode == "ctc" and self.ctc_weight == 0:
            raise KeyProblem("decode_mode", "key 'decode_mode': ctc needs a CTC head (ctc_weight > 0)")


class Subsampling(nn.Module):
    """Conv2d subsampling by 4 in time (ESPnet's Conv2dSubsampling). (B, T, F) -> (B, T/4, D)."""

    def __init__(self, feat_dim: int, d: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, d, 3, 2), nn.ReLU(), nn.Conv2d(d, d, 3, 2), nn.ReLU())
        self.out = nn.Linear(d * (((feat_dim - 1) // 2 - 1) // 2), d)

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(x.unsqueeze(1))  # (B, D, T', F')
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f)), ((lens - 1) // 2 - 1) // 2


class SelfAttention(nn.Module):
    """Multi-head self-attention with an optional learned relative-position bias per head.

    Why not torchaudio's ConformerLayer: it wraps nn.MultiheadAttention and takes no attention
    bias, so relative positions (``eposition_embedding_type: relative``) cannot be added to it.
    The bias is Shaw et al.'s clipped relative positions in T5's scalar-bias form.
    """

    def __init__(self, d: int, heads: int, dropout: float, relative: bool, clip: int):
        super().__init__()
        self.h, self.dk, self.p = heads, d // heads, dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.clip = clip
        self.rel = nn.Embedding(2 * clip + 1, heads) if relative else None

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.h, self.dk).permute(2, 0, 3, 1, 4)  # (B, H, T, dk) each
        bias = torch.zeros(B, 1, 1, T, dtype=x.dtype, device=x.device).masked_fill(pad[:, None, None, :], -1e9)
        if self.rel is not None:
            pos = torch.arange(T, device=x.device)
            rel = (pos[None, :] - pos[:, None]).clamp(-self.clip, self.clip) + self.clip  # (T, T)
            bias = bias + self.rel(rel).permute(2, 0, 1).unsqueeze(0).to(x.dtype)  # (B, H, T, T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.p if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class ConvModule(nn.Module):
    """Conformer convolution module: pointwise + GLU, depthwise, BatchNorm, Swish, pointwise."""

    def __init__(self, d: int, kernel: int, dropout: float):
        super().__init__()
        self.pw1 = nn.Conv1d(d, 2 * d, 1)
        self.dw = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.bn = nn.BatchNorm1d(d)
        self.pw2 = nn.Conv1d(d, d, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        y = x.masked_fill(pad[..., None], 0.0).transpose(1, 2)  # (B, D, T)
        y = F.glu(self.pw1(y), dim=1)
        y = self.pw2(F.silu(self.bn(self.dw(y))))
        return self.drop(y.transpose(1, 2))


def _ffn(d: int, units: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, units), nn.SiLU(), nn.Dropout(dropout),
                         nn.Linear(units, d), nn.Dropout(dropout))


class EncoderBlock(nn.Module):
    """Conformer block (macaron FFNs, attention, convolution) or, with kernel 0, a Transformer block."""

    def __init__(self, cfg: ConformerAEDConfig):
        super().__init__()
        d, p = cfg.hidden_dim, cfg.edropout
        self.conformer = cfg.econformer_kernel_size > 0
        self.ff1 = _ffn(d, cfg.linear_units, p) if self.conformer else None
        self.norm_att = nn.LayerNorm(d)
        self.att = SelfAttention(d, cfg.attention_heads, p, cfg.eposition_embedding_type == "relative", cfg.rel_clip)
        self.drop = nn.Dropout(p)
        if self.conformer:
            self.norm_conv = nn.LayerNorm(d)
            self.conv = ConvModule(d, cfg.econformer_kernel_size, p)
        self.ff2 = _ffn(d, cfg.linear_units, p)
        self.norm_out = nn.LayerNorm(d) if self.conformer else nn.Identity()

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        half = 0.5 if self.conformer else 1.0
        if self.ff1 is not None:
            x = x + 0.5 * self.ff1(x)
        x = x + self.drop(self.att(self.norm_att(x), pad))
        if self.conformer:
            x = x + self.conv(self.norm_conv(x), pad)
        x = x + half * self.ff2(x)
        return self.norm_out(x)


class ConformerAED(nn.Module):
    def __init__(self, cfg: ConformerAEDConfig, vocab_size: int, feat_dim: int):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        self.vocab = vocab_size
        self.sos = self.eos = vocab_size  # one extra output: <sos/eos> (ESPnet convention)
        self.subsample = Subsampling(feat_dim, d)
        self.enc = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.eblocks))
        self.enc_norm = nn.LayerNorm(d)
        self.embed = nn.Embedding(vocab_size + 1, d)
        layer = nn.TransformerDecoderLayer(d, cfg.attention_heads, cfg.linear_units, cfg.ddropout,
                                           batch_first=True, norm_first=True)
        self.dec = nn.TransformerDecoder(layer, cfg.dblocks, norm=nn.LayerNorm(d))
        self.dec_out = nn.Linear(d, vocab_size + 1)
        self.ctc = nn.Linear(d, vocab_size) if cfg.ctc_weight > 0 else None

    def encode(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lens = self.subsample(feats, lens)  # (B, T', D)
        lens = lens.clamp(min=1, max=x.size(1))
        if self.cfg.eposition_embedding_type == "absolute":
            x = x * math.sqrt(x.size(-1)) + sinusoid(x.size(1), x.size(2), x.device).to(x.dtype)
        pad = torch.arange(x.size(1), device=x.device)[None] >= lens[:, None]  # (B, T') True = padding
        for block in self.enc:
            x = block(x, pad)
        return self.enc_norm(x), pad

    def decode_step(self, memory: torch.Tensor, mem_pad: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Next-token log-probabilities for prefixes ``ys`` (N, L) -> (N, L, V+1)."""
        L = ys.size(1)
        y = self.embed(ys) + sinusoid(L, self.cfg.hidden_dim, ys.device)  # (N, L, D)
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=ys.device), 1)
        # ys_in is padded with <eos> after each sequence; the causal mask keeps real positions
        # from seeing it, and padded positions are ignored by the loss
        h = self.dec(y, memory, tgt_mask=causal, memory_key_padding_mask=mem_pad)
        return self.dec_out(h).log_softmax(-1)

    def forward(self, feats, lens, targets, target_lens) -> torch.Tensor:
        """Summed loss of the batch: (1 - ctc_weight) * label-smoothed CE + ctc_weight * CTC."""
        memory, pad = self.encode(feats, lens)
        ys_in, ys_out = add_sos_eos(targets, target_lens, self.sos, self.eos)
        logp = self.decode_step(memory, pad, ys_in)  # (B, S+1, V+1)
        att = smoothed_ce(logp, ys_out, self.cfg.label_smoothing)
        if self.ctc is None:
            return att
        enc_lens = (~pad).sum(1)
        ctc_lp = self.ctc(memory).log_softmax(-1)  # (B, T', V)
        ctc = ctc_loss(ctc_lp, enc_lens, targets, target_lens)
        w = self.cfg.ctc_weight
        return (1 - w) * att + w * ctc


def build(cfg: ConformerAEDConfig, vocab_size: int, feat_dim: int) -> ConformerAED:
    return ConformerAED(cfg, vocab_size, feat_dim)


def compute_loss(model: nn.Module, batch) -> tuple[torch.Tensor, int]:
    return model(batch.feats, batch.feat_lens, batch.targets, batch.target_lens), len(batch)


@torch.no_grad()
def decode(model: ConformerAED, batch, tokenizer=None, **overrides) -> list[list[int]]:
    cfg = model.cfg
    mode = overrides.get("decode_mode", "beam" if "beam_size" in overrides else cfg.decode_mode)
    beam = int(overrides.get("beam_size", cfg.beam_size))
    ctc_w = float(overrides.get("decode_ctc_weight", cfg.decode_ctc_weight))
    memory, pad = model.encode(batch.feats, batch.feat_lens)
    enc_lens = (~pad).sum(1)
    max_len = max(4, int(memory.size(1) * cfg.max_len_ratio))
    if mode == "ctc":
        if model.ctc is None:
            raise ValueError("decode_mode ctc needs a CTC head (ctc_weight > 0)")
        return greedy_ctc(model.ctc(memory).log_softmax(-1), enc_lens)
    if mode == "greedy":
        return [strip_eos(h, model.eos) for h in batched_greedy(
            lambda ys: model.decode_step(memory, pad, ys)[:, -1], model.sos, model.eos, memory.size(0), max_len)]
    ctc_lp = model.ctc(memory).log_softmax(-1) if (model.ctc is not None and ctc_w > 0) else None
    return beam_each(memory, pad, enc_lens, lambda m, p, ys: model.decode_step(m, p, ys)[:, -1], model.sos,
                     model.eos, max_len, beam,
                     scorer=(lambda b: CTCPrefixScorer(ctc_lp[b, : enc_lens[b]], blank=0, eos=model.eos))
                     if ctc_lp is not None else None, ctc_weight=ctc_w)


@torch.no_grad()
def acoustic(model: ConformerAED, batch) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The acoustic pass: each utterance's encoder states (T', D) and CTC log-probs (T', V)."""
    memory, pad = model.encode(batch.feats, batch.feat_lens)  # (B, T', D), (B, T')
    lens = (~pad).sum(1)
    ctc_lp = model.ctc(memory).log_softmax(-1) if model.ctc is not None else None  # (B, T', V)
    return [(memory[b, : lens[b]].clone(), ctc_lp[b, : lens[b]].clone() if ctc_lp is not None else None)
            for b in range(memory.size(0))]


@torch.no_grad()
def decode_cached(model: ConformerAED, outputs: list, tokenizer=None, beam_size: int = 4,
                  decode_ctc_weight: float = 0.3, length_bonus: float = 0.0) -> list[list[int]]:
    """Joint attention/CTC beam search over cached encoder states: only the decoder runs."""
    out = []
    for memory, ctc_lp in outputs:
        m = memory[None]  # (1, T', D)
        p = torch.zeros(1, m.size(1), dtype=torch.bool)
        scorer = CTCPrefixScorer(ctc_lp, blank=0, eos=model.eos) if ctc_lp is not None and decode_ctc_weight > 0 \
            else None
        step = (lambda ys, m=m, p=p: model.decode_step(m.expand(ys.size(0), -1, -1), p.expand(ys.size(0), -1),
                                                          ys)[:, -1])
        out.append(attention_beam_search(step, model.sos, model.eos, max(4, int(m.size(1) * model.cfg.max_len_ratio)),
                                         beam=int(beam_size), ctc=scorer,
                                         ctc_weight=decode_ctc_weight if scorer is not None else 0.0,
                                         length_bonus=length_bonus))
    return out


DECODE_SPACE = {"beam_size": {"grid": [2, 6]}, "decode_ctc_weight": {"grid": [0.0, 0.3, 0.5]},
                "length_bonus": {"grid": [0.0, 0.5]}}


SEED000_MONO = dict(hidden_dim=256, attention_heads=4, linear_units=2048, eblocks=12, edropout=0.1,
                    econformer_kernel_size=31, eposition_embedding_type="relative", dblocks=6, ddropout=0.1,
                    batch_bins=5000000, accum_grad=2, nepochs=60, lr=2e-3, warmup_steps=10000,
                    label_smoothing=0.1)
SEED000_BILI = dict(hidden_dim=512, attention_heads=8, linear_units=2048, eblocks=16, edropout=0.15,
                    econformer_kernel_size=31, eposition_embedding_type="relative", dblocks=6, ddropout=0.15,
                    batch_bins=3000000, accum_grad=4, nepochs=80, lr=1.5e-3, warmup_steps=20000,
                    label_smoothing=0.1)

PRESETS = {
    # seed 000's two tables, value for value (model and training keys alike)
    "mono_optimized": SEED000_MONO,
    "bili_optimized": SEED000_BILI,
    # CPU-sized: the same architecture, small enough to train here in minutes
    "cpu_small": dict(hidden_dim=144, attention_heads=4, linear_units=576, eblocks=4, edropout=0.1,
                      econformer_kernel_size=15, eposition_embedding_type="relative", dblocks=2, ddropout=0.1,
                      batch_bins=300000, accum_grad=1, nepochs=20, lr=2e-3, warmup_steps=300,
                      label_smoothing=0.1),
    # found by tune_jobs/jobs/conformer_bilingual_search.yaml on the 2-core CPU (README): small batches
    # (more steps an epoch), a higher peak rate, CTC weight 0.3, no SpecAugment on this budget;
    # decoded by its CTC head, which leads the attention decoder by tens of points for the first
    # dozen CPU epochs (`make demo-bilingual`)
    "cpu_bilingual": dict(hidden_dim=144, attention_heads=4, linear_units=576, eblocks=4, edropout=0.1,
                          econformer_kernel_size=15, eposition_embedding_type="relative", dblocks=2, ddropout=0.1,
                          ctc_weight=0.3, batch_bins=40000, accum_grad=1, lr=2.43e-3, warmup_steps=600,
                          label_smoothing=0.1, specaug=False, decode_mode="ctc"),
    "tiny": dict(hidden_dim=96, attention_heads=4, linear_units=384, eblocks=2, edropout=0.0,
                 econformer_kernel_size=15, eposition_embedding_type="relative", dblocks=1, ddropout=0.0,
                 label_smoothing=0.0, specaug=False),
}

FAMILY = Family(name="conformer_aed", config_cls=ConformerAEDConfig, build=build, compute_loss=compute_loss,
                decode=decode, presets=PRESETS, default_metric="val_wer",
                decode_keys=("decode_mode", "beam_size", "decode_ctc_weight"),
                acoustic=acoustic, decode_cached=decode_cached, decode_space=DECODE_SPACE,
                # joint CTC/attention beam search (a checkpoint without a CTC head keeps its own decoding)
                test_decodings=({"decode_mode": "beam", "beam_size": 4, "decode_ctc_weight": 0.3},),
                train_defaults={"schedule": "noam", "specaug": True})  # ESPnet's WarmupLR goes with warmup_steps
