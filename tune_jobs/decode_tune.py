"""``speechtune decode-tune EXP``: tune how the best checkpoints decode, without running their
acoustic models again for every setting.

1. The top-K trials' best checkpoints each run over the dev set **once**
   (``Family.acoustic``: CTC log-probabilities; encoder states for attention models); the outputs
   are cached (``EXP/decode_cache``) and shipped to the search through Ray's object store,
   so nodes need no shared disk.
2. A Ray Tune search (grid, or HyperOpt TPE with ``--num-samples``) runs over the decoding
   settings x the checkpoints; each trial only decodes the cache (``Family.decode_cached``).
   CTC families: beam size, LM weight, word insertion score and lexicon on/off, with word and
   token n-gram LMs built from the training transcripts (asr_core.lm); attention families: beam
   size, CTC weight and length bonus.
3. The settings are ranked by dev CER/WER with 95% intervals and ties to the best
   (analysis.confidence); the winner is scored on the test split (one more acoustic pass)
   against the checkpoint's own decoding, and ``decode_tune.json`` keeps it all for the report.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import torch

import tune_jobs  # noqa: F401  (Train/Tune env before ray loads)
from asr_core.errors import InputError

# checkpoint directory -> acoustic forward passes over a split's batches (a test reads it)
ACOUSTIC_PASSES: Counter = Counter()
RESULT = "decode_tune.json"


def acoustic_cache(ckpt_dir: str, manifest: str, cache_dir: str | None = None, batch_bins: int = 1_000_000,
                   progress: bool = True) -> dict:
    """One pass of the checkpoint's acoustic model over ``manifest``: every utterance's output,
    with its id and transcript, and what a decoding trial needs to rebuild the rest."""
    from asr_core.evaluate import load_model, open_split

    model, family, tok, run, meta = load_model(ckpt_dir)
    if family.acoustic is None:
        raise ValueError(f"{ckpt_dir}: family {family.name} cannot decode from cached outputs (no decode-tune)")
    _, data = open_split(meta, run, tok, manifest, cache_dir, progress=progress)
    ids, texts, outputs = [], [], []
    for batch in data.iterate(data.batches(batch_bins, padding=family.pads(run.model))):
        outputs += family.acoustic(model, batch)
        ids += list(batch.ids)
        texts += list(batch.texts)
        ACOUSTIC_PASSES[str(ckpt_dir)] += 1
    own = family.decoding(run.model)
    return {"checkpoint": str(ckpt_dir), "family": family.name, "tokenizer": meta["tokenizer"],
            "params": meta["params"], "epoch": meta["epoch"], "ids": ids, "texts": texts, "outputs": outputs,
            # an attention model's decoder runs in every trial; a CTC family needs no weights
            "state": None if _is_ctc(family) else model.state_dict(),
            "own": {k: v for k, v in own.items() if isinstance(v, (int, float, str, bool))}}


def _is_ctc(family) -> bool:
    return "lexicon" in family.decode_space


def build_lms(train_manifest: str, out_dir: Path) -> dict:
    """Word (order 3) and token (order 6) n-gram LMs and a lexicon from the training transcripts,
    as text (a trial writes them where it runs)."""
    from asr_core.data.manifest import read_manifest
    from asr_core.decoding import write_lexicon
    from asr_core.lm import token_units, word_units, write_arpa

    texts = [u.text for u in read_manifest(train_manifest, check_audio=False).utterances if u.text]
    out_dir.mkdir(parents=True, exist_ok=True)
    word = write_arpa((word_units(t) for t in texts), out_dir / "words.3gram.arpa", order=3)
    token = write_arpa((token_units(t) for t in texts), out_dir / "tokens.6gram.arpa", order=6)
    lexicon = write_lexicon([w for t in texts for w in t.split()], out_dir / "lexicon.txt")
    return {name: Path(p).read_text(encoding="utf-8") for name, p in
            (("word", word), ("token", token), ("lexicon", lexicon))}


_FILES: dict[str, str] = {}


def _file(name: str, text: str) -> str:
    """An LM or lexicon written once per worker process (nodes share no disk)."""
    if name not in _FILES:
        fd, path = tempfile.mkstemp(suffix=f".{name}")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        _FILES[name] = path
    return _FILES[name]


def decode_settings(cache: dict, settings: dict, lms: dict | None) -> list[list[int]]:
    """Token ids of a cache under ``settings`` (CTC: lexicon on/off picks the word or token LM)."""
    from asr_core.models import get_family

    family = get_family(cache["family"])
    settings = dict(settings)
    if _is_ctc(family) and "lexicon" in settings:
        lexicon = bool(settings.pop("lexicon"))
        use_lm = float(settings.get("lm_weight", 0.0)) > 0 and lms is not None
        settings.update(decoder="flashlight",
                        lexicon=_file("lexicon", lms["lexicon"]) if lexicon and lms else "",
                        kenlm=_file("word.arpa" if lexicon else "token.arpa", lms["word" if lexicon else "token"])
                        if use_lm else "")
    return family.decode_cached(_model(cache), cache["outputs"], _tok(cache), **settings)


def score(cache: dict, hyps: list[list[int]]) -> tuple[dict, list]:
    """CER, WER and per-utterance edit counts of hypotheses against the cache's transcripts."""
    from asr_core.metrics import asr_counts, asr_metrics

    edits: list = []
    c = asr_counts(hyps, SimpleNamespace(ids=cache["ids"], texts=cache["texts"]), _tok(cache), False, edits)
    m = asr_metrics(c)
    return {"cer": m["val_cer"], "wer": m["val_wer"]}, edits


def _trial(config: dict, payload=None) -> None:
    """One decoding setting on one checkpoint's cached dev outputs."""
    from ray import tune

    from tune_jobs.searchers import NS

    flat = dict(config.get(NS, config))
    key = flat.pop("checkpoint")
    cache = payload["caches"][key]
    t0 = time.perf_counter()
    metrics, edits = score(cache, decode_settings(cache, flat, payload["lms"]))
    tune.report({**metrics, "decode_s": time.perf_counter() - t0,
                 "edits": [[e[1], e[2], e[3], e[4]] for e in sorted(edits)]})


class NothingProduced(RuntimeError):
    """A search ran and produced no result (the command says so and exits non-zero)."""


def run_decode_tune(exp: str, top: int = 2, space: dict | None = None, searcher: str = "grid",
                    num_samples: int = 24, address: str | None = None, num_cpus: int | None = None,
                    progress: bool = True, ray_verbose: bool = False) -> dict:
    """Decoding settings of an experiment's ``top`` checkpoints (the one ranking's), searched on
    their cached dev outputs (one acoustic pass each); the winner scored on test against the
    checkpoint's own settings. Kept as ``decode_tune.json`` in the experiment."""
    from analysis.record import read_record
    from asr_core import storage as store
    from asr_core.models import get_family

    local = store.local_copy(exp, skip_checkpoints=False)
    record = read_record(local)
    family = get_family(record.family)
    if family.acoustic is None:
        raise InputError(exp, f"decode-tune needs an ASR family that decodes from cached outputs; "
                              f"{family.name} has none")
    manifests = record.manifests
    for split in ("train", "dev"):
        if not manifests.get(split) or not Path(manifests[split]).is_file():
            raise InputError(exp, f"the {split} manifest {manifests.get(split)!r} is not on this machine")
    unit = "wer" if record.metric.endswith("wer") or family.default_metric.endswith("wer") else "cer"
    t0 = time.time()
    caches = _acoustic_passes(exp, local, record, top, progress)
    out_dir = local / "decode_cache"  # the dev outputs and the LMs, for a look or a rerun
    torch.save(caches, out_dir.mkdir(parents=True, exist_ok=True) or out_dir / "dev_outputs.pt")
    lms = build_lms(manifests["train"], out_dir / "lm") if _is_ctc(family) else None
    rows = _search_settings(exp, local, caches, lms, dict(space or family.decode_space), searcher, num_samples,
                            unit, address, num_cpus, progress, ray_verbose)
    best = _rank_settings(rows, unit)
    test = None
    if manifests.get("test") and Path(manifests["test"]).is_file():
        test = _winner_on_test(family, caches[best["checkpoint"]], best, manifests["test"], lms, progress)
    out = {"unit": unit, "top": len(caches), "checkpoints": {k: c["checkpoint"] for k, c in caches.items()},
           "settings_tried": len(rows), "acoustic_passes": len(caches), "acoustic_passes_from_scratch": len(rows),
           "dev_utterances": len(best["edits"]), "ranked": [{k: v for k, v in r.items() if k != "edits"} for r in rows],
           "test": test, "wall_s": time.time() - t0, "searcher": searcher}
    store.write_text(store.join(exp, RESULT), json.dumps(out, indent=1, default=str))
    return out


def _acoustic_passes(exp: str, local: Path, record, top: int, progress: bool) -> dict:
    """trial id -> the dev outputs of its best checkpoint, for the ranking's ``top`` trials."""
    from analysis.load import best_checkpoint, load_experiment, rank

    trials, _ = load_experiment(local)
    ranked = rank(trials, record).head(top)
    caches = {}
    for _, t in ranked.iterrows():
        ck = best_checkpoint(local, *record.selection, trial=t.trial)
        print(f"acoustic pass {len(caches) + 1}/{len(ranked)}: trial {t.trial_id}, {ck.name} over the dev set",
              flush=True)
        caches[str(t.trial_id)] = acoustic_cache(str(ck), record.manifests["dev"], progress=progress)
    if not caches:
        raise InputError(exp, "no trial with a checkpoint to decode")
    return caches


def _search_settings(exp: str, local: Path, caches: dict, lms, written: dict, searcher: str, num_samples: int,
                     unit: str, address, num_cpus, progress: bool, ray_verbose: bool = False) -> list[dict]:
    """The decoding search on Ray Tune (one CPU a trial, the outputs shared): a row per setting
    that decoded, with its CER, WER and per-utterance edit counts."""
    from ray import tune

    from asr_core import storage as store
    from cluster.local import init_ray
    from tune_jobs.progress import TrialsDone
    from tune_jobs.registry import make_searcher
    from tune_jobs.runner import ray_output
    from tune_jobs.searchers import NS
    from tune_jobs.space import parse_space, split_grid

    sampled, grid = split_grid(written)
    domains = parse_space(sampled, lambda k: f"decode space: {k}")
    if searcher == "grid":
        grid = {"checkpoint": list(caches), **grid}
    else:
        domains = {"checkpoint": tune.choice(list(caches)), **domains,
                   **{k: tune.choice(v) for k, v in grid.items()}}
        grid = {}
    n = math.prod(len(v) for v in grid.values())
    search = make_searcher(searcher, metric=unit, mode="min", seed=0, space=domains, grid=grid, trials={},
                           points=[], constraints=[], fixed={}, max_concurrent=num_cpus or 64)
    init_ray(address, num_cpus=num_cpus)
    planned = n if searcher == "grid" else num_samples
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial, payload={"caches": caches, "lms": lms}), {"cpu": 1}),
        tune_config=tune.TuneConfig(metric=unit, mode="min", search_alg=search, reuse_actors=True,
                                    num_samples=planned),
        run_config=tune.RunConfig(name="decode_tune", verbose=1 if progress and ray_verbose else 0,
                                  callbacks=[TrialsDone(planned, "decoding settings", "settings")]
                                  if progress and not ray_verbose else None,
                                  storage_path=str(exp) if store.is_remote(exp) else str(Path(local).resolve())))
    with ray_output(progress, ray_verbose):
        results = tuner.fit()
    rows = []
    for r in results:
        if r.error or not r.metrics or "edits" not in r.metrics:
            continue
        flat = dict(r.config.get(NS, r.config))
        rows.append({"checkpoint": flat.pop("checkpoint"), "settings": flat, "cer": r.metrics["cer"],
                     "wer": r.metrics["wer"], "edits": r.metrics["edits"]})
    if not rows:
        raise NothingProduced("decode-tune produced nothing: every decoding trial failed")
    return rows


def _rank_settings(rows: list[dict], unit: str) -> dict:
    """Sort the rows by ``unit``, give each its intervals and whether the best is shown to beat
    it (paired bootstrap); returns the best."""
    from analysis.confidence import SURE, interval, p_improves

    rows.sort(key=lambda r: r[unit])
    best = rows[0]
    idx = 2 if unit == "wer" else 0

    def unit_pairs(r):
        return [[e[idx], e[idx + 1]] for e in r["edits"]]

    for r in rows:
        r["cer_ci"] = interval([[e[0], e[1]] for e in r["edits"]]).__dict__
        r["wer_ci"] = interval([[e[2], e[3]] for e in r["edits"]]).__dict__
        r["p_best_better"] = None if r is best else p_improves(unit_pairs(r), unit_pairs(best))
        r["tied_with_best"] = r is best or r["p_best_better"] < SURE
    return best


def _winner_on_test(family, winner: dict, best: dict, test_manifest: str, lms, progress: bool) -> dict:
    """The winner on the test split: one more acoustic pass, decoded with its settings and with
    the checkpoint's own, paired."""
    from analysis.confidence import compare
    from asr_core.train.checkpoint_files import edits_record

    print(f"acoustic pass over the test split: {Path(winner['checkpoint']).name} of trial {best['checkpoint']}",
          flush=True)
    tc = acoustic_cache(winner["checkpoint"], test_manifest, progress=progress)
    tuned_m, tuned_e = score(tc, decode_settings(tc, best["settings"], lms))
    own_settings = {k: v for k, v in winner["own"].items() if k in ("decoder", "beam_size", "decode_ctc_weight")}
    if own_settings.get("decoder") == "greedy":
        own_settings.pop("beam_size", None)
    own = family.decode_cached(_model(tc), tc["outputs"], _tok(tc),
                               **({"decoder": own_settings.get("decoder", "greedy"),
                                   "beam_size": own_settings.get("beam_size", 8)} if _is_ctc(family)
                                  else {k: v for k, v in own_settings.items() if k != "decoder"}))
    own_m, own_e = score(tc, own)
    return {"utterances": len(tc["ids"]), "tuned": {**tuned_m, "settings": best["settings"]},
            "own": {**own_m, "settings": own_settings}, **compare(edits_record(tuned_e), edits_record(own_e))}


def _tok(cache):
    from asr_core.data.tokenizer import CharTokenizer

    return CharTokenizer.from_dict(cache["tokenizer"])


def _model(cache):
    from asr_core.evaluate import build_model

    return build_model(cache["params"], _tok(cache), cache["state"]) if cache.get("state") is not None else None


def format_result(out: dict) -> str:
    u = out["unit"].upper()
    pct = lambda i: f"{100 * i['rate']:.2f}% [{100 * max(i['low'], 0):.2f}, {100 * i['high']:.2f}]"  # noqa: E731
    lines = [f"decode-tune: {out['settings_tried']} settings over the top {out['top']} checkpoint(s), "
             f"{out['dev_utterances']} dev utterances; acoustic passes: {out['acoustic_passes']} (dev) instead of "
             f"{out['acoustic_passes_from_scratch']} decoding each setting from scratch "
             f"({out['acoustic_passes_from_scratch'] - out['acoustic_passes']} saved)", "",
             "| rank | checkpoint (trial) | settings | dev CER [95% CI] | dev WER [95% CI] | vs best |",
             "|---|---|---|---|---|---|"]
    for i, r in enumerate(out["ranked"], start=1):
        vs = "best" if i == 1 else (f"{'**tied**' if r['tied_with_best'] else 'worse'} (P = {r['p_best_better']:.2f})")
        s = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        lines.append(f"| {i} | `{r['checkpoint']}` | {s} | {pct(r['cer_ci'])} | {pct(r['wer_ci'])} | {vs} |")
    t = out.get("test")
    if t:
        key = out["unit"]
        p = t[f"p_best_improves_{key}"]
        lines += ["", f"test ({t['utterances']} utterances): the winning settings {u} {pct(t[f'best_{key}'])} against "
                      f"{pct(t[f'baseline_{key}'])} with the checkpoint's own decoding "
                      f"({', '.join(f'{k}={v}' for k, v in t['own']['settings'].items())}); P(improvement) = {p:.3f}"
                      + (" (beyond the noise)" if p >= 0.95 else " (not beyond the noise)")]
    return "\n".join(lines)


def main_cli(a) -> int:
    space = None
    if a.space:
        from tune_jobs.yamlio import load_with_lines

        space, _ = load_with_lines(a.space)
    try:
        out = run_decode_tune(a.exp, top=a.top, space=space, searcher=a.searcher, num_samples=a.num_samples,
                              address=a.address, num_cpus=a.num_cpus, ray_verbose=a.ray_verbose)
    except NothingProduced as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_result(out))
    print(f"kept: {a.exp.rstrip('/')}/{RESULT}")
    try:
        from analysis.report import write_report

        print(f"report: {write_report(a.exp)}")
    except Exception as e:  # the decode-tune result stands on its own
        print(f"report: not rewritten ({e})", file=sys.stderr)
    return 0
