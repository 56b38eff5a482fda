"""Tuning that says how sure it is: the baseline trial and the test comparison with intervals,
decode-time tuning over cached acoustic outputs, n-gram LMs for the decoder, and the what-if
replay of recorded learning curves through Tune's schedulers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import tiny_job
from tune_jobs.spec import load_job

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "benchmarks" / "data" / "crnn_grid.csv"


def test_the_baseline_is_the_first_point_else_the_untuned_values_when_they_can_be_sampled():
    demo = load_job(ROOT / "tune_jobs" / "jobs" / "demo.yaml")
    base, source = demo.baseline()
    # preset demo_small's LSTM and the job's own lr: what `speechtune train` would run
    assert base == {"lr": 4.0e-3, "lstm_hidden": 160, "lstm_dropout": 0.1}
    assert "untuned" in source and demo.first_points() == [base]
    smoke = load_job(ROOT / "tune_jobs" / "jobs" / "demo.yaml", "smoke")
    none, why = smoke.baseline()
    assert none is None and "lstm_hidden" in why and "not one of" in why and smoke.first_points() == []
    seed000 = load_job(ROOT / "tune_jobs" / "jobs" / "seed000_mono.yaml")
    assert seed000.baseline()[0] == seed000.points()[0] and "points_to_evaluate" in seed000.baseline()[1]


def test_word_and_token_lms_are_normalized_and_load_in_torchaudios_decoder(tmp_path):
    import torch

    from asr_core.data.tokenizer import CharTokenizer
    from asr_core.decoding import torchaudio_ctc_beam, write_lexicon
    from asr_core.lm import token_units, word_units, write_arpa

    texts = ["the cat sat", "the dog sat down", "a cat ran", "the cat ran fast", "a dog sat"]
    for units, order in ((word_units, 3), (token_units, 5)):
        path = write_arpa((units(t) for t in texts), tmp_path / f"{order}.arpa", order=order)
        prob, back = _read_arpa(path)
        vocab = [g[0] for g in prob if len(g) == 1 and g[0] != "<s>"]
        for hist in [("<s>",), ("<s>", "the") if order == 3 else ("<s>", "t"), ("cat",) if order == 3 else ("a",),
                     ("zzz",)]:
            total = sum(10 ** _logp(prob, back, hist + (w,), order) for w in vocab)
            assert total == pytest.approx(1.0, abs=1e-6), (path, hist)
    tok = CharTokenizer.build(texts, ["en"])
    lex = write_lexicon([w for t in texts for w in t.split()], tmp_path / "lex.txt")
    word = write_arpa((word_units(t) for t in texts), tmp_path / "w.arpa", order=3)
    # emissions that spell "the cat sat" greedily: the decoder loads the ARPA (KenLM) and decodes
    ids = tok.encode("the cat sat")
    emissions = torch.full((1, 2 * len(ids) + 1, tok.vocab_size), -10.0)
    for i, t in enumerate(ids):
        emissions[0, 2 * i, t] = 0.0
        emissions[0, 2 * i + 1, 0] = 0.0
    emissions[0, -1, 0] = 0.0
    out = torchaudio_ctc_beam(emissions.log_softmax(-1), torch.tensor([emissions.size(1)]), tok.tokens, beam=8,
                              lexicon=lex, kenlm=word, lm_weight=0.5)
    assert tok.decode(out[0]) == "the cat sat"


def _read_arpa(path):
    prob, back, section = {}, {}, 0
    for line in Path(path).read_text().splitlines():
        if line.endswith("-grams:"):
            section = int(line[1:].split("-")[0])
        elif section and line.strip() and not line.startswith("\\"):
            parts = line.split("\t")
            g = tuple(parts[1].split(" "))
            prob[g] = float(parts[0])
            if len(parts) > 2:
                back[g] = float(parts[2])
    return prob, back


def _logp(prob, back, g, order):
    g = g[-order:]
    if g in prob:
        return prob[g]
    if len(g) == 1:
        return prob[("<unk>",)]
    return back.get(g[:-1], 0.0) + _logp(prob, back, g[1:], order)


@pytest.mark.skipif(not GRID.is_file(), reason="benchmarks/data/crnn_grid.csv not recorded")
def test_replaying_fifo_over_the_recorded_grid_reproduces_its_best_and_asha_spends_less():
    from analysis.replay import Curves
    from tune_jobs.replay import replay

    curves = Curves.from_csv(GRID)
    assert len(curves.configs) >= 36 and curves.epochs == 8 and curves.is_product()
    fifo = replay(curves, "fifo", "grid", seed=0)
    assert fifo.best == curves.best() and fifo.trials == len(curves.configs)  # exactly, not approximately
    assert fifo.epochs == curves.values.size and fifo.seconds == pytest.approx(curves.total_seconds())
    asha = [replay(curves, "asha", "random", seed=s) for s in range(3)]
    assert all(r.epochs < fifo.epochs for r in asha)
    again = replay(curves, "asha", "hyperopt", seed=1)
    assert (again.epochs, again.best) == (lambda r: (r.epochs, r.best))(replay(curves, "asha", "hyperopt", seed=1))
    p = subprocess.run([sys.executable, "-m", "tune_jobs.cli", "replay", str(GRID), "--scheduler", "fifo,asha",
                        "--searcher", "grid,random", "--repeats", "3"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    fifo_row = next(line for line in p.stdout.splitlines() if line.startswith("| fifo | grid |"))
    assert f"{100 * curves.best():.2f}%" in fifo_row and "| 100% |" in fifo_row
    assert "| asha | random |" in p.stdout


@pytest.mark.ray
@pytest.mark.timeout(500)
def test_a_search_starts_from_its_baseline_reports_the_test_gain_and_decode_tune_caches_each_checkpoint_once(
        corpus, cache_dir, tmp_path, ray_start_2_cpus, capfd):
    from analysis.load import load_experiment, trial_number
    from tune_jobs import decode_tune
    from tune_jobs.workflow import tune_job

    job = tiny_job(tmp_path, corpus, cache_dir, "value", """\
        search_space: {lr: {loguniform: [1.0e-3, 1.0e-2]}}
        searcher: {name: random, seed: 3}
        num_trials: 2
        max_concurrent: 2
        """, epochs=2, edit={"metric": "val_cer", "test_eval": True, "data.test_manifest": corpus["test"]})
    assert tune_job(load_job(job)) == 0
    exp = next((tmp_path / "exp").glob("value*"))
    trials, _ = load_experiment(exp)
    first = trials.loc[min(trials.index, key=lambda i: trial_number(trials.at[i, "trial"]))]
    assert first["config/lr"] == pytest.approx(3.0e-3)  # the job's untuned lr runs first: the baseline
    scores = json.loads((exp / "test_scores.json").read_text())
    assert scores["utterances"] == 24 and scores["baseline"]["trial_id"] == first.trial_id
    for k in ("best_cer", "best_wer"):
        assert scores[k]["low"] <= scores[k]["rate"] <= scores[k]["high"]
    if not scores["baseline"].get("is_best"):
        assert 0.0 <= scores["p_best_improves_cer"] <= 1.0 and "baseline_cer" in scores
    report = (exp / "report.md").read_text()
    first_item = report.split("## Summary", 1)[1].strip().splitlines()[0]
    assert "baseline" in first_item and "%" in first_item  # the report opens with it
    assert "dev CER [95% CI]" in report and "search utilisation:" in report

    decode_tune.ACOUSTIC_PASSES.clear()
    space = {"beam_size": {"grid": [4]}, "lm_weight": {"grid": [0.0, 0.5]}, "lexicon": {"grid": [False, True]}}
    capfd.readouterr()
    out = decode_tune.run_decode_tune(str(exp), top=2, space=space)
    assert out["settings_tried"] == 8 and out["top"] == 2  # 4 settings x 2 checkpoints
    # a line per tenth of the settings in place of Ray's tables (1,345 lines of them before)
    printed = capfd.readouterr()
    assert "decoding settings: 100% (8/8 settings, " in printed.err, printed.err[-3000:]
    assert not [t for t in ("╭", "Trial Status", "== Status ==", "Current time:") if t in printed.out + printed.err]
    dev_passes = {ck: n for ck, n in decode_tune.ACOUSTIC_PASSES.items()}
    # each checkpoint ran over the dev set once (one forward per dev batch, 24 utterances), then
    # the winner once over test: 8 settings decoded, 2 + 1 acoustic passes
    dev_batches = _batches(out["checkpoints"][out["ranked"][0]["checkpoint"]], corpus["dev"])
    test_batches = _batches(out["checkpoints"][out["ranked"][0]["checkpoint"]], corpus["test"])
    winner = out["checkpoints"][out["ranked"][0]["checkpoint"]]
    assert {ck: n for ck, n in dev_passes.items() if ck != winner} == \
        {ck: dev_batches for ck in out["checkpoints"].values() if ck != winner}
    assert dev_passes[winner] == dev_batches + test_batches
    assert out["acoustic_passes"] == 2 and out["dev_utterances"] == 24
    best = out["ranked"][0]
    assert best["cer_ci"]["low"] <= best["cer"] + 1e-9 and out["test"]["utterances"] == 24
    assert all(r["tied_with_best"] == (r is best or r["p_best_better"] < 0.95) for r in out["ranked"])
    from analysis.report import write_report

    assert "## Decoding (speechtune decode-tune)" in Path(write_report(exp)).read_text()


def _batches(ckpt: str, manifest: str) -> int:
    """How many batches one pass over ``manifest`` takes (as decode-tune batches it)."""
    from asr_core.evaluate import load_model, open_split

    model, family, tok, run, meta = load_model(ckpt)
    _, data = open_split(meta, run, tok, manifest, progress=False)
    return len(data.batches(1_000_000, padding=family.pads(run.model)))
