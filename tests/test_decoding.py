"""Decoders on a trained checkpoint over the demo test split (unseen voices and sentences):
beam search never scores worse than greedy, and torchaudio's flashlight decoder agrees with our
CTC prefix beam search where both apply (lexicon-free, no language model)."""
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
    last = {}

    def report(metrics, save):
        last.update(metrics)
        save(str(out))

    torch.manual_seed(0)
    run_epochs(run, get_family("crnn_ctc"), data, report, None)
    assert last["val_cer"] < 0.6, last  # a model that has learned something, so decoders differ
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


def test_torchaudio_decoder_matches_our_prefix_beam_search(trained, corpus):
    """Both are beam searches over the same CTC posteriors (no lexicon, no LM). They must agree
    on most transcripts, and where they differ the two answers must be near-ties: neither
    decoder may miss a clearly more likely labelling that the other one found.

    Beam 32: at beam 8 the two prune differently (flashlight keeps blank/non-blank states as
    separate hypotheses, we keep prefixes), so on this weakly trained model they agreed on 11-16
    of 24 utterances from run to run; at 32 both are close to the best labelling (19/24 here, the
    rest within 0.1-0.4 nats of each other, once 1.4)."""
    import numpy as np

    model, family, tok, run, meta = load_model(trained)
    data = dataset_for(read_manifest(corpus["test"]), tok, FeatureConfig(**meta["features"]), run.data.cache_dir,
                       np.asarray(meta["cmvn"]["mean"], np.float32), np.asarray(meta["cmvn"]["std"], np.float32),
                       False, progress=False)
    norm = lambda ids: " ".join(tok.decode(ids).split())  # flashlight's word separator cannot lead or trail
    same = total = 0
    gaps = []
    with torch.no_grad():
        for batch in data.iterate(data.batches(400_000)):
            lp, lens = model(batch.feats, batch.feat_lens)
            theirs = torchaudio_ctc_beam(lp, lens, tok.tokens, beam=32)
            for b in range(len(batch)):
                x = lp[b, : int(lens[b])]
                ours = ctc_prefix_beam_search(x, beam=32)
                same += norm(ours) == norm(theirs[b])
                gaps.append(_loglik(x, ours) - _loglik(x, theirs[b]))
                total += 1
    worst, mean = min(gaps), sum(gaps) / len(gaps)
    print(f"flashlight == ours on {same}/{total} test utterances; log-likelihood ours - theirs: "
          f"min {worst:.2f}, mean {mean:.3f}, max {max(gaps):.2f}")
    assert same >= 0.5 * total
    # Both searches are approximate and prune differently, so on a weakly trained model either one
    # can miss a labelling up to ~1.5 nats better on some utterance (seen: -1.41 in CI). What must
    # hold is that neither is worse on the whole split, and neither misses a labelling 20x as likely.
    assert abs(mean) < 0.3, gaps
    assert -3.0 < worst and max(gaps) < 3.0, gaps


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
