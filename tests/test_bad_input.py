"""Bad input fails before any trial starts, naming file and line or key; --skip-bad skips it."""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from asr_core.data.manifest import read_manifest
from asr_core.errors import InputError
from asr_core.train.config import split_params
from asr_core.train.data import prepare_data
from tests.conftest import copy_manifest, make_params
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


def test_valid_job_loads(tmp_path):
    job = load_job(_job(tmp_path, BASE))
    assert job.family == "crnn_ctc" and "lr" in job.tune_space()


def test_unknown_key_in_job_names_line_and_key(tmp_path):
    p = _job(tmp_path, BASE.replace("  epochs: 2", "  epochs: 2\n  lstm_hiden: 128"))
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
])
def test_malformed_search_space_names_line_and_key(tmp_path, space, message):
    p = _job(tmp_path, BASE.replace("  lr: {loguniform: [1.0e-4, 1.0e-2]}", "  " + space))
    name = space.split(":")[0]
    with pytest.raises(InputError, match=rf"{p}:7 \(search_space.{name}\): .*{message}"):
        load_job(p)


def test_bad_input_stops_tune_before_any_trial(corpus, tmp_path):
    """The CLI refuses the job (exit 2, message names file:line) and no experiment is created."""
    from tune_jobs.cli import main

    dev = copy_manifest(corpus["dev"], tmp_path / "dev.jsonl",
                        lambda i, r: {**r, "audio": "/nonexistent.flac"} if i == 7 else r)
    job = _job(tmp_path, BASE.replace("data: {corpus: demo-mono}",
                                      f"data: {{train_manifest: {corpus['train']}, dev_manifest: {dev}}}")
               + f"storage_path: {tmp_path / 'exp'}\n")
    assert main(["tune", str(job)]) == 2
    assert not (tmp_path / "exp").exists()
