"""Character tokenizer that knows language tags (``<en>``, ``<fa>``).

Index 0 is the CTC blank (also used as padding). Language tags are whole tokens so that a
family can predict the language (seed 000's LID accuracy) without splitting a tag into chars.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from asr_core.errors import InputError

BLANK = "<blank>"


def lang_tag(language: str) -> str:
    return f"<{language}>"


@dataclass
class CharTokenizer:
    chars: list[str]
    languages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = [BLANK] + [lang_tag(l) for l in self.languages] + list(self.chars)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.blank_id = 0

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, texts: Iterable[str], languages: Iterable[str]) -> "CharTokenizer":
        chars = sorted({c for t in texts for c in t})
        return cls(chars=chars, languages=sorted(set(languages)))

    def encode(self, text: str, language: str | None = None, where: str = "<text>") -> list[int]:
        ids = []
        if language is not None:
            tag = lang_tag(language)
            if tag not in self.index:
                raise InputError(where, f"language '{language}' is unknown to the tokenizer (known: {self.languages})")
            ids.append(self.index[tag])
        for c in text:
            i = self.index.get(c)  # single characters never match a tag or the blank
            if i is None:
                raise InputError(where, f"character {c!r} (U+{ord(c):04X}) cannot be mapped by the tokenizer "
                                        f"built from the training manifest")
            ids.append(i)
        return ids

    def decode(self, ids: Sequence[int], strip_tags: bool = True) -> str:
        out = []
        for i in ids:
            t = self.tokens[int(i)]
            if i == 0 or (strip_tags and len(t) > 1 and t.startswith("<")):
                continue
            out.append(t)
        return "".join(out)

    def language_of(self, ids: Sequence[int]) -> str | None:
        """First language tag in ``ids``, if any."""
        for i in ids:
            t = self.tokens[int(i)]
            if len(t) > 2 and t.startswith("<") and t.endswith(">") and t != BLANK:
                return t[1:-1]
        return None

    def to_dict(self) -> dict:
        return {"chars": self.chars, "languages": self.languages}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        return cls(chars=list(d["chars"]), languages=list(d["languages"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)
