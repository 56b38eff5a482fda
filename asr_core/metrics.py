"""Error rates through jiwer, kept as counts so that workers can sum them before dividing."""
from __future__ import annotations

from dataclasses import dataclass

import jiwer


@dataclass
class ErrorCounts:
    char_errors: int = 0
    chars: int = 0
    word_errors: int = 0
    words: int = 0

    def add(self, refs: list[str], hyps: list[str]) -> None:
        # jiwer refuses empty references; a manifest never has one (checked on read).
        hyps = [h if h else "" for h in hyps]
        c = jiwer.process_characters(refs, hyps)
        w = jiwer.process_words(refs, hyps)
        self.char_errors += c.substitutions + c.deletions + c.insertions
        self.chars += c.substitutions + c.deletions + c.hits
        self.word_errors += w.substitutions + w.deletions + w.insertions
        self.words += w.substitutions + w.deletions + w.hits

    def as_list(self) -> list[float]:
        return [self.char_errors, self.chars, self.word_errors, self.words]

    @property
    def cer(self) -> float:
        return self.char_errors / self.chars if self.chars else float("nan")

    @property
    def wer(self) -> float:
        return self.word_errors / self.words if self.words else float("nan")


def cer(refs: list[str], hyps: list[str]) -> float:
    e = ErrorCounts()
    e.add(refs, hyps)
    return e.cer


def wer(refs: list[str], hyps: list[str]) -> float:
    e = ErrorCounts()
    e.add(refs, hyps)
    return e.wer


# Counts every ASR family reports at validation; additive, so workers sum them before dividing.
ASR_COUNT_KEYS = ("char_errors", "chars", "char_hits", "word_errors", "words", "utts", "exact", "lid_correct",
                  "lid_total")


def asr_counts(hyp_ids: list[list[int]], batch, tokenizer, with_lang_tag: bool) -> dict[str, float]:
    """Error counts of decoded token ids against the batch's transcripts (and language tags)."""
    hyps = [tokenizer.decode(ids) for ids in hyp_ids]
    refs = list(batch.texts)
    c = jiwer.process_characters(refs, hyps)
    w = jiwer.process_words(refs, hyps)
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
