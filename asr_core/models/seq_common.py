"""Pieces shared by the attention encoder-decoder families (conformer_aed, seq2seq): target
framing with <sos>/<eos>, label-smoothed or focal cross-entropy, greedy decoding, positions."""
from __future__ import annotations

import math
from typing import Callable

import torch

from asr_core.decoding import CTCPrefixScorer, attention_beam_search

IGNORE = -1  # target positions that carry no loss


def add_sos_eos(targets: torch.Tensor, lens: torch.Tensor, sos: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) padded targets -> decoder input ``[sos] + y`` (padded with eos) and output ``y + [eos]``
    (padded with IGNORE), both (B, S + 1). Every sequence ends with its own <eos>: a model that
    never learns where to stop is what gave seed 001 its 0% sequence accuracy."""
    B, S = targets.shape
    pos = torch.arange(S + 1, device=targets.device)[None]  # (1, S+1)
    ys_in = torch.full((B, S + 1), eos, dtype=targets.dtype, device=targets.device)
    ys_in[:, 0] = sos
    ys_in[:, 1:] = torch.where(pos[:, 1:] <= lens[:, None], targets, ys_in[:, 1:])
    ys_out = torch.full((B, S + 1), IGNORE, dtype=targets.dtype, device=targets.device)
    ys_out[:, :S] = torch.where(pos[:, :S] < lens[:, None], targets, ys_out[:, :S])
    ys_out[torch.arange(B), lens] = eos
    return ys_in, ys_out


def smoothed_ce(logp: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0,
                focal_gamma: float = 0.0) -> torch.Tensor:
    """Summed cross-entropy of (B, L, V) log-probabilities against (B, L) targets (IGNORE skipped),
    with label smoothing and, when ``focal_gamma`` > 0, the focal factor (1 - p_t) ** gamma."""
    mask = target != IGNORE
    t = target.clamp(min=0)
    nll = -logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)  # (B, L)
    loss = (1 - smoothing) * nll - smoothing * logp.mean(-1) if smoothing > 0 else nll
    if focal_gamma > 0:
        loss = loss * (1 - torch.exp(-nll)).pow(focal_gamma)
    return (loss * mask).sum()


@torch.no_grad()
def batched_greedy(step: Callable[[torch.Tensor], torch.Tensor], sos: int, eos: int, batch: int,
                   max_len: int, device=None) -> list[list[int]]:
    """Greedy decoding of a whole batch: ``step(ys (B, L)) -> (B, V)`` next-token log-probs."""
    ys = torch.full((batch, 1), sos, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(max_len):
        nxt = step(ys).argmax(-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        ys = torch.cat([ys, nxt[:, None]], 1)
        done |= nxt == eos
        if bool(done.all()):
            break
    return [row[1:].tolist() for row in ys]


def beam_each(memory: torch.Tensor, pad: torch.Tensor, lens: torch.Tensor,
              step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], sos: int, eos: int,
              max_len: int, beam: int, scorer: Callable[[int], CTCPrefixScorer | None] | None = None,
              ctc_weight: float = 0.0) -> list[list[int]]:
    """Attention beam search, one utterance at a time, over a batch's encoder output
    ``memory`` (B, T, D) with padding mask ``pad`` (B, T). ``step(memory (N, T, D), pad (N, T),
    prefixes (N, L)) -> (N, V)`` next-token log-probs; ``scorer(b)`` gives utterance b's CTC
    prefix scorer for joint decoding, or None."""
    out = []
    for b in range(memory.size(0)):
        m, p = memory[b: b + 1, : lens[b]], pad[b: b + 1, : lens[b]]
        ctc = scorer(b) if scorer is not None else None

        def fn(prefixes: torch.Tensor, m=m, p=p) -> torch.Tensor:
            n = prefixes.size(0)
            return step(m.expand(n, -1, -1), p.expand(n, -1), prefixes)

        out.append(attention_beam_search(fn, sos, eos, max_len, beam=beam, ctc=ctc,
                                         ctc_weight=ctc_weight if ctc is not None else 0.0))
    return out


def strip_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


def sinusoid(length: int, dim: int, device=None) -> torch.Tensor:
    """(L, D) sinusoidal positions (Vaswani et al.)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe
