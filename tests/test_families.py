"""Every family learns through the shared loop; presets and configs load; describe counts.

The overfit tests run the same ``run_epochs`` that Ray Train workers run, in-process, on 32
real synthesized utterances used as both training and validation set.
"""
from __future__ import annotations

import time

import pytest

from asr_core.models import FAMILIES, count_parameters, get_family
from asr_core.train.config import split_params
from asr_core.train.data import prepare_data
from asr_core.train.loop import run_epochs
from tests.factories import copy_manifest
from tune_jobs.cli import main

# seed 000's two tables ("Quick Reference: Optimal Configurations"), copied value for value
SEED000_TABLES = {
    "mono_optimized": {"hidden_dim": 256, "attention_heads": 4, "linear_units": 2048, "eblocks": 12,
                       "edropout": 0.1, "econformer_kernel_size": 31, "eposition_embedding_type": "relative",
                       "dblocks": 6, "ddropout": 0.1, "batch_bins": 5000000, "accum_grad": 2, "nepochs": 60,
                       "lr": 2e-3, "warmup_steps": 10000, "label_smoothing": 0.1},
    "bili_optimized": {"hidden_dim": 512, "attention_heads": 8, "linear_units": 2048, "eblocks": 16,
                       "edropout": 0.15, "econformer_kernel_size": 31, "eposition_embedding_type": "relative",
                       "dblocks": 6, "ddropout": 0.15, "batch_bins": 3000000, "accum_grad": 4, "nepochs": 80,
                       "lr": 1.5e-3, "warmup_steps": 20000, "label_smoothing": 0.1},
}


def test_every_preset_of_every_family_loads_and_builds():
    assert sorted(FAMILIES) == ["conformer_aed", "crnn_ctc", "seq2seq", "tts_acoustic", "wavenet_ctc"]
    for name in FAMILIES:
        fam = get_family(name)
        for preset in fam.presets:
            run = split_params({"family": name, "preset": preset, "train_manifest": "-", "dev_manifest": "-"},
                               where=f"{name}/{preset}")
            feat = getattr(run.model, "input_dim", 0) or run.features.n_mels
            vocab = getattr(run.model, "num_classes", 0) or 40
            assert count_parameters(fam.build(run.model, vocab, feat)) > 0, (name, preset)


def test_seed000_presets_equal_the_seed_tables_key_by_key():
    fam = get_family("conformer_aed")
    for preset, table in SEED000_TABLES.items():
        assert fam.presets[preset] == table, preset
        run = split_params({"family": "conformer_aed", "preset": preset, "train_manifest": "-", "dev_manifest": "-"})
        for k, v in table.items():  # and each lands in the config that uses it
            owner = run.model if hasattr(run.model, k) else run.train
            assert getattr(owner, k) == v, (preset, k)
        assert run.train.epochs == table["nepochs"]


def test_describe_prints_seed004_parameter_count(capsys):
    assert main(["describe", "crnn_ctc", "--preset", "seed004"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 22,322,217" in out and "conv_channels: (1024, 1024)" in out


def test_describe_unknown_family_or_preset_is_a_clear_error(capsys):
    assert main(["describe", "nope"]) == 2
    assert "unknown family: nope" in capsys.readouterr().err
    assert main(["describe", "crnn_ctc", "--preset", "huge"]) == 2
    assert "unknown preset for crnn_ctc: huge" in capsys.readouterr().err


def test_attention_heads_must_divide_hidden_dim():
    with pytest.raises(ValueError, match="'attention_heads' \\(5\\) must divide 'hidden_dim' \\(96\\)"):
        split_params({"family": "conformer_aed", "preset": "tiny", "attention_heads": 5,
                      "train_manifest": "-", "dev_manifest": "-"})


@pytest.fixture(scope="module")
def m32(corpus, tmp_path_factory):
    """The 32 shortest training utterances, used as both training and validation set (overfitting)."""
    import json

    path = tmp_path_factory.mktemp("m32") / "m32.jsonl"
    copy_manifest(corpus["train"], path)
    lines = sorted(path.read_text().splitlines(), key=lambda l: json.loads(l)["duration"])[:32]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# family -> (preset, epochs, overrides); sized so that each run takes well under 90 s here
OVERFIT = {
    "crnn_ctc": ("tiny", 100, {"lr": 5e-3}),
    "wavenet_ctc": ("tiny", 60, {"lr": 3e-3}),
    "seq2seq": ("tiny", 80, {"lr": 5e-3}),
    "conformer_aed": ("tiny", 45, {"lr": 3e-3, "ctc_weight": 0.3}),
    "tts_acoustic": ("tiny", 32, {"lr": 5e-3, "decoder_dim": 256, "prenet_dropout": 0.0,
                                  "attention_loss_weight": 2.0, "schedule": "constant"}),
}


def _overfit(name: str, m32: str, cache_dir) -> tuple[list[dict], float]:
    preset, epochs, extra = OVERFIT[name]
    params = {"family": name, "preset": preset, "train_manifest": m32, "dev_manifest": m32,
              "cache_dir": str(cache_dir), "epochs": epochs, "n_mels": 40, "batch_size": 8,
              "schedule": "cosine", **extra}
    run = split_params(params)
    data = prepare_data(run.data, run.features, progress=False)
    history: list[dict] = []
    t0 = time.perf_counter()
    run_epochs(run, get_family(name), data, lambda m, save: history.append(m), None)
    return history, time.perf_counter() - t0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["crnn_ctc", "wavenet_ctc", "conformer_aed"])
def test_asr_family_overfits_32_utterances_to_cer_under_5_percent(name, m32, cache_dir):
    h, secs = _overfit(name, m32, cache_dir)
    assert h[-1]["train_loss"] < 0.2 * h[0]["train_loss"], [round(x["train_loss"], 2) for x in h]
    assert min(x["val_cer"] for x in h[-5:]) <= 0.05, [round(x["val_cer"], 3) for x in h]
    print(f"{name}: {len(h)} epochs in {secs:.0f} s, final val_cer {h[-1]['val_cer']:.4f}")


@pytest.mark.slow
def test_seq2seq_overfits_32_utterances_to_sequence_accuracy_1(m32, cache_dir):
    h, secs = _overfit("seq2seq", m32, cache_dir)
    print("val_seq_acc by epoch:", [round(x["val_seq_acc"], 3) for x in h])
    assert h[-1]["train_loss"] < 0.2 * h[0]["train_loss"]
    assert max(x["val_seq_acc"] for x in h[-3:]) == 1.0, [round(x["val_seq_acc"], 3) for x in h]
    assert h[-1]["val_char_acc"] > 0.95
    print(f"seq2seq: {len(h)} epochs in {secs:.0f} s, val_seq_acc {h[-1]['val_seq_acc']}")


@pytest.mark.slow
def test_tts_acoustic_val_mel_loss_halves(m32, cache_dir):
    h, secs = _overfit("tts_acoustic", m32, cache_dir)
    first, last = h[0]["val_mel_loss"], min(x["val_mel_loss"] for x in h)
    assert last < 0.5 * first, [round(x["val_mel_loss"], 3) for x in h]
    for k in ("val_stop_acc", "val_att_diag", "val_kl"):
        assert h[-1][k] == h[-1][k], k  # reported, not NaN
    print(f"tts_acoustic: {len(h)} epochs in {secs:.0f} s, val_mel_loss {first:.3f} -> {last:.3f}")
