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
