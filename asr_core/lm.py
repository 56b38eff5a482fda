"""N-gram language models from a corpus's training transcripts, as ARPA files for torchaudio's
flashlight CTC decoder (which loads ARPA through KenLM).

Why written here: KenLM's estimator (``lmplz``) is a C++ binary that no package in our registries
ships (the ``kenlm`` wheel only queries models), and no maintained Python library writes ARPA
(``nltk.lm`` estimates models but cannot export them). This is the classic backoff model with
absolute discounting (Ney, Essen and Kneser 1994): every n-gram seen in training gets
``(count - D) / count(history)``, and the mass taken off is handed to the lower order through a
backoff weight computed so that each history's distribution sums to one.

Two kinds: a **word** model (for lexicon decoding: the decoder scores whole words) and a
**token** model over the tokenizer's characters with ``|`` between words (for lexicon-free
decoding, where the decoder asks the LM about each emitted token).
"""
from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def word_units(text: str) -> list[str]:
    return text.split()


def token_units(text: str) -> list[str]:
    """Characters, the space as ``|`` (flashlight's word separator)."""
    return ["|" if c == " " else c for c in " ".join(text.split())]


def write_arpa(sentences: Iterable[list[str]], path: str | os.PathLike, order: int = 3,
               discount: float = 0.7) -> str:
    """Estimate a backoff n-gram model of ``order`` from unit sequences and write it as ARPA."""
    counts: list[Counter] = [Counter() for _ in range(order + 1)]  # counts[n][ngram tuple]
    for units in sentences:
        seq = [BOS] + list(units) + [EOS]
        for n in range(1, order + 1):
            for i in range(max(0, 1 if n == 1 else 0), len(seq) - n + 1):
                counts[n][tuple(seq[i:i + n])] += 1
    counts[1].pop((BOS,), None)
    vocab = sorted({g[0] for g in counts[1]} | {UNK, EOS})
    total = sum(counts[1].values())
    # unigrams: discounted counts, the freed mass spread evenly over the vocabulary (incl. <unk>)
    freed = discount * len(counts[1]) / total
    prob: list[dict] = [dict() for _ in range(order + 1)]
    for w in vocab:
        prob[1][(w,)] = max(counts[1].get((w,), 0) - discount, 0) / total + freed / len(vocab)
    backoff: list[dict] = [dict() for _ in range(order + 1)]
    for n in range(2, order + 1):
        by_history: dict[tuple, list[tuple]] = defaultdict(list)
        for g in counts[n]:
            by_history[g[:-1]].append(g)
        for h, grams in by_history.items():
            ch = sum(counts[n][g] for g in grams)
            for g in grams:
                prob[n][g] = (counts[n][g] - discount) / ch
            left = 1.0 - sum(prob[n][g] for g in grams)
            lower = 1.0 - sum(_p(prob, backoff, g[1:]) for g in grams)
            backoff[n - 1][h] = left / lower if lower > 1e-12 else 1.0

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        sizes = [len(vocab) + 1] + [len(prob[n]) for n in range(2, order + 1)]
        f.write("\\data\\\n" + "".join(f"ngram {n}={s}\n" for n, s in enumerate(sizes, start=1)) + "\n")
        for n in range(1, order + 1):
            f.write(f"\\{n}-grams:\n")
            if n == 1:
                f.write(f"-99\t{BOS}\t{math.log10(backoff[1].get((BOS,), 1.0)):.6f}\n")
            for g in sorted(prob[n]):
                line = f"{math.log10(prob[n][g]):.6f}\t{' '.join(g)}"
                if n < order and g in backoff[n]:
                    line += f"\t{math.log10(max(backoff[n][g], 1e-99)):.6f}"
                f.write(line + "\n")
            f.write("\n")
        f.write("\\end\\\n")
    return str(path)


def _p(prob: list[dict], backoff: list[dict], g: tuple) -> float:
    """The model's probability of the last unit of ``g`` after the others (backing off)."""
    n = len(g)
    if g in prob[n]:
        return prob[n][g]
    if n == 1:
        return prob[1].get((UNK,), 0.0)
    return backoff[n - 1].get(g[:-1], 1.0) * _p(prob, backoff, g[1:])
