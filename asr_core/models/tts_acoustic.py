"""A small text-to-mel acoustic model (seed 003): text encoder, variational reference encoder,
attention decoder predicting mel frames and a stop token.

Loss = ``mel_loss_weight`` * mel (L1, or Huber with ``huber_delta``) + ``kl_loss_weight`` * KL
of the reference encoder + ``stop_loss_weight`` * stop BCE (labels smoothed by
``stop_label_smoothing``) + ``attention_loss_weight`` * guided attention (Tachibana et al. 2018).
Metrics: ``val_mel_loss``, ``val_stop_acc`` and ``val_att_diag`` (attention mass near the
diagonal); the loop adds ``steps_to_target`` when a run sets ``target_metric``. Its data are the
ASR manifests read the other way round: the transcript's tokens in, the cached log-mels out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from asr_core.metrics import TTS_METRICS
from asr_core.models import Family
from asr_core.models.rnn import BiLSTM
from asr_core.errors import KeyProblem


@dataclass
class TTSConfig:
    embed_dim: int = 128
    encoder_dim: int = 128  # per direction
    ref_dim: int = 64  # reference encoder GRU
    latent_dim: int = 16  # variational latent
    prenet_dim: int = 128
    decoder_dim: int = 256
    attention_dim: int = 128
    attention: Literal["location", "dot"] = "location"  # Tacotron 2's location-sensitive or plain dot product
    location_filters: int = 16
    location_kernel: int = 15
    reduction: int = 4  # mel frames predicted per decoder step
    postnet_dim: int = 256  # Tacotron 2's residual conv postnet refining the whole mel; 0 = none
    postnet_layers: int = 3
    dropout: float = 0.1
    prenet_dropout: float = 0.5  # Tacotron keeps it on at inference too; here only in training
    mel_loss: Literal["l1", "huber"] = "l1"
    huber_delta: float = 1.0
    mel_loss_weight: float = 1.0
    kl_loss_weight: float = 0.01
    stop_loss_weight: float = 1.0
    attention_loss_weight: float = 1.0
    stop_label_smoothing: float = 0.0
    stop_pos_weight: float = 5.0  # the one stop frame per utterance is outnumbered ~100:1
    guided_sigma: float = 0.2

    def validate(self) -> None:
        if self.reduction < 1:
            raise KeyProblem("reduction", "key 'reduction' must be >= 1")
        for k in ("mel_loss_weight", "kl_loss_weight", "stop_loss_weight", "attention_loss_weight", "huber_delta"):
            if getattr(self, k) < 0:
                raise KeyProblem(k, f"key '{k}' must be >= 0")
        if not 0 <= self.stop_label_smoothing < 0.5:
            raise KeyProblem("stop_label_smoothing", "key 'stop_label_smoothing' must be in [0, 0.5)")


class TTSAcoustic(nn.Module):
    def __init__(self, cfg: TTSConfig, vocab_size: int, n_mels: int):
        super().__init__()
        self.cfg, self.n_mels = cfg, n_mels
        e = cfg.encoder_dim * 2
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=0)
        self.convs = nn.Sequential(
            nn.Conv1d(cfg.embed_dim, cfg.embed_dim, 5, padding=2), nn.BatchNorm1d(cfg.embed_dim), nn.ReLU(),
            nn.Conv1d(cfg.embed_dim, cfg.embed_dim, 5, padding=2), nn.BatchNorm1d(cfg.embed_dim), nn.ReLU())
        self.enc = BiLSTM(cfg.embed_dim, cfg.encoder_dim)
        self.ref_conv = nn.Sequential(nn.Conv1d(n_mels, cfg.ref_dim, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv1d(cfg.ref_dim, cfg.ref_dim, 3, stride=2, padding=1), nn.ReLU())
        self.ref_gru = nn.GRU(cfg.ref_dim, cfg.ref_dim, batch_first=True)
        self.to_latent = nn.Linear(cfg.ref_dim, 2 * cfg.latent_dim)
        self.from_latent = nn.Linear(cfg.latent_dim, e)
        r = cfg.reduction
        self.prenet = nn.Sequential(nn.Linear(n_mels, cfg.prenet_dim), nn.ReLU(), nn.Dropout(cfg.prenet_dropout),
                                    nn.Linear(cfg.prenet_dim, cfg.prenet_dim), nn.ReLU(), nn.Dropout(cfg.prenet_dropout))
        self.cell = nn.LSTMCell(cfg.prenet_dim + e, cfg.decoder_dim)
        self.query = nn.Linear(cfg.decoder_dim, cfg.attention_dim)
        self.key = nn.Linear(e, cfg.attention_dim)
        if cfg.attention == "location":  # Shen et al. 2018: energies also see the attention so far
            self.loc_conv = nn.Conv1d(2, cfg.location_filters, cfg.location_kernel,
                                      padding=cfg.location_kernel // 2, bias=False)
            self.loc_proj = nn.Linear(cfg.location_filters, cfg.attention_dim, bias=False)
            self.energy = nn.Linear(cfg.attention_dim, 1, bias=False)
        self.mel_out = nn.Linear(cfg.decoder_dim + e, r * n_mels)
        self.stop_out = nn.Linear(cfg.decoder_dim + e, r)
        layers: list[nn.Module] = []
        for i in range(cfg.postnet_layers if cfg.postnet_dim else 0):
            last = i == cfg.postnet_layers - 1
            layers += [nn.Conv1d(n_mels if i == 0 else cfg.postnet_dim, n_mels if last else cfg.postnet_dim, 5,
                                 padding=2)]
            if not last:
                layers += [nn.BatchNorm1d(cfg.postnet_dim), nn.Tanh(), nn.Dropout(cfg.dropout)]
        self.postnet = nn.Sequential(*layers)

    def forward(self, tokens, token_lens, mels, mel_lens) -> dict[str, torch.Tensor]:
        """Teacher-forced pass. tokens (B, N), mels (B, T, M) -> predictions and attention."""
        cfg, r = self.cfg, self.cfg.reduction
        B, T, M = mels.shape
        x = self.convs(self.embed(tokens).transpose(1, 2)).transpose(1, 2)  # (B, N, E)
        enc = self.enc(x, token_lens)  # (B, N, 2H)
        tpad = torch.arange(tokens.size(1), device=tokens.device)[None] >= token_lens[:, None]  # (B, N)
        # reference encoder: q(z | mel) -> z (sampled while training, the mean otherwise)
        ref, _ = self.ref_gru(self.ref_conv(mels.transpose(1, 2)).transpose(1, 2))
        idx = ((mel_lens + 3) // 4 - 1).clamp(min=0, max=ref.size(1) - 1)
        mu, logvar = self.to_latent(ref[torch.arange(B), idx]).chunk(2, -1)  # (B, Z) each
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        enc = enc + self.from_latent(z)[:, None]
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)  # (B,)

        steps = (T + r - 1) // r
        # decoder input at step s: the last frame of step s-1 (zeros at s = 0)
        frames = F.pad(mels, (0, 0, 0, steps * r - T))  # (B, steps*r, M)
        prev = torch.cat([mels.new_zeros(B, 1, M), frames[:, r - 1:-1:r]], 1)[:, :steps]  # (B, steps, M)
        pre = self.prenet(prev)
        keys = self.key(enc)
        h = enc.new_zeros(B, cfg.decoder_dim)
        c = torch.zeros_like(h)
        ctx = enc.new_zeros(B, enc.size(2))
        att = enc.new_zeros(B, enc.size(1))
        cum = torch.zeros_like(att)
        mel_steps, stop_steps, atts = [], [], []
        for s in range(steps):
            h, c = self.cell(torch.cat([pre[:, s], ctx], -1), (h, c))
            if cfg.attention == "location":
                loc = self.loc_proj(self.loc_conv(torch.stack([att, cum], 1)).transpose(1, 2))  # (B, N, A)
                scores = self.energy(torch.tanh(self.query(h)[:, None] + keys + loc)).squeeze(-1)  # (B, N)
            else:
                scores = torch.einsum("ba,bna->bn", self.query(h), keys) / keys.size(-1) ** 0.5
            att = scores.masked_fill(tpad, -1e9).softmax(-1)  # (B, N)
            cum = cum + att
            ctx = torch.einsum("bn,bne->be", att, enc)
            hc = torch.cat([h, ctx], -1)
            mel_steps.append(self.mel_out(hc).view(B, r, M))
            stop_steps.append(self.stop_out(hc))
            atts.append(att)
        coarse = torch.cat(mel_steps, 1)[:, :T]  # (B, T, M)
        mel = coarse + self.postnet(coarse.transpose(1, 2)).transpose(1, 2) if len(self.postnet) else coarse
        stop = torch.cat(stop_steps, 1)[:, :T]  # (B, T) logits
        return {"mel": mel, "coarse": coarse, "stop": stop, "att": torch.stack(atts, 1), "kl": kl}  # att (B, S, N)


def _losses(model: nn.Module, cfg: TTSConfig, batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``model`` is the module or its DDP wrapper (the forward must go through DDP)."""
    mels, lens = batch.feats, batch.feat_lens
    out = model(batch.targets, batch.target_lens, mels, lens)
    B, T, M = mels.shape
    fmask = (torch.arange(T, device=mels.device)[None] < lens[:, None]).float()  # (B, T)

    def mel_err(pred: torch.Tensor) -> torch.Tensor:  # (B,) per-utterance mean over real frames
        if cfg.mel_loss == "huber":
            err = F.huber_loss(pred, mels, reduction="none", delta=cfg.huber_delta)
        else:
            err = (pred - mels).abs()
        return (err.mean(-1) * fmask).sum(1) / lens

    mel = mel_err(out["mel"])  # the metric: the refined (postnet) output
    # Tacotron 2 trains the decoder output before the postnet too, so the decoder itself learns mels
    mel_train = mel + mel_err(out["coarse"]) if len(getattr(model, "module", model).postnet) else mel
    stop_t = (torch.arange(T, device=mels.device)[None] >= (lens - 1)[:, None]).float()
    eps = cfg.stop_label_smoothing
    stop = (F.binary_cross_entropy_with_logits(out["stop"], stop_t * (1 - eps) + (1 - stop_t) * eps,
                                               pos_weight=out["stop"].new_tensor(cfg.stop_pos_weight),
                                               reduction="none") * fmask).sum(1) / lens
    # guided attention: penalise mass far from the diagonal n/N ~ s/S
    att = out["att"]  # (B, S, N)
    S, N = att.shape[1], att.shape[2]
    steps_b = ((lens + cfg.reduction - 1) // cfg.reduction).float()
    s = torch.arange(S, device=att.device)[None, :, None] / steps_b[:, None, None]
    n = torch.arange(N, device=att.device)[None, None, :] / batch.target_lens.float()[:, None, None]
    w = 1 - torch.exp(-((n - s) ** 2) / (2 * cfg.guided_sigma ** 2))
    smask = (torch.arange(S, device=att.device)[None] < steps_b[:, None]).float()  # (B, S)
    guided = (att * w).sum(-1).mul(smask).sum(1) / steps_b
    near = ((n - s).abs() < cfg.guided_sigma).float()
    diag = (att * near).sum(-1).mul(smask).sum(1) / steps_b  # (B,) share of attention near the diagonal
    parts = {"mel": mel, "mel_train": mel_train, "kl": out["kl"], "stop": stop, "guided": guided}
    stop_correct = (((out["stop"] > 0).float() == stop_t).float() * fmask).sum()
    return parts, torch.stack([stop_correct, fmask.sum(), diag.sum()])


def compute_loss(model: nn.Module, batch) -> tuple[torch.Tensor, int]:
    cfg = getattr(model, "module", model).cfg
    parts, _ = _losses(model, cfg, batch)
    total = (cfg.mel_loss_weight * parts["mel_train"] + cfg.kl_loss_weight * parts["kl"]
             + cfg.stop_loss_weight * parts["stop"] + cfg.attention_loss_weight * parts["guided"])
    return total.sum(), len(batch)


@torch.no_grad()
def validation_counts(model: TTSAcoustic, batch, tokenizer, with_lang_tag: bool) -> dict[str, float]:
    parts, extra = _losses(model, model.cfg, batch)
    return {"mel_sum": float(parts["mel"].sum()), "kl_sum": float(parts["kl"].sum()),
            "stop_correct": float(extra[0]), "frames": float(extra[1]), "diag_sum": float(extra[2]),
            "utts": float(len(batch))}


def summarize(c: dict[str, float]) -> dict[str, float]:
    n = c.get("utts", 0.0)
    nan = float("nan")
    return {"val_mel_loss": c["mel_sum"] / n if n else nan, "val_kl": c["kl_sum"] / n if n else nan,
            "val_stop_acc": c["stop_correct"] / c["frames"] if c.get("frames") else nan,
            "val_att_diag": c["diag_sum"] / n if n else nan}


def build(cfg: TTSConfig, vocab_size: int, feat_dim: int) -> TTSAcoustic:
    return TTSAcoustic(cfg, vocab_size, feat_dim)


PRESETS = {
    # seed 003's loss weights, Huber delta, stop label smoothing, clipping and accumulation
    "seed003_fast": dict(mel_loss_weight=22.0, kl_loss_weight=1.8, stop_loss_weight=1.5, attention_loss_weight=0.3,
                         mel_loss="huber", huber_delta=0.6, stop_label_smoothing=0.06, lr=8e-5,
                         schedule="cosine_restarts", warmup_steps=1500, min_lr=1e-7, grad_clip=0.8, accum_grad=2,
                         batch_size=48, amp=True, early_stop_patience=40, early_stop_min_delta=0.00005),
    # CPU-sized for tests and demos
    "tiny": dict(embed_dim=64, encoder_dim=64, ref_dim=32, latent_dim=8, prenet_dim=64, decoder_dim=128,
                 attention_dim=64, reduction=4, postnet_dim=128, dropout=0.0, prenet_dropout=0.1),
}

FAMILY = Family(name="tts_acoustic", config_cls=TTSConfig, build=build, compute_loss=compute_loss, decode=None,
                presets=PRESETS, default_metric="val_mel_loss", validation_metrics=TTS_METRICS,
                validation_counts=validation_counts, summarize=summarize)
