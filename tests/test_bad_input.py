"""Bad input fails before any trial starts, naming file and line or key; --skip-bad skips it."""
from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest

from asr_core.data.manifest import read_manifest
from asr_core.errors import InputError
from asr_core.train.config import split_params
from asr_core.train.data import prepare_data
from tests.factories import _flow, _set, copy_manifest, make_params, speechtune, tiny_job, with_audio
from tune_jobs.spec import load_job


def test_missing_audio_names_file_and_line(corpus, tmp_path):
    m = copy_manifest(corpus["dev"], tmp_path / "dev.jsonl",
                      lambda i, r: {**r, "audio": "/nonexistent/x.flac"} if i == 4 else r)
    with pytest.raises(InputError, match=rf"{m}:5: audio file not found: /nonexistent/x.flac"):
        read_manifest(m)


def test_unreadable_audio_names_file_and_line(corpus, tmp_path):
    junk = tmp_path / "junk.flac"
    junk.write_bytes(b"this is not audio")
    m = copy_manifest(corpus["dev"], tmp_path / "dev.jsonl", lambda i, r: {**r, "audio": str(junk)} if i == 2 else r)
    with pytest.raises(InputError, match=rf"{m}:3: audio file unreadable"):
        read_manifest(m)


def test_empty_transcript_names_file_and_line(corpus, tmp_path):
    m = copy_manifest(corpus["dev"], tmp_path / "dev.jsonl", lambda i, r: {**r, "text": "  "} if i == 0 else r)
    with pytest.raises(InputError, match=rf"{m}:1: utterance '.*' has an empty transcript"):
        read_manifest(m)


def test_unmappable_character_names_file_and_utterance(corpus, cache_dir, tmp_path):
    m = copy_manifest(corpus["dev"], tmp_path / "dev.jsonl",
                      lambda i, r: {**r, "text": r["text"] + " Ω"} if i == 1 else r)
    run = split_params(make_params(corpus, cache_dir, dev_manifest=str(m)))
    with pytest.raises(InputError, match=rf"{m}: utterance 'dev-00001'.*'Ω'.*cannot be mapped"):
        prepare_data(run.data, run.features, progress=False)


@pytest.mark.parametrize("edit, message", [
    ({"duration": float("nan")}, "duration/offset must be finite numbers, got nan/0.0"),
    ({"duration": float("inf")}, "duration/offset must be finite numbers, got inf/0.0"),
    ({"duration": 0}, r"offset must be >= 0 and duration > 0 \(leave duration out .*got offset 0.0, duration 0.0"),
    ({"offset": 0.5, "duration": 60.0}, r"offset 0.5 s \+ duration 60.0 s runs past the end of .*dev-00002.flac"),
])
def test_a_duration_that_is_not_finite_positive_or_runs_past_the_audio_names_the_line(corpus, tmp_path, edit,
                                                                                     message):
    """``data stats`` printed "nan hours"; a segment past the file's end failed later as "unreadable"."""
    m = copy_manifest(corpus["dev"], tmp_path / "dev.jsonl", lambda i, r: {**r, **edit} if i == 2 else r)
    with pytest.raises(InputError, match=rf"{m}:3: {message}"):
        read_manifest(m)


def test_transcripts_are_read_in_nfc_and_a_bom_is_tolerated(corpus, tmp_path):
    """"é" typed as e + combining accent (NFD) is the composed "é" (NFC) of another corpus; a
    manifest saved with a BOM (Windows editors) reads (both were refused)."""
    import unicodedata

    nfd = unicodedata.normalize("NFD", "café")
    assert nfd != "café"
    m = copy_manifest(corpus["dev"], tmp_path / "dev.jsonl", lambda i, r: {**r, "text": nfd} if i == 0 else r)
    m.write_bytes(b"\xef\xbb\xbf" + m.read_bytes())
    man = read_manifest(m)
    assert man.utterances[0].text == "café" and len(man) == 24


def test_skip_bad_skips_and_counts(corpus, tmp_path):
    def edit(i, r):
        if i == 0:
            return {**r, "text": ""}
        if i == 3:
            return {**r, "audio": "/nonexistent.flac"}
        return r

    m = copy_manifest(corpus["dev"], tmp_path / "dev.jsonl", edit)
    man = read_manifest(m, skip_bad=True)
    assert len(man.skipped) == 2 and len(man) == 24 - 2
    assert man.skipped[0].startswith(f"{m}:1:")


def _job(tmp_path, body: str) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(textwrap.dedent(body))
    return p


BASE = """\
family: crnn_ctc
preset: tiny
data: {corpus: demo-mono}
params:
  epochs: 2
search_space:
  lr: {loguniform: [1.0e-4, 1.0e-2]}
"""


def _base_with(changes: dict) -> str:
    """BASE with ``changes`` (dotted key -> value) applied to its parsed YAML (a key to change must be
    there, a new key's parent too: _set raises KeyError otherwise), written in BASE's own layout
    (``params`` and ``search_space`` one line per entry, the rest one line per key), so that the
    line numbers the errors name stay those of BASE."""
    import yaml

    job = yaml.safe_load(BASE)
    for key, value in changes.items():
        new_key = key.endswith("+")
        _set(job, key.rstrip("+"), value, "BASE", must_exist=not new_key)
    lines = []
    for k, v in job.items():
        if k in ("params", "search_space"):
            lines += [f"{k}:", *(f"  {kk}: {_flow(vv)}" for kk, vv in v.items())]
        else:
            lines.append(f"{k}: {_flow(v)}")
    return "\n".join(lines) + "\n"


def test_valid_job_loads(tmp_path):
    job = load_job(_job(tmp_path, BASE))
    assert job.family == "crnn_ctc" and "lr" in job.tune_space()


def test_unknown_key_in_job_names_line_and_key(tmp_path):
    p = _job(tmp_path, _base_with({"params.lstm_hiden+": 128}))  # "+": a key BASE does not have
    with pytest.raises(InputError, match=rf"{p}:6 \(params.lstm_hiden\): unknown key 'lstm_hiden'"):
        load_job(p)
    p = _job(tmp_path, BASE + "shceduler: {name: asha}\n")
    with pytest.raises(InputError, match=rf"{p}:8 \(shceduler\): unknown key 'shceduler'"):
        load_job(p)


@pytest.mark.parametrize("space, message", [
    ("lr: {loguniform: [0.01]}", r"loguniform takes \[low, high\]"),
    ("lr: {loguniform: [0.0, 0.1]}", r"loguniform needs low > 0"),
    ("lr: {uniform: [0.1, 0.01]}", r"uniform needs low < high"),
    ("lr: {normal: [0, 1]}", r"unknown distribution 'normal'"),
    ("lr: 0.001", r"a distribution is one of"),
    ("lstm_layers: {choice: []}", r"choice takes a non-empty list"),
    ("lsmt_layers: {choice: [1, 2]}", r"unknown key 'lsmt_layers'"),
    # every value, not only the first (each case started the search and failed trials mid-way)
    ("lr: {grid: [1.0e-3, -1.0e-2]}", r"value -0.01 of grid \[0.001, -0.01\]: key 'lr' must be > 0"),
    ("lstm_layers: {choice: [2, 0]}", r"value 0 of choice \[2, 0\]: lstm_layers and lstm_hidden must be >= 1"),
    ("lstm_dropout: {uniform: [0.0, 1.5]}", r"value 1.5 of uniform \[0.0, 1.5\]: key 'lstm_dropout' must be in"),
    ("lstm_hidden: {uniform: [64, 256]}", r"'lstm_hidden' takes integers: search it with randint"),
])
def test_malformed_search_space_names_line_and_key(tmp_path, space, message):
    import yaml

    ((name, value),) = yaml.safe_load(space).items()
    p = _job(tmp_path, _base_with({"search_space": {name: value}}))
    with pytest.raises(InputError, match=rf"{p}:7 \(search_space.{name}\): .*{message}"):
        load_job(p)


SEARCH = "search_space:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n"


def test_bad_input_stops_tune_before_any_trial(corpus, cache_dir, tmp_path):
    """The CLI refuses the job (exit 2, message names file:line) and no experiment is created."""
    from tune_jobs.cli import main

    dev = copy_manifest(corpus["dev"], tmp_path / "dev.jsonl",
                        lambda i, r: {**r, "audio": "/nonexistent.flac"} if i == 7 else r)
    job = tiny_job(tmp_path, corpus, cache_dir, "job", SEARCH, edit={"data.dev_manifest": str(dev)})
    assert main(["tune", str(job)]) == 2
    assert not (tmp_path / "exp").exists()


def test_audio_shorter_than_one_window_names_file_and_line_before_any_trial(corpus, cache_dir, tmp_path,
                                                                            ray_address):
    import numpy as np

    from asr_core.train.data import check_data

    dev = with_audio(corpus, tmp_path, 5, np.zeros(160, np.float32) + 0.01)  # 0.01 s
    job = tiny_job(tmp_path, corpus, cache_dir, "job", SEARCH, edit={"data.dev_manifest": str(dev)})
    p = speechtune("tune", str(job), "--address", ray_address)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 2, out[-3000:]
    assert f"error: {dev}:6: audio of utterance 'dev-00005' is 10 ms long, shorter than one analysis window" in out
    assert not (tmp_path / "exp").exists()
    run = split_params(make_params(corpus, cache_dir, dev_manifest=str(dev), skip_bad=True))
    checked = check_data(run.data, run.features, progress=False, parallel=False)
    assert [s for s in checked.skipped if f"{dev}:6:" in s and "shorter than one analysis window" in s]
    assert len(checked.utterances["dev"]) == 23


def test_utterance_longer_than_max_duration_names_file_and_line_before_any_trial(corpus, cache_dir, tmp_path):
    import numpy as np
    import soundfile

    from asr_core.train.data import check_data, duration_limit
    from tune_jobs.cli import main

    x, _ = soundfile.read(str(Path(corpus["dev"]).parent / "audio" / "dev" / "dev-00000.flac"), dtype="float32")
    dev = with_audio(corpus, tmp_path, 2, np.tile(x, int(60 * 16000 / len(x)) + 1))  # over a minute
    job = tiny_job(tmp_path, corpus, cache_dir, "job", SEARCH, edit={"data.dev_manifest": str(dev)})
    assert main(["tune", str(job)]) == 2
    assert not (tmp_path / "exp").exists()
    run = split_params(make_params(corpus, cache_dir, dev_manifest=str(dev), skip_bad=True))
    limit = duration_limit(run.data, run.features, run.train.batch_bins, run.train.batch_size)
    assert limit == 50.0  # 200,000 bins / 40 mels = 5,000 frames of 10 ms
    with pytest.raises(InputError, match=rf"{dev}:3: utterance 'dev-00002' is 6\d\.\d s long, over max_duration 50.0 s"):
        check_data(dataclasses_replace(run.data, skip_bad=False), run.features, progress=False, parallel=False,
                   max_duration=limit)
    checked = check_data(run.data, run.features, progress=False, parallel=False, max_duration=limit)
    assert len(checked.utterances["dev"]) == 23 and [s for s in checked.skipped if "over max_duration" in s]


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_repaired_or_replaced_audio_is_extracted_again(corpus, cache_dir, tmp_path):
    """The feature store's key covers each audio file's size and modification time: a file
    repaired after a --skip-bad run is extracted and its utterance used; a file whose contents
    are replaced gets new features."""
    import numpy as np
    import soundfile

    from asr_core.train.data import prepare_data

    junk = tmp_path / "broken.flac"
    junk.write_bytes(b"not audio at all")
    dev = copy_manifest(corpus["dev"], tmp_path / "dev.jsonl",
                        lambda i, r: {**r, "audio": str(junk)} if i == 4 else r)
    run = split_params(make_params(corpus, cache_dir, dev_manifest=str(dev), skip_bad=True))
    first = prepare_data(run.data, run.features, progress=False)
    assert len(first.dev) == 23 and "dev-00004" not in first.dev.store.index
    src = Path(corpus["dev"]).parent / "audio" / "dev"
    x, sr = soundfile.read(str(src / "dev-00004.flac"), dtype="float32")
    junk.unlink()
    soundfile.write(str(junk), x, sr, format="FLAC")  # repaired
    repaired = prepare_data(run.data, run.features, progress=False)
    assert len(repaired.dev) == 24 and repaired.dev.store.path != first.dev.store.path
    before = repaired.dev.store.feats(repaired.dev.store.index["dev-00004"]).copy()
    y, _ = soundfile.read(str(src / "dev-00009.flac"), dtype="float32")
    soundfile.write(str(junk), y, sr, format="FLAC")  # same path, other contents
    replaced = prepare_data(run.data, run.features, progress=False)
    after = replaced.dev.store.feats(replaced.dev.store.index["dev-00004"])
    assert after.shape != before.shape or not np.array_equal(after, before)
    assert replaced.dev.store.path != repaired.dev.store.path


@pytest.mark.parametrize("line, key, message", [
    ("num_trials: -1", "num_trials", "'num_trials' must be >= 1, got -1"),
    ("num_trials: 0", "num_trials", "'num_trials' must be >= 1, got 0"),
    ("max_concurrent: 0", "max_concurrent", "'max_concurrent' must be >= 1, got 0"),
    ("metric: val_bleu", "metric", "family crnn_ctc does not report 'val_bleu'; it reports: .*val_cer.*val_wer"),
    ("constraints: ['lr < 9**9**8']", "constraints", "an exponent must be a parameter or a number within"),
    ("constraints: ['lr.real < 1']", "constraints", "not allowed in an expression: Attribute"),
    ("keep_checkpoints: 1", "keep_checkpoints", "'keep_checkpoints' is an integer >= 2"),
    # mode against the metric's direction: the worst checkpoint would be selected and tested
    ("mode: max", "mode", r"val_cer is better lower \(mode min\); mode max would select the worst"),
    # require: a metric the family reports, bounds something can meet (else "test evaluation skipped")
    ("require: {val_bleu: {min: 0.5}}", "require.val_bleu", "require: family crnn_ctc does not report 'val_bleu'"),
    ("require: {val_cer: {min: 0.9, max: 0.1}}", "require.val_cer", "require.val_cer: min 0.9 > max 0.1: no trial can meet it"),
    ("require: {val_cer: {max: low}}", "require.val_cer", "require.val_cer.max is a number, got 'low'"),
    # scheduler options by Ray's own rules, before Ray starts (each was a traceback after the data check)
    ("scheduler: {name: asha, grace_period: 5, max_t: 3}", "scheduler.grace_period",
     "scheduler asha refuses .*grace_period must be <= max_t"),
    ("scheduler: {name: asha, max_t: two}", "scheduler.max_t",
     r"scheduler option 'max_t' is a number \(default 100\), got 'two'"),
    ("scheduler: {name: asha, reduction_factor: 1}", "scheduler.reduction_factor",
     "scheduler asha refuses .*Reduction Factor not valid"),
    ("scheduler: {name: promotion, reduction_factor: 1}", "scheduler.reduction_factor",
     "scheduler promotion refuses .*reduction_factor > 1"),
    # bars (analysis.bars): a comparison and a number, a figure the experiment holds, a real phase
    ("bars: {val_cer: about 0.3}", "bars.val_cer", "bars.val_cer: a bar is a comparison and a number"),
    ("bars: {val_bleu: '< 0.3'}", "bars.val_bleu", "bars.val_bleu: unknown figure 'val_bleu'"),
    ("bars: {finetune.gain: '> 0'}", "bars.finetune.gain", "bars.finetune.gain: no phase named 'finetune'"),
])
def test_job_values_are_checked_at_load_naming_line_and_key(tmp_path, line, key, message):
    p = _job(tmp_path, BASE + line + "\n")
    with pytest.raises(InputError, match=rf"{p}:8 \({key}\): {message}"):
        load_job(p)


def test_a_point_to_evaluate_is_parsed_whole_at_load(tmp_path):
    """Each value of a point lay inside the space, but the pair failed the trial mid-search
    (attention_heads 6 does not divide hidden_dim 100); a point is now parsed as a named trial is."""
    p = tmp_path / "point.yaml"
    p.write_text(textwrap.dedent("""\
        family: conformer_aed
        preset: cpu_small
        data: {corpus: demo-mono}
        params: {epochs: 1}
        search_space: {hidden_dim: {choice: [96, 100]}, attention_heads: {choice: [4, 6]}}
        searcher: {name: random, seed: 3, points_to_evaluate: [{hidden_dim: 96, attention_heads: 4},
                                                            {hidden_dim: 100, attention_heads: 6}]}
        """))
    with pytest.raises(InputError, match=rf"{p}:6 \(searcher.points_to_evaluate\): point 1: .*attention_heads.* "
                                         r"\(6\) must divide 'hidden_dim' \(100\)"):
        load_job(p)


def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path):
    """YAML keeps the last of two equal keys: ``family`` twice trained the second family."""
    p = _job(tmp_path, BASE + "family: seq2seq\n")
    with pytest.raises(InputError, match=rf"{p}:8: key 'family' is written twice in one mapping \(first at line 1\)"):
        load_job(p)
    p = _job(tmp_path, BASE.replace("  epochs: 2\n", "  epochs: 2\n  lr: 0.01\n  epochs: 3\n"))
    with pytest.raises(InputError, match=rf"{p}:7: key 'epochs' is written twice .*\(first at line 5\)"):
        load_job(p)


def test_exponent_floats_read_as_numbers_in_a_job_file_and_in_set(tmp_path, capsys):
    """YAML 1.1 (PyYAML's) reads 1e-3 and 1.0e6 as strings: a choice handed trials the string."""
    from tune_jobs.cli import _parse_sets

    p = _job(tmp_path, BASE.replace("{loguniform: [1.0e-4, 1.0e-2]}", "{choice: [1e-3, 3E-3, 1.0e6]}"))
    job = load_job(p)
    assert job.search_space["lr"] == {"choice": [0.001, 0.003, 1e6]}
    assert all(isinstance(v, float) for v in job.search_space["lr"]["choice"])
    assert _parse_sets(["lr=1e-3", "optimizer=adam"]) == {"lr": 0.001, "optimizer": "adam"}


@pytest.mark.parametrize("item, message", [
    ("family=seq2seq", "--set family=seq2seq: 'family' names the run itself: give it as the FAMILY argument"),
    ("preset=small", "'preset' names the run itself: give it as --preset"),
    ("lr=[1, 2", r"--set lr=\[1, 2: not a valid YAML value"),
])
def test_train_set_refuses_the_run_s_own_keys_and_bad_values_before_any_data(tmp_path, capsys, monkeypatch, item,
                                                                            message):
    from tune_jobs.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "crnn_ctc", "--set", item, "--storage", str(tmp_path / "exp")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "exp").exists()


def test_an_unknown_demo_corpus_names_its_line_at_load(tmp_path):
    p = _job(tmp_path, _base_with({"data.corpus": "demo-klingon"}))
    with pytest.raises(InputError, match=rf"{p}:3 \(data.corpus\): unknown demo corpus 'demo-klingon' \(known: demo-mono"):
        load_job(p)


def test_a_preset_typo_names_the_preset_line(tmp_path):
    p = _job(tmp_path, _base_with({"preset": "tinyy"}))
    with pytest.raises(InputError, match=rf"{p}:2 \(preset\): unknown preset for crnn_ctc: tinyy"):
        load_job(p)


@pytest.mark.parametrize("command", ["report", "check"])
def test_report_or_check_on_a_folder_that_is_no_experiment_writes_nothing(tmp_path, capsys, command):
    from tune_jobs.cli import main

    folder = tmp_path / "mine"
    folder.mkdir()
    assert main([command, str(folder)]) == 2  # empty
    (folder / "notes.txt").write_text("my own files")
    assert main([command, str(folder)]) == 2
    assert "not an experiment or study directory" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_skip_bad_covers_every_row_error_prints_each_reason_grouped_and_the_report_lists_them(corpus, cache_dir,
                                                                                            tmp_path, ray_address,
                                                                                            capsys):
    def edit(i, r):
        if i in (1, 2):
            return {**r, "audio": f"/nonexistent/{i}.flac"}
        if i == 3:
            return {**r, "text": " "}
        if i in (4, 5):
            return {**r, "text": r["text"] + " Ω"}  # no training text has it
        return r

    dev = copy_manifest(corpus["dev"], tmp_path / "dev.jsonl", edit)
    job = tiny_job(tmp_path, {**corpus, "dev": str(dev)}, cache_dir, "skips", "num_trials: 1\n", epochs=1)
    from tune_jobs.cli import main

    assert main(["tune", str(job)]) == 2  # refused before Ray starts: in this process
    assert f"{dev}:2: audio file not found" in capsys.readouterr().err
    p = speechtune("tune", str(job), "--address", ray_address, "--skip-bad")
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    assert "--skip-bad: skipped 5 bad row(s):" in out
    assert "  2 x audio file not found: …" in out and "  1 x utterance … has an empty transcript" in out
    assert "  2 x utterance …: character …" in out
    for i in (2, 3, 4):
        assert f"    {dev}:{i}: " in out
    assert out.count("cannot be mapped by the tokenizer") == 2
    report = (tmp_path / "exp" / "skips" / "report.md").read_text()
    assert "- rows skipped (--skip-bad): 5" in report and f"{dev}:4: utterance" in report
    # the whole command's wall time, with the search's, in the record (`speechtune bars` reads it)
    outcome = json.loads((tmp_path / "exp" / "skips" / "speechtune_job.json").read_text())["outcome"]
    assert float(outcome["job wall time"].split()[0]) >= float(outcome["search wall time"].split()[0]) > 0


def test_evaluate_skip_bad_skips_an_unknown_language_tag(corpus, cache_dir, tmp_path):
    import numpy as np

    from asr_core.data.features import FeatureConfig
    from asr_core.data.tokenizer import CharTokenizer
    from asr_core.train.data import dataset_for

    texts = [json.loads(line)["text"] for line in Path(corpus["train"]).read_text().splitlines()]
    tok = CharTokenizer.build(texts, ["en"] * len(texts))
    m = copy_manifest(corpus["test"], tmp_path / "test.jsonl", lambda i, r: {**r, "language": "xx"} if i == 2 else r)
    mean, std = np.zeros(40, np.float32), np.ones(40, np.float32)
    with pytest.raises(InputError, match=rf"{m}: utterance 'test-00002'.*language 'xx' is unknown"):
        dataset_for(read_manifest(m), tok, FeatureConfig(n_mels=40), str(cache_dir), mean, std, True, progress=False)
    skipped: list[str] = []
    data = dataset_for(read_manifest(m), tok, FeatureConfig(n_mels=40), str(cache_dir), mean, std, True,
                       progress=False, skip_bad=True, skipped=skipped)
    assert len(data) == 23 and len(skipped) == 1 and "language 'xx'" in skipped[0]


def test_a_partial_store_entry_is_removed_and_extracted_again(corpus, tmp_path):
    from asr_core.data.features import FeatureConfig, ensure_store, store_key

    m = read_manifest(corpus["dev"])
    cfg = FeatureConfig(n_mels=40)
    entry = tmp_path / "root" / store_key(m, cfg)
    entry.mkdir(parents=True)
    (entry / "part-00000.arrow").write_bytes(b"half a shard from an interrupted extraction")
    (entry / "part-00007.arrow").write_bytes(b"another")
    got, n = ensure_store(m, cfg, str(tmp_path / "root"), progress=False, parallel=False)
    assert got == str(entry) and n == len(m)
    assert not (entry / "part-00007.arrow").exists() and (entry / "index.json").is_file()


def test_report_compare_with_a_folder_that_is_no_experiment_writes_nothing(tmp_path, capsys):
    """`report EXP --compare OTHER` with OTHER no experiment wrote EXP's tables and plots into
    --out and then failed with a traceback; now exit 2 naming OTHER, and --out is not made."""
    from tune_jobs.cli import main

    exp = shutil.copytree(Path(__file__).parent / "data" / "record_v0", tmp_path / "rate")
    (tmp_path / "mine").mkdir()
    out = tmp_path / "out"
    assert main(["report", str(exp), "--compare", str(tmp_path / "mine"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'mine'}: not an experiment or study directory" in err, err
    assert not out.exists() and sorted(p.name for p in (tmp_path / "mine").iterdir()) == []


@pytest.mark.parametrize("record", ["{}", "[1, 2]", '{"job": "crnn"}', '{"job": {'])
def test_resume_of_a_folder_whose_record_holds_no_job_names_the_record(tmp_path, capsys, record):
    """`tune --resume EXP` whose speechtune_job.json is `{}` was a KeyError traceback."""
    from tune_jobs.cli import main

    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "speechtune_job.json").write_text(record)
    assert main(["tune", "--resume", str(exp)]) == 2
    err = capsys.readouterr().err
    assert f"{exp / 'speechtune_job.json'}: " in err and ("holds no job" in err or "not JSON" in err), err
    assert sorted(p.name for p in exp.iterdir()) == ["speechtune_job.json"]
    assert (exp / "speechtune_job.json").read_text() == record


def test_decode_tune_of_an_experiment_whose_manifests_are_elsewhere_exits_2_naming_it(tmp_path, capsys):
    """Library code raises InputError; only the command line turns it into exit 2 (decode-tune
    raised SystemExit from the library, exit 1). tests/data/record_v0's manifests were on
    another machine; nothing starts."""
    from tune_jobs.cli import main

    exp = shutil.copytree(Path(__file__).parent / "data" / "record_v0", tmp_path / "rate")
    assert main(["decode-tune", str(exp)]) == 2
    err = capsys.readouterr().err
    assert f"error: {exp}: the train manifest" in err and "is not on this machine" in err


def test_resources_from_the_command_line_or_the_job_file_are_checked_before_anything_runs(corpus, cache_dir,
                                                                                          tmp_path, capsys):
    """`--workers -1` skipped the job file's checks (it was set after them); `cpus_per_worker: 0`
    failed in Ray with a traceback. Both are refused at load, naming the option or the line."""
    from tune_jobs.cli import main

    job = tiny_job(tmp_path, corpus, cache_dir, "res")
    assert main(["tune", str(job), "--workers", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--workers" in err and "'num_workers' must be >= 1" in err
    zero = tiny_job(tmp_path, corpus, cache_dir, "zero", edit={"resources.cpus_per_worker": 0})
    with pytest.raises(InputError, match=r"zero.yaml:9 \(resources.cpus_per_worker\): "
                                         r"key .cpus_per_worker. must be > 0"):
        load_job(zero)
    assert main(["train", "crnn_ctc", "--cpus-per-worker", "0", "--storage", str(tmp_path / "exp")]) == 2
    assert "'cpus_per_worker' must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()  # nothing was started or written


@pytest.mark.parametrize("under", ["", "sub"])
def test_a_storage_path_that_cannot_be_written_is_refused_before_anything_runs(tmp_path, capsys, under):
    """A storage_path that is a file (or below one) was a traceback after Ray started and the data
    were checked; now exit 2 naming it, before any data are made or Ray starts."""
    from tune_jobs.cli import main

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("mine\n")
    storage = blocker / under if under else blocker
    job = _job(tmp_path, BASE)
    assert main(["tune", str(job), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert f"{job} (storage_path): {storage} cannot be written" in err and "nothing was run" in err, err
    assert blocker.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml", "not_a_folder"]


def test_a_storage_path_where_no_folder_can_be_made_is_refused_before_anything_runs(tmp_path, capsys):
    """Under /proc root passes every mode check, yet nothing can be made there: Ray failed at its
    first folder with a traceback (seen in a submitted job)."""
    from tune_jobs.cli import main

    job = _job(tmp_path, BASE)
    assert main(["tune", str(job), "--storage", "/proc/speechtune-exp"]) == 2
    err = capsys.readouterr().err
    assert "/proc/speechtune-exp cannot be written: no folder can be made in /proc" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]


@pytest.mark.parametrize("case", ["no endpoint", "no bucket", "bad credentials"])
def test_an_object_storage_that_cannot_be_written_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch,
                                                                                 s3_server, case):
    """`s3://` storage with no reachable endpoint, a bucket that is not there, or credentials the
    server refuses, was a traceback after Ray started and the data were checked; now exit 2
    naming it, before any data are made."""
    import socket
    import subprocess
    import sys

    from tests.factories import free_port, wait_for
    from tune_jobs.cli import main

    env, _ = s3_server
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    storage, why, server = "s3://speech/exp", "", None
    if case == "no endpoint":  # nothing listens there: pyarrow's retries, then the error
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    elif case == "no bucket":
        storage, why = "s3://no-such-bucket/exp", "Bucket 'no-such-bucket' not found"
    else:  # a server of its own that checks credentials (moto's IAM checks from the first request)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  env={**env, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def accepts() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(accepts, 60, "the credential-checking S3 server")
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
        why = "ACCESS_DENIED"
    try:
        job = _job(tmp_path, BASE)
        assert main(["tune", str(job), "--storage", storage]) == 2
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    err = capsys.readouterr().err
    assert f"{job} (storage_path): {storage} cannot be written (" in err and "nothing was run" in err, err
    assert why in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]


def test_a_read_only_storage_path_is_refused_before_anything_runs(tmp_path):
    """A read-only storage (a read-only tmpfs mounted in the command's own namespace: root writes
    through file modes) ended the search at its first checkpoint; now exit 2 naming it."""
    import subprocess
    import sys

    from tests.factories import unshare_works

    why = unshare_works()
    if why:
        pytest.skip(why)
    ro = tmp_path / "ro"
    ro.mkdir()
    job = _job(tmp_path, BASE)
    cli = f"{sys.executable} -m tune_jobs.cli tune {job} --storage {ro / 'exp'}"
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        f"mount -t tmpfs -o ro none {ro} && exec {cli}"], capture_output=True, text=True)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"{ro / 'exp'} cannot be written: {ro} is read-only; nothing was run" in p.stderr, p.stderr
