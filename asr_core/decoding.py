"""Decoders shared by the families: greedy and prefix beam search for CTC, torchaudio's
flashlight beam search (lexicon, KenLM), and attention beam search with joint CTC scoring.

Why our own CTC code next to torchaudio's ``ctc_decoder``: joint CTC/attention decoding (seed
000) needs CTC *prefix* scores of arbitrary candidate tokens (ESPnet's ``CTCPrefixScore``,
Watanabe et al. 2017), which flashlight does not expose; and a plain prefix beam search lets a
test check flashlight's output against an independent implementation.
"""
from __future__ import annotations

import math
import os
import tempfile
from typing import Callable, Sequence

import torch

NEG_INF = -1e30


def greedy_ctc(log_probs: torch.Tensor, lens: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks. (B, T, V) -> token ids."""
    best = log_probs.argmax(-1)  # (B, T)
    out = []
    for b in range(best.size(0)):
        seq = torch.unique_consecutive(best[b, : int(lens[b])])
        out.append([int(t) for t in seq if t != blank])
    return out


class CTCPrefixScorer:
    """log P(prefix as the beginning of the labelling | x) under CTC, for one utterance.

    ``x``: (T, V) log-probabilities. ``init()`` gives the state of the empty prefix; ``score(last,
    state, cands)`` gives, for each candidate token, the prefix score of ``prefix + [c]`` and the
    new forward variables; ``eos`` scores the complete labelling.
    """

    def __init__(self, x: torch.Tensor, blank: int = 0, eos: int | None = None):
        self.x = x.float()
        self.T = x.size(0)
        self.blank, self.eos = blank, eos

    def init(self) -> torch.Tensor:
        r = torch.full((self.T, 2), NEG_INF)  # [:, 0] ends in a label, [:, 1] ends in blank
        r[:, 1] = torch.cumsum(self.x[:, self.blank], 0)
        return r

    def score(self, last: int | None, r_prev: torch.Tensor, cands: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (prefix scores (K,), forward variables (K, T, 2))."""
        K, T = cands.numel(), self.T
        xc = self.x[:, cands.clamp(max=self.x.size(1) - 1)]  # (T, K)
        r = torch.full((T, 2, K), NEG_INF)
        total = torch.logaddexp(r_prev[:, 0], r_prev[:, 1])  # (T,)
        phi = total.unsqueeze(1).expand(T, K).clone()  # (T, K)
        if last is not None:
            same = cands == last
            phi[:, same] = r_prev[:, 1].unsqueeze(1)  # a repeat needs a blank in between
        if last is None:  # empty prefix: the first label may start at t = 0
            r[0, 0] = xc[0]
        psi = r[0, 0].clone()
        xb = self.x[:, self.blank]
        for t in range(1, T):
            r[t, 0] = torch.logaddexp(r[t - 1, 0], phi[t - 1]) + xc[t]
            r[t, 1] = torch.logaddexp(r[t - 1, 0], r[t - 1, 1]) + xb[t]
            psi = torch.logaddexp(psi, phi[t - 1] + xc[t])
        if self.eos is not None:
            is_eos = cands == self.eos
            psi[is_eos] = total[-1]
        return psi, r.permute(2, 0, 1)


def ctc_prefix_beam_search(log_probs: torch.Tensor, beam: int = 8, blank: int = 0,
                           token_beam: int = 12, threshold: float = 12.0) -> list[int]:
    """Frame-synchronous CTC prefix beam search (Hannun et al. 2014) over one utterance's (T, V)
    log-probabilities, lexicon-free and without a language model: the search flashlight runs."""
    lp = log_probs.float().cpu()
    # per-frame pruning: at most token_beam tokens, none more than `threshold` below the frame's best
    vals, idx = torch.topk(lp, min(token_beam, lp.size(1)), dim=1)
    keep = vals >= vals[:, :1] - threshold
    top_tokens = [i[k].tolist() for i, k in zip(idx, keep)]
    rows = lp.tolist()
    def add(a: float, b: float) -> float:
        if a < b:
            a, b = b, a
        return a if b == -math.inf else a + math.log1p(math.exp(b - a))

    ninf = -math.inf
    beams: dict[tuple, list[float]] = {(): [0.0, ninf]}  # prefix -> [log p ending in blank, in non-blank]
    for t, row in enumerate(rows):
        nxt: dict[tuple, list[float]] = {}
        for prefix, (pb, pnb) in beams.items():
            total = add(pb, pnb)
            for c in top_tokens[t]:
                p = row[c]
                if c == blank:
                    e = nxt.setdefault(prefix, [ninf, ninf])
                    e[0] = add(e[0], total + p)
                    continue
                last = prefix[-1] if prefix else None
                ext = prefix + (c,)
                e = nxt.setdefault(ext, [ninf, ninf])
                # a repeated label needs a blank in between; otherwise any path may extend
                e[1] = add(e[1], (pb if c == last else total) + p)
                if c == last:  # the same label continued: the prefix stays
                    s = nxt.setdefault(prefix, [ninf, ninf])
                    s[1] = add(s[1], pnb + p)
        beams = dict(sorted(nxt.items(), key=lambda kv: -add(*kv[1]))[:beam])
    return list(max(beams.items(), key=lambda kv: add(*kv[1]))[0])


def torchaudio_ctc_beam(log_probs: torch.Tensor, lens: torch.Tensor, tokens: Sequence[str], beam: int = 8,
                        lexicon: str | None = None, kenlm: str | None = None, lm_weight: float = 1.0,
                        word_score: float = 0.0) -> list[list[int]]:
    """torchaudio's flashlight CTC beam search (``flashlight-text``), optionally with a lexicon
    file (``word<TAB>c h a r s |``) and a KenLM model. (B, T, V) -> token ids."""
    from torchaudio.models.decoder import ctc_decoder

    # flashlight needs a word-separator token that is not whitespace: the space char becomes "|"
    names = ["|" if t == " " else t for t in tokens]
    if "|" not in names:
        names = names + ["|"]  # never emitted by the model; required by the decoder
    names[0] = "-"  # blank
    dec = ctc_decoder(lexicon=lexicon, tokens=names, lm=kenlm, nbest=1, beam_size=beam, blank_token="-",
                      sil_token="|", unk_word="<unk>", lm_weight=lm_weight if kenlm else 0.0,
                      word_score=word_score, log_add=True)
    emissions = log_probs.float().contiguous().cpu()
    if emissions.size(-1) < len(names):
        pad = torch.full((*emissions.shape[:2], len(names) - emissions.size(-1)), NEG_INF)
        emissions = torch.cat([emissions, pad], -1)
    out = []
    for hyps in dec(emissions, lens.to(torch.int32).cpu()):
        ids = [int(t) for t in hyps[0].tokens] if hyps else []
        sep = names.index("|")
        space = tokens.index(" ") if " " in tokens else None
        ids = [space if i == sep and space is not None else i for i in ids if i != 0 and (i != sep or space is not None)]
        # flashlight brackets the output with silence tokens; strip them
        while ids and space is not None and ids[0] == space:
            ids.pop(0)
        while ids and space is not None and ids[-1] == space:
            ids.pop()
        out.append(ids)
    return out


def write_lexicon(words: Sequence[str], path: str | os.PathLike | None = None) -> str:
    """A flashlight lexicon for a character vocabulary: ``word<TAB>w o r d |`` per word."""
    if path is None:
        fd, path = tempfile.mkstemp(suffix=".lex")
        os.close(fd)
    with open(path, "w", encoding="utf-8") as f:
        for w in sorted(set(words)):
            f.write(f"{w}\t{' '.join(w)} |\n")
    return str(path)


def attention_beam_search(step: Callable[[torch.Tensor], torch.Tensor], sos: int, eos: int, max_len: int,
                          beam: int = 4, ctc: CTCPrefixScorer | None = None, ctc_weight: float = 0.0,
                          length_bonus: float = 0.0) -> list[int]:
    """Beam search for one utterance. ``step(prefixes (N, L)) -> (N, V)`` log-probabilities of the
    next token; with ``ctc`` the score is ``(1 - ctc_weight) * attention + ctc_weight * CTC prefix``
    (joint decoding, Watanabe et al. 2017). Returns the best hypothesis without sos/eos."""
    hyps: list[tuple[list[int], float, float, torch.Tensor | None]] = [
        ([sos], 0.0, 0.0, ctc.init() if ctc is not None else None)]
    ended: list[tuple[list[int], float]] = []
    for _ in range(max_len):
        prefixes = torch.tensor([h[0] for h in hyps])
        att = step(prefixes).float()  # (N, V)
        cand: list[tuple[list[int], float, float, torch.Tensor | None]] = []
        for i, (prefix, _score, att_sum, r) in enumerate(hyps):
            k = min(att.size(1), beam + 1)
            top = torch.topk(att[i], k).indices  # pre-prune with attention, as ESPnet does
            att_new = att_sum + att[i, top]
            if ctc is not None and ctc_weight > 0:
                psi, rs = ctc.score(prefix[-1] if len(prefix) > 1 else None, r, top)
                # the CTC term is the prefix score itself (already a running total)
                score = (1 - ctc_weight) * att_new + ctc_weight * psi + length_bonus * len(prefix)
            else:
                rs = [None] * k
                score = att_new + length_bonus * len(prefix)
            for j in range(k):
                cand.append((prefix + [int(top[j])], float(score[j]), float(att_new[j]),
                             rs[j] if ctc is not None and ctc_weight > 0 else None))
        cand.sort(key=lambda c: -c[1])
        hyps = []
        for c in cand:
            if c[0][-1] == eos:
                ended.append((c[0][1:-1], c[1]))
            else:
                hyps.append(c)
            if len(hyps) == beam:
                break
        if not hyps or (ended and max(e[1] for e in ended) > hyps[0][1]):
            break
    if not ended:
        ended = [(h[0][1:], h[1]) for h in hyps]
    return max(ended, key=lambda e: e[1])[0]


CTC_DECODERS = ("greedy", "prefix_beam", "flashlight")


def ctc_decode(log_probs: torch.Tensor, lens: torch.Tensor, tokenizer, decoder: str = "greedy",
               beam_size: int = 8, lexicon: str = "", kenlm: str = "", lm_weight: float = 1.0,
               word_score: float = 0.0) -> list[list[int]]:
    """(B, T, V) CTC log-probabilities -> token ids with the named decoder."""
    if decoder == "greedy":
        return greedy_ctc(log_probs, lens)
    if decoder == "prefix_beam":
        return [ctc_prefix_beam_search(log_probs[b, : int(lens[b])], beam=beam_size) for b in range(log_probs.size(0))]
    if decoder == "flashlight":
        return torchaudio_ctc_beam(log_probs, lens, tokenizer.tokens, beam=beam_size, lexicon=lexicon or None,
                                   kenlm=kenlm or None, lm_weight=lm_weight, word_score=word_score)
    raise ValueError(f"unknown CTC decoder: {decoder} (known: {list(CTC_DECODERS)})")


def ctc_loss(log_probs: torch.Tensor, out_lens: torch.Tensor, targets: torch.Tensor,
             target_lens: torch.Tensor) -> torch.Tensor:
    """Summed CTC loss of (B, T, V) log-probabilities against (B, S) padded targets (blank = 0)."""
    return torch.nn.functional.ctc_loss(log_probs.transpose(0, 1).float(), targets, out_lens, target_lens,
                                        blank=0, reduction="sum", zero_infinity=True)
