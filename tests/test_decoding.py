"""Decoders on a trained checkpoint over the demo test split (unseen voices and sentences): beam
search never scores worse than greedy; on posteriors the test controls, torchaudio's flashlight
decoder and our CTC prefix beam search (lexicon-free, no language model) both find the most
likely labelling, checked against every labelling scored by torch's ctc_loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from asr_core.data.features import FeatureConfig
from asr_core.data.manifest import read_manifest
from asr_core.data.synth import EN_WORDS
from asr_core.decoding import ctc_prefix_beam_search, torchaudio_ctc_beam, write_lexicon
from asr_core.evaluate import evaluate, load_model
from asr_core.models import get_family
from asr_core.train.config import split_params
from asr_core.train.data import dataset_for, prepare_data
from asr_core.train.loop import run_epochs
from tests.factories import make_params


@pytest.fixture(scope="module")
def trained(corpus, cache_dir, tmp_path_factory):
    """crnn_ctc trained in-process for a few epochs, saved as a checkpoint like a trial's."""
    out = tmp_path_factory.mktemp("ckpt")
    run = split_params(make_params(corpus, cache_dir, preset="tiny", epochs=20, lr=5e-3, batch_size=8))
    data = prepare_data(run.data, run.features, progress=False)
    cers = []

    def report(metrics, save):
        cers.append(metrics["val_cer"])
        save(str(out))

    torch.manual_seed(0)
    run_epochs(run, get_family("crnn_ctc"), data, report, None)
    # a model that has learned something, so that the decoders below can differ: its val CER fell
    # from its first epoch's and is below 1.0, the CER of a model that emits nothing (blank only)
    assert len(cers) == 20 and cers[-1] < min(cers[0], 1.0), cers
    return str(out)


def test_beam_search_never_scores_worse_than_greedy_on_the_test_split(trained, corpus):
    greedy = evaluate(trained, corpus["test"], progress=False, decoder="greedy")
    ours = evaluate(trained, corpus["test"], progress=False, decoder="prefix_beam", beam_size=8)
    flash = evaluate(trained, corpus["test"], progress=False, decoder="flashlight", beam_size=8)
    lex = write_lexicon(EN_WORDS)
    lexicon = evaluate(trained, corpus["test"], progress=False, decoder="flashlight", beam_size=16, lexicon=lex)
    print(f"test CER greedy {greedy['cer']:.4f}, prefix beam {ours['cer']:.4f}, flashlight {flash['cer']:.4f}, "
          f"flashlight+lexicon {lexicon['cer']:.4f}")
    assert ours["cer"] <= greedy["cer"]
    assert flash["cer"] <= greedy["cer"]
    assert lexicon["cer"] <= greedy["cer"]


def _loglik(x: torch.Tensor, seq: list[int]) -> float:
    """log P(labelling | x) under CTC, by torch's own ctc_loss (independent of both decoders)."""
    if not seq:
        return float(x[:, 0].sum())
    return -float(torch.nn.functional.ctc_loss(x[:, None], torch.tensor([seq]), torch.tensor([x.size(0)]),
                                               torch.tensor([len(seq)]), reduction="sum"))


def _labellings(vocab: int, frames: int):
    """Every labelling over tokens 1..vocab-1 that CTC can emit in ``frames`` frames (a repeated
    token needs a blank between its two frames)."""
    import itertools

    for n in range(frames + 1):
        for seq in itertools.product(range(1, vocab), repeat=n):
            if n + sum(a == b for a, b in zip(seq, seq[1:])) <= frames:
                yield list(seq)


def test_both_beam_searches_find_the_most_likely_labelling_when_the_beam_holds_every_prefix():
    """Posteriors the test controls: 5 frames over blank + 3 tokens, random (seeded) and flat. Every
    labelling CTC can emit is scored by torch's ctc_loss (independent of both decoders); with a beam
    that holds every prefix (364 of them; flashlight keeps blank- and token-ending states apart, so
    twice that) both searches are exact and must return a labelling as likely as the best, to
    float32 rounding. On some of these posteriors the best path's labelling is not the most likely
    one (asserted), so a search that only followed the best path would fail here."""
    greedy_misses = 0
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        x = torch.log_softmax(torch.randn(5, 4, generator=g) * 1.5, dim=-1)  # (T, V)
        scores = {tuple(seq): _loglik(x, seq) for seq in _labellings(4, 5)}
        best = max(scores.values())
        ours = ctc_prefix_beam_search(x, beam=400, token_beam=4, threshold=float("inf"))
        (theirs,) = torchaudio_ctc_beam(x[None], torch.tensor([5]), ["<blank>", "a", "b", "c"], beam=1000)
        assert abs(scores[tuple(ours)] - best) < 1e-4, (seed, ours, scores[tuple(ours)], best)
        assert abs(scores[tuple(theirs)] - best) < 1e-4, (seed, theirs, scores[tuple(theirs)], best)
        best_path = tuple(t for t in torch.unique_consecutive(x.argmax(-1)).tolist() if t)
        greedy_misses += scores[best_path] < best - 1e-4
    assert greedy_misses >= 1


def test_decoding_from_cached_acoustic_outputs_equals_decoding_the_batch(trained, corpus, cache_dir):
    """decode-tune's path (Family.acoustic once, Family.decode_cached per setting) gives exactly
    the hypotheses of decoding the batch directly: a trained crnn_ctc under greedy, prefix beam
    and flashlight, and a conformer_aed (random weights, CTC head) under joint beam search."""
    model, family, tok, run, meta = load_model(trained)
    data = dataset_for(read_manifest(corpus["test"]), tok, FeatureConfig(**meta["features"]), str(cache_dir),
                       np.asarray(meta["cmvn"]["mean"], np.float32), np.asarray(meta["cmvn"]["std"], np.float32),
                       False, progress=False)
    batch = next(data.iterate(data.batches(1_000_000)))
    outputs = family.acoustic(model, batch)
    assert [o.shape[0] for o in outputs] == [int(n) for n in model.out_lens(batch.feat_lens)]
    for settings in ({"decoder": "greedy"}, {"decoder": "prefix_beam", "beam_size": 4},
                     {"decoder": "flashlight", "beam_size": 8}):
        assert family.decode_cached(None, outputs, tok, **settings) == family.decode(model, batch, tok, **settings)

    aed = get_family("conformer_aed")
    arun = split_params({"family": "conformer_aed", "preset": "tiny", "train_manifest": corpus["train"],
                         "dev_manifest": corpus["dev"], "n_mels": run.features.n_mels, "ctc_weight": 0.3})
    torch.manual_seed(0)
    conformer = aed.build(arun.model, tok.vocab_size, run.features.n_mels).eval()
    for one in data.batches(1_000_000, batch_size=1)[:3]:  # one utterance: the same length bound either way
        b = next(data.iterate([one]))
        cached = aed.acoustic(conformer, b)
        for beam, w in ((2, 0.0), (3, 0.3)):
            assert aed.decode_cached(conformer, cached, tok, beam_size=beam, decode_ctc_weight=w) == \
                aed.decode(conformer, b, tok, beam_size=beam, decode_ctc_weight=w)


def _conformer_checkpoint(corpus, cache_dir, out, **overrides) -> str:
    """A tiny conformer_aed trained in-process for 3 epochs, saved as a trial's checkpoint."""
    run = split_params(make_params(corpus, cache_dir, family="conformer_aed", epochs=3, batch_size=8, **overrides))
    data = prepare_data(run.data, run.features, progress=False)
    torch.manual_seed(0)
    run_epochs(run, get_family("conformer_aed"), data, lambda metrics, save: save(str(out)), None)
    return str(out)


@pytest.mark.slow
def test_the_test_figures_come_from_the_decoding_best_on_dev(corpus, cache_dir, tmp_path, capsys):
    """After a search, `tune` scores the best checkpoint on dev with its own decoding and each of
    its family's test_decodings (conformer_aed: joint CTC/attention beam search) and keeps the one
    with the lower dev figure in the job's unit; the note it records names every figure. A
    checkpoint without a CTC head keeps its own; a family without test_decodings is not measured."""
    from tests.factories import tiny_job
    from tune_jobs.spec import load_job
    from tune_jobs.workflow import _choose_decoding

    joint = get_family("conformer_aed").test_decodings[0]
    assert joint == {"decode_mode": "beam", "beam_size": 4, "decode_ctc_weight": 0.3}
    job = load_job(tiny_job(tmp_path, corpus, cache_dir, "aed", edit={"family": "conformer_aed", "metric": "val_wer"}))
    ckpt = _conformer_checkpoint(corpus, cache_dir, tmp_path / "ctc", ctc_weight=0.3)
    decoding, note = _choose_decoding(job, ckpt, {"dev": corpus["dev"]})
    own, beam = (evaluate(ckpt, corpus["dev"], progress=False, **d) for d in ({}, joint))
    assert decoding == (joint if beam["wer"] < own["wer"] else {}), (own["wer"], beam["wer"])
    assert note == (f" (chosen on dev by WER: dev WER {100 * own['wer']:.2f}% with decode_mode greedy, beam_size 4, "
                    f"decode_ctc_weight 0.0; dev WER {100 * beam['wer']:.2f}% with decode_mode beam, beam_size 4, "
                    f"decode_ctc_weight 0.3)"), note

    bare = _conformer_checkpoint(corpus, cache_dir, tmp_path / "bare", ctc_weight=0.0)
    capsys.readouterr()
    decoding, note = _choose_decoding(job, bare, {"dev": corpus["dev"]})
    assert decoding == {} and note.count("dev WER") == 1, note
    assert "decode_ctc_weight 0.3: not for this checkpoint" in capsys.readouterr().out
    crnn = load_job(tiny_job(tmp_path, corpus, cache_dir, "crnn"))
    assert _choose_decoding(crnn, "no checkpoint is read", {"dev": corpus["dev"]}) == ({}, "")
