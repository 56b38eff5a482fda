"""What every CTC family shares: decoding settings, the loss and the decoder entry point.

A CTC family's module maps ``(feats (B, T, F), lens (B,)) -> (log_probs (B, T', V), lens' (B,))``
and keeps its config as ``self.cfg`` (a subclass of ``CTCDecoding``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from asr_core.decoding import CTC_DECODERS, ctc_decode, ctc_loss
from asr_core.errors import KeyProblem


@dataclass
class CTCDecoding:
    decoder: str = "greedy"  # greedy | prefix_beam | flashlight (torchaudio ctc_decoder)
    beam_size: int = 8
    lexicon: str = ""  # flashlight: lexicon file (word<TAB>c h a r s |)
    kenlm: str = ""  # flashlight: KenLM binary or ARPA file
    lm_weight: float = 1.0
    word_score: float = 0.0

    def validate_decoding(self) -> None:
        if self.decoder not in CTC_DECODERS:
            raise KeyProblem("decoder", f"key 'decoder': {self.decoder!r} is not one of {list(CTC_DECODERS)}")
        if self.beam_size < 1:
            raise KeyProblem("beam_size", "key 'beam_size' must be >= 1")


DECODE_KEYS = ("decoder", "beam_size", "lexicon", "kenlm", "lm_weight", "word_score")


def compute_loss(model: nn.Module, batch) -> tuple[torch.Tensor, int]:
    log_probs, out_lens = model(batch.feats, batch.feat_lens)
    return ctc_loss(log_probs, out_lens, batch.targets, batch.target_lens), len(batch)


@torch.no_grad()
def decode(model: nn.Module, batch, tokenizer=None, **overrides) -> list[list[int]]:
    log_probs, out_lens = model(batch.feats, batch.feat_lens)
    opts = {k: overrides.get(k, getattr(model.cfg, k)) for k in DECODE_KEYS}
    return ctc_decode(log_probs, out_lens, tokenizer, **opts)


# decode-time tuning: flashlight beam search over cached log-probabilities. ``lexicon`` True
# decodes words of the training vocabulary with a word n-gram LM; False decodes free token
# sequences with a token (character) n-gram LM (tune_jobs.decode_tune builds both).
DECODE_SPACE = {"beam_size": {"grid": [4, 16]}, "lm_weight": {"grid": [0.0, 0.5, 1.0]},
                "word_score": {"grid": [-0.5, 0.5]}, "lexicon": {"grid": [False, True]}}


@torch.no_grad()
def acoustic(model: nn.Module, batch) -> list[torch.Tensor]:
    """The acoustic pass: each utterance's CTC log-probabilities, (T', V) each."""
    log_probs, out_lens = model(batch.feats, batch.feat_lens)  # (B, T', V), (B,)
    return [log_probs[b, : int(out_lens[b])].float().clone() for b in range(log_probs.size(0))]


def decode_cached(model, outputs: list[torch.Tensor], tokenizer, **settings) -> list[list[int]]:
    """Token ids from cached log-probabilities; ``settings`` are ``ctc_decode``'s keywords."""
    lens = torch.tensor([o.size(0) for o in outputs])
    log_probs = nn.utils.rnn.pad_sequence(outputs, batch_first=True)  # (B, T, V); padding is never read
    return ctc_decode(log_probs, lens, tokenizer, **settings)
