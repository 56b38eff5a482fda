"""How sure a ranking is: 95% bootstrap intervals of CER and WER and the probability that one
system improves on another, from per-utterance edit counts (Bisani and Ney 2004, as Kaldi's
``compute-wer-bootci``), computed by kaldialign.

Each ASR checkpoint keeps its dev utterances' ``(errors, reference length)`` pairs
(``edits.json``, asr_core.train.checkpoint), so intervals need no second decode. kaldialign's
public ``bootstrap_wer_ci`` takes reference and hypothesis sequences and aligns them first; the
pairs are what it computes from them, and we pass them to the same bootstrap it then runs
(``_kaldialign._get_boostrap_wer_interval`` / ``_get_p_improv``). A test checks that both give
the same figures on the same utterances.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

REPLICATIONS = 10_000
SEED = 0
SURE = 0.95  # below this probability of improvement, two systems are "tied"

# which edit counts a ranking metric is computed from
UNITS = {"val_cer": "char", "val_wer": "word", "cer": "char", "wer": "word"}


@dataclass(frozen=True)
class Interval:
    rate: float   # the error rate itself: errors / reference length
    low: float    # 95% interval (kaldialign: bootstrap mean +- 1.96 standard deviations)
    high: float
    n: int        # utterances
    mean: float = math.nan  # the bootstrap mean (kaldialign's "wer"), the interval's centre

    def text(self, pct: bool = True) -> str:
        f = (lambda v: f"{100 * v:.2f}%") if pct else (lambda v: f"{v:.4f}")
        return f"{f(self.rate)} [{f(max(self.low, 0.0))}, {f(self.high)}]"


def _pairs(pairs) -> list[tuple[int, int]]:
    return [(int(e), int(n)) for e, n in pairs]


def interval(pairs) -> Interval:
    """95% bootstrap interval of the error rate of ``(errors, reference length)`` pairs."""
    from _kaldialign import _get_boostrap_wer_interval

    pairs = _pairs(pairs)
    if not pairs or sum(n for _, n in pairs) == 0:
        return Interval(math.nan, math.nan, math.nan, len(pairs), math.nan)
    mean, half = _get_boostrap_wer_interval(pairs, replications=REPLICATIONS, seed=SEED)
    rate = sum(e for e, _ in pairs) / sum(n for _, n in pairs)
    return Interval(rate, float(mean - half), float(mean + half), len(pairs), float(mean))


def p_improves(baseline, other) -> float:
    """Probability that ``other`` has fewer errors than ``baseline`` on the same utterances
    (paired bootstrap). Both are ``(errors, reference length)`` pairs in the same utterance order."""
    from _kaldialign import _get_p_improv

    a, b = _pairs(baseline), _pairs(other)
    if len(a) != len(b):
        raise ValueError(f"paired bootstrap needs the same utterances: {len(a)} against {len(b)}")
    if not a:
        return math.nan
    return float(_get_p_improv(a, b, replications=REPLICATIONS, seed=SEED))


def aligned(a: dict, b: dict, unit: str) -> tuple[list, list]:
    """Two ``edits.json`` records restricted to the utterances both scored, in the same order."""
    ia = {u: i for i, u in enumerate(a["ids"])}
    common = [u for u in b["ids"] if u in ia]
    ib = {u: i for i, u in enumerate(b["ids"])}
    return [a[unit][ia[u]] for u in common], [b[unit][ib[u]] for u in common]


def checkpoint_edits(trial_dir: Path, epoch: int | None) -> dict | None:
    """The edit counts a trial's checkpoint of ``epoch`` kept (its best epoch's checkpoint is kept
    by the checkpoint policy: num_to_keep by the job's metric); None if that one is gone."""
    from asr_core.train.checkpoint_files import load_edits

    if epoch is None or (isinstance(epoch, float) and math.isnan(epoch)):
        return None
    for d in sorted(Path(trial_dir).glob("checkpoint_*")):
        e = load_edits(d)
        if e is not None and e.get("epoch") == int(epoch):
            return e
    return None


def edits_from_rows(rows: list[dict]) -> dict:
    """``evaluate(..., per_utterance=True)`` rows as an ``edits.json`` record."""
    from asr_core.train.checkpoint_files import edits_record

    return edits_record([(r["id"], r["char_errors"], r["chars"], r["word_errors"], r["words"]) for r in rows])


def _same(a, b) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(a) == str(b)


def baseline_trial(trials, record):
    """The trial that ran the job's baseline configuration (``record.baseline``, an
    ``analysis.record.ExperimentRecord``), or None."""
    base = record.baseline.params
    if not base or trials.empty:
        return None
    hits = trials[[all(f"config/{k}" in trials and _same(r.get(f"config/{k}"), v) for k, v in base.items())
                   for _, r in trials.iterrows()]]
    if hits.empty:
        return None
    from analysis.load import trial_number

    return hits.loc[min(hits.index, key=lambda i: trial_number(hits.at[i, "trial"]))]  # the first run of it


def compare(best: dict, baseline: dict | None) -> dict:
    """Intervals of CER and WER of two systems on the same utterances, and the probability that
    ``best`` improves on ``baseline`` (an ``edits.json``-like record each)."""
    out: dict = {"utterances": len(best["ids"])}
    for unit, name in (("char", "cer"), ("word", "wer")):
        out[f"best_{name}"] = interval(best[unit]).__dict__
        if baseline is not None:
            a, b = aligned(baseline, best, unit)
            out[f"baseline_{name}"] = interval(a).__dict__
            out[f"p_best_improves_{name}"] = p_improves(a, b)
    return out


def trial_intervals(exp_dir: Path, trials, record):
    """Per trial, from the checkpoint of its best epoch: CER and WER intervals on the dev set,
    the probability that the best trial improves on it (by the ranking metric's unit) and
    whether it is tied with the best (that probability under ``SURE``). Rows for trials whose
    checkpoint kept no edit counts (a non-ASR family, or an older run) are absent."""
    import pandas as pd

    from analysis.load import winner

    metric = record.metric
    unit = UNITS.get(metric)
    rows, kept = [], {}
    for _, t in trials.iterrows():
        e = checkpoint_edits(Path(exp_dir) / t.trial, t.get(f"best_{metric}_epoch"))
        if e is None:
            continue
        kept[t.trial] = e
        c, w = interval(e["char"]), interval(e["word"])
        rows.append({"trial": t.trial, "ci_epoch": e.get("epoch"), "ci_utterances": c.n,
                     "ci_cer": c.rate, "ci_cer_low": c.low, "ci_cer_high": c.high,
                     "ci_wer": w.rate, "ci_wer_low": w.low, "ci_wer_high": w.high})
    df = pd.DataFrame(rows)
    w = winner(trials, record)
    if df.empty or unit is None or w is None or w.trial not in kept:
        return df
    best = kept[w.trial]
    ps, tied = [], []
    for tr in df.trial:
        if tr == w.trial:
            ps.append(math.nan)
            tied.append(True)
            continue
        other, b = aligned(kept[tr], best, unit)
        p = p_improves(other, b)
        ps.append(p)
        tied.append(p < SURE)
    df["p_best_better"], df["tied_with_best"] = ps, tied
    return df
