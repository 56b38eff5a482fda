"""Synthesis, manifests, features cache, tokenizer, batching, metrics."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr_core.data.features import FeatureConfig, load_features
from asr_core.data.manifest import read_manifest
from asr_core.data.synth import ensure_corpus
from asr_core.data.tokenizer import CharTokenizer
from asr_core.data.batching import make_batches, shard
from asr_core.errors import InputError


def _rows(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines()]


def test_synthesis_is_deterministic_and_splits_are_disjoint(tmp_path):
    a = ensure_corpus("demo-bilingual", cache_dir=tmp_path / "a", train=30, dev=8, test=8, progress=False)
    b = ensure_corpus("demo-bilingual", cache_dir=tmp_path / "b", train=30, dev=8, test=8, progress=False)
    for split in ("train", "dev", "test"):
        ra, rb = _rows(a[split]), _rows(b[split])
        assert ra == rb
        wa, _ = soundfile.read(Path(a[split]).parent / ra[0]["audio"])
        wb, _ = soundfile.read(Path(b[split]).parent / rb[0]["audio"])
        assert np.array_equal(wa, wb)
    rows = {s: _rows(a[s]) for s in ("train", "dev", "test")}
    voices = {s: {r["speaker"] for r in rows[s]} for s in rows}
    sents = {s: {r["text"] for r in rows[s]} for s in rows}
    for x, y in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not voices[x] & voices[y], (x, y)
        assert not sents[x] & sents[y], (x, y)
    assert {r["language"] for r in rows["train"]} == {"en", "fa"}
    info = soundfile.info(str(Path(a["train"]).parent / rows["train"][0]["audio"]))
    assert info.samplerate == 16000 and info.frames > 8000


def test_test_hard_split_adds_unseen_sentences_by_test_voices_and_leaves_the_other_splits_alone(tmp_path):
    a = ensure_corpus("demo-bilingual", cache_dir=tmp_path / "a", train=30, dev=8, test=8, progress=False)
    h = ensure_corpus("demo-bilingual", cache_dir=tmp_path / "h", train=30, dev=8, test=8, test_hard=8,
                      progress=False)
    assert set(h) == {"train", "dev", "test", "test_hard"} and "test_hard" not in a
    for split in ("train", "dev", "test"):  # byte for byte what the corpus without test_hard holds
        assert _rows(a[split]) == _rows(h[split])
        for r in _rows(a[split])[:3]:
            assert (Path(a[split]).parent / r["audio"]).read_bytes() == (Path(h[split]).parent / r["audio"]).read_bytes()
    hard = _rows(h["test_hard"])
    assert len(hard) == 8 and {r["language"] for r in hard} == {"en", "fa"}
    seen_voices = {r["speaker"] for s in ("train", "dev") for r in _rows(h[s])}
    assert not {r["speaker"] for r in hard} & seen_voices  # the test split's voices: unseen in training
    others = {r["text"] for s in ("train", "dev", "test") for r in _rows(h[s])}
    assert not {r["text"] for r in hard} & others


def test_corpus_is_reused_not_resynthesized(corpus, cache_dir):
    before = Path(corpus["train"]).stat().st_mtime_ns
    again = ensure_corpus("demo-mono", cache_dir=cache_dir, train=160, dev=24, test=24, progress=False)
    assert again == corpus and Path(corpus["train"]).stat().st_mtime_ns == before


def test_feature_cache_is_shared(corpus, tmp_path):
    m = read_manifest(corpus["dev"])
    cfg = FeatureConfig(n_mels=40)
    first = load_features(m, cfg, tmp_path, progress=False)
    second = load_features(m, cfg, tmp_path, progress=False)  # a second trial on the same node
    assert first.extracted == len(m) and second.extracted == 0
    f = second.feats(0)
    assert f.shape[1] == 40 and f.shape[0] == second.num_frames[0] > 50
    assert np.array_equal(first.feats(3), second.feats(3))
    assert not second.feats(0).flags.owndata  # a view into the memory-mapped file
    other = load_features(m, FeatureConfig(n_mels=80), tmp_path, progress=False)  # new settings, new entry
    assert other.extracted == len(m) and other.path != second.path


def test_tokenizer_round_trip_with_language_tags():
    tok = CharTokenizer.build(["hello world", "سلام دنیا"], ["en", "fa"])
    for text, lang in (("hello world", "en"), ("سلام دنیا", "fa")):
        ids = tok.encode(text, lang)
        assert tok.language_of(ids) == lang
        assert tok.decode(ids) == text
    assert 0 not in tok.encode("hello")  # 0 is the CTC blank
    with pytest.raises(InputError, match="'Q'"):
        tok.encode("Quiet", where="dev.jsonl:3")
    assert CharTokenizer.from_dict(tok.to_dict()).tokens == tok.tokens


def test_validation_error_counts_equal_hand_computed_values():
    """asr_counts and asr_metrics, what every ASR family's validation reports (and evaluate
    prints), on transcripts whose edits are counted by hand."""
    from types import SimpleNamespace

    from asr_core.metrics import asr_counts, asr_metrics

    refs = ["the cat sat", "abcd", "hello"]
    hyps = ["the bat sat down", "abxd", "helo"]
    tok = CharTokenizer.build(refs + hyps, ["en"] * 6)
    batch = SimpleNamespace(ids=["u0", "u1", "u2"], texts=refs, languages=["en"] * 3)
    edits: list = []
    c = asr_counts([tok.encode(h) for h in hyps], batch, tok, with_lang_tag=False, edits=edits)
    # "the cat sat" -> "the bat sat down": 1 substitution + 5 inserted characters (" down") over 11;
    # "abcd" -> "abxd": 1 substitution over 4; "hello" -> "helo": 1 deletion over 5
    assert (c["char_errors"], c["chars"]) == (1 + 5 + 1 + 1, 11 + 4 + 5)
    # words: 1 substitution + 1 insertion over 3; 1 substitution over 1; 1 substitution over 1
    assert (c["word_errors"], c["words"]) == (2 + 1 + 1, 3 + 1 + 1)
    assert edits == [("u0", 6, 11, 2, 3), ("u1", 1, 4, 1, 1), ("u2", 1, 5, 1, 1)]
    m = asr_metrics(c)
    assert m["val_cer"] == pytest.approx(8 / 20) and m["val_wer"] == pytest.approx(4 / 5)
    assert m["val_seq_acc"] == 0.0 and m["val_levenshtein"] == pytest.approx(8 / 3)
    assert m["val_lid_acc"] != m["val_lid_acc"]  # NaN: no language tags predicted, never 0
    same = asr_counts([tok.encode(r) for r in refs], batch, tok, with_lang_tag=False)
    assert asr_metrics(same)["val_cer"] == 0.0 and asr_metrics(same)["val_seq_acc"] == 1.0


def test_batches_respect_batch_bins_and_shards_are_even():
    rng = np.random.default_rng(0)
    frames = rng.integers(50, 400, size=200).tolist()
    tokens = rng.integers(5, 40, size=200).tolist()
    batches = make_batches(frames, tokens, feat_dim=40, batch_bins=100_000)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        if len(b) > 1:
            assert len(b) * (max(frames[i] for i in b) * 40 + max(tokens[i] for i in b)) <= 100_000
    s0, s1 = shard(batches, 0, 2, 0, 1), shard(batches, 1, 2, 0, 1)
    assert len(s0) == len(s1) and not {id(b) for b in s0} & {id(b) for b in s1}


def test_progress_is_a_bar_on_a_terminal_and_a_line_per_tenth_elsewhere(corpus, tmp_path, capsys):
    """Off a terminal tqdm wrote every redraw (``make demo > log`` held megabytes of bars). Now a
    log gets a plain line at each tenth of the work; a terminal (a real pty here) gets tqdm's bar."""
    import io
    import os
    import pty

    from asr_core.data.features import FeatureConfig, ensure_store
    from asr_core.data.manifest import read_manifest
    from asr_core.progress_bar import progress_bar

    log = io.StringIO()
    with progress_bar(50, "features dev.jsonl", "utt", file=log) as bar:
        for _ in range(50):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert [ln.split(": ")[1].split("%")[0] for ln in lines] == [str(p) for p in range(10, 101, 10)], lines
    assert lines[-1].startswith("features dev.jsonl: 100% (50/50 utt, ") and "\r" not in log.getvalue()
    cut = io.StringIO()
    bar = progress_bar(100, "synthesizing demo", "utt", file=cut)
    bar.update(35)
    bar.update(2)
    bar.close()  # a step cut short says how far it got
    shown = cut.getvalue().splitlines()
    assert [s.split(" (")[0] for s in shown] == ["synthesizing demo: 35%", "synthesizing demo: 37%"], shown

    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as term:
        bar = progress_bar(4, "features dev.jsonl", "utt", file=term)
        bar.update(4)
        bar.close()
    chunks = []
    while True:  # all the terminal got: reading stops with EIO once the closed side is drained
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    drawn = b"".join(chunks).decode()
    assert "\r" in drawn and "4/4" in drawn and "features dev.jsonl: 100%|" in drawn, drawn

    # the real step, its progress into pytest's captured (not a terminal) standard error
    m = read_manifest(corpus["dev"])
    ensure_store(m, FeatureConfig(n_mels=40), str(tmp_path / "root"), progress=True, parallel=False)
    err = capsys.readouterr().err
    assert f"features dev.jsonl: 100% ({len(m)}/{len(m)} utt, " in err and "\r" not in err, err
