"""What a run reports, and which way is better: one registry of metrics (name, mode, format), and
the ASR error rates through jiwer, kept as counts so that workers can sum them before dividing.

Every decision that needs a metric's direction (the loop's best epoch and early stopping,
checkpoint retention, Tune's ranking, the analysis's best values) asks ``mode_of`` / a family's
``Family.metric``: nothing guesses it from the name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import jiwer


@dataclass(frozen=True)
class Metric:
    name: str
    mode: Literal["min", "max"]  # which way is better
    fmt: str = ".4f"  # format spec for tables and reports
    doc: str = ""


def _table(*ms: Metric) -> dict[str, Metric]:
    return {m.name: m for m in ms}


# Validation metrics of the ASR families (asr_metrics below) and of tts_acoustic (its summarize).
ASR_METRICS = _table(
    Metric("val_loss", "min", doc="the family's training loss on the dev set"),
    Metric("val_cer", "min", ".2%", "character error rate"),
    Metric("val_wer", "min", ".2%", "word error rate"),
    Metric("val_char_acc", "max", ".2%", "aligned character hits / reference characters"),
    Metric("val_seq_acc", "max", ".2%", "exact transcripts / utterances"),
    Metric("val_levenshtein", "min", ".3f", "mean character edit distance per utterance"),
    Metric("val_lid_acc", "max", ".2%", "language tag accuracy (NaN unless the run predicts tags)"),
)
TTS_METRICS = _table(
    Metric("val_loss", "min", doc="weighted sum of the loss terms on the dev set"),
    Metric("val_mel_loss", "min", doc="mel-spectrogram L1 per utterance"),
    Metric("val_kl", "min", doc="KL of the reference encoder"),
    Metric("val_stop_acc", "max", ".2%", "stop-token accuracy over frames"),
    Metric("val_att_diag", "max", ".3f", "attention mass near the diagonal"),
)
# What the shared training loop reports for every family (asr_core.train.loop.run_epochs).
LOOP_METRICS = _table(
    Metric("train_loss", "min"), Metric("epoch", "max", "d"), Metric("step", "max", "d"),
    Metric("epoch_time_s", "min", ".1f"), Metric("utts_per_s", "max", ".1f"), Metric("lr", "max", ".2e"),
    Metric("cpu_s", "min", ".1f"), Metric("model_params", "min", ",d"), Metric("best_epoch", "max", "d"),
    Metric("steps_to_target", "min", ".0f", "optimizer steps until target_metric passed target_value"),
    Metric("num_nodes", "max", "d"),
)
KNOWN = {**LOOP_METRICS, **ASR_METRICS, **TTS_METRICS}


def derived(name: str, table: dict[str, Metric]) -> Metric | None:
    """``best_M`` (best value so far) and ``M_auc`` (area under the curve) go the way ``M`` goes."""
    if name in table:
        return table[name]
    for base in (name[5:] if name.startswith("best_") else None, name[:-4] if name.endswith("_auc") else None):
        if base and base in table:
            return Metric(name, table[base].mode, table[base].fmt)
    return None


# Words that mark a higher-is-better metric in a name no family declares (a user's own report,
# read back by the analysis): the one place a direction is guessed from a name.
HIGHER_IS_BETTER_WORDS = ("acc", "f1", "bleu", "precision", "recall", "score", "diag")


def mode_of(name: str, job_metric: str | None = None, job_mode: str | None = None, guess: bool = False) -> str | None:
    """The direction of a metric: the job's own (metric, mode) pair for its metric, else what a
    family declares. A name no family declares: None, or with ``guess`` "max" when its last path
    part names an accuracy-like quantity (HIGHER_IS_BETTER_WORDS), else "min"."""
    if job_metric is not None and name == job_metric and job_mode:
        return job_mode
    m = derived(name, KNOWN)
    if m is not None:
        return m.mode
    if not guess:
        return None
    last = name.rsplit("/", 1)[-1]
    return "max" if any(w in last for w in HIGHER_IS_BETTER_WORDS) else "min"


def selection_metric(name: str, validation: dict[str, Metric]) -> str | None:
    """The per-epoch validation metric behind a job's ranking metric: ``val_cer`` for ``val_cer``,
    ``best_val_cer`` and ``val_cer_auc``; None when it has none (``steps_to_target``)."""
    for base in (name, name[5:] if name.startswith("best_") else "", name[:-4] if name.endswith("_auc") else ""):
        if base in validation:
            return base
    return None


def sentence_edits(out) -> list[tuple[int, int]]:
    """(errors, reference length) of each sentence of a jiwer ``process_characters`` /
    ``process_words`` output, from its per-sentence alignments: the pairs a bootstrap interval
    (kaldialign, analysis.confidence) resamples."""
    pairs = []
    for chunks in out.alignments:
        errors = length = 0
        for c in chunks:
            span = c.ref_end_idx - c.ref_start_idx
            if c.type == "insert":
                errors += c.hyp_end_idx - c.hyp_start_idx
            else:
                length += span
                errors += span if c.type != "equal" else 0
        pairs.append((errors, length))
    return pairs


def asr_counts(hyp_ids: list[list[int]], batch, tokenizer, with_lang_tag: bool,
               edits: list | None = None) -> dict[str, float]:
    """Error counts of decoded token ids against the batch's transcripts (and language tags).
    ``edits`` (a list) gets one ``(id, char errors, chars, word errors, words)`` per utterance."""
    hyps = [tokenizer.decode(ids) for ids in hyp_ids]
    refs = list(batch.texts)
    c = jiwer.process_characters(refs, hyps)
    w = jiwer.process_words(refs, hyps)
    if edits is not None:
        edits += [(uid, *ce, *we) for uid, ce, we in zip(batch.ids, sentence_edits(c), sentence_edits(w))]
    out = {
        "char_errors": c.substitutions + c.deletions + c.insertions,
        "chars": c.substitutions + c.deletions + c.hits,
        "char_hits": c.hits,
        "word_errors": w.substitutions + w.deletions + w.insertions,
        "words": w.substitutions + w.deletions + w.hits,
        "utts": len(refs),
        "exact": sum(r == h for r, h in zip(refs, hyps)),
        "lid_correct": 0, "lid_total": 0,
    }
    if with_lang_tag:
        out["lid_correct"] = sum(tokenizer.language_of(ids) == lang for ids, lang in zip(hyp_ids, batch.languages))
        out["lid_total"] = len(refs)
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def asr_metrics(c: dict[str, float]) -> dict[str, float]:
    """val_cer, val_wer, val_char_acc (aligned hits / reference characters), val_seq_acc (exact
    transcripts), val_levenshtein (mean character edit distance per utterance, seed 004's
    leaderboard metric) and val_lid_acc (NaN unless the run predicts language tags)."""
    return {
        "val_cer": _ratio(c["char_errors"], c["chars"]),
        "val_wer": _ratio(c["word_errors"], c["words"]),
        "val_char_acc": _ratio(c["char_hits"], c["chars"]),
        "val_seq_acc": _ratio(c["exact"], c["utts"]),
        "val_levenshtein": _ratio(c["char_errors"], c["utts"]),
        "val_lid_acc": _ratio(c["lid_correct"], c["lid_total"]),
    }
