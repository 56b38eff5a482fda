"""Importers: one small corpus per format, written by the test as real files in that format from
the synthesized eSpeak audio; a bad row is an error naming file and line, or skipped and counted
with --skip-bad; `data stats` agrees with a hand count; imported segments extract the right
number of frames."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr_core.data.features import FeatureConfig, load_features
from asr_core.data.manifest import read_manifest
from asr_core.errors import InputError
from tune_jobs.cli import main


def _utts(corpus, n: int, split: str = "train") -> list[dict]:
    base = Path(corpus[split]).parent
    rows = [json.loads(l) for l in Path(corpus[split]).read_text().splitlines()][:n]
    for r in rows:
        r["audio"] = str((base / r["audio"]).resolve())
    return rows


def _kaldi_dir(corpus, d: Path, bad: str = "") -> tuple[Path, list[dict]]:
    """Two recordings, each three corpus utterances end to end with 0.25 s of silence between;
    ``segments`` cuts them out again. Returns the folder and the expected segments."""
    rows = _utts(corpus, 6)
    d.mkdir(parents=True, exist_ok=True)
    wav_scp, segments, text, utt2spk, expected = [], [], [], [], []
    for r in range(2):
        parts, t = [], 0.0
        for k in range(3):
            u = rows[3 * r + k]
            x, sr = soundfile.read(u["audio"], dtype="float32")
            uid = f"rec{r}-{k}"
            segments.append(f"{uid} rec{r} {t:.4f} {t + len(x) / sr:.4f}")
            text.append(f"{uid} {u['text']}")
            utt2spk.append(f"{uid} spk{r}")
            expected.append({"id": uid, "offset": round(t, 4), "duration": len(x) / sr, "text": u["text"]})
            parts += [x, np.zeros(sr // 4, np.float32)]
            t += len(x) / sr + 0.25
        soundfile.write(str(d / f"rec{r}.wav"), np.concatenate(parts), 16000)
        wav_scp.append(f"rec{r} rec{r}.wav")  # relative: against the data directory
    if bad == "segment":
        segments[4] = "rec1-1 rec1 3.0"
    (d / "wav.scp").write_text("\n".join(wav_scp) + "\n")
    (d / "segments").write_text("\n".join(segments) + "\n")
    (d / "text").write_text("\n".join(text) + "\n")
    (d / "utt2spk").write_text("\n".join(utt2spk) + "\n")
    return d, expected


def test_kaldi_directory_with_segments_imports_and_extracts_each_segment(corpus, tmp_path, capsys):
    d, expected = _kaldi_dir(corpus, tmp_path / "data" / "train")
    out = tmp_path / "train.jsonl"
    assert main(["data", "import", "kaldi", str(d), str(out)]) == 0
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [e["id"] for e in expected]
    for r, e in zip(rows, expected):
        assert r["text"] == e["text"] and r["speaker"] == e["id"][:4].replace("rec", "spk")
        assert r.get("offset", 0.0) == pytest.approx(e["offset"], abs=1e-4)
        assert r["duration"] == pytest.approx(e["duration"], abs=1e-4)
        assert r["audio"] == str(d / f"{e['id'][:4]}.wav")
    # a job may name the directory itself; features follow the segment times
    m = read_manifest(f"kaldi:{d}")
    store = load_features(m, FeatureConfig(n_mels=40), tmp_path / "cache", progress=False)
    for e in expected:
        frames = int(store.num_frames[store.index[e["id"]]])
        assert abs(frames - (e["duration"] * 100 - 1.5)) <= 2, (e, frames)  # 25 ms windows, 10 ms shift

    # a segment line with a missing field: file and line named; --skip-bad skips and counts it
    bad, _ = _kaldi_dir(corpus, tmp_path / "data" / "bad", bad="segment")
    with pytest.raises(InputError, match=rf"{bad / 'segments'}:5: expected '<utt> <recording> <start> <end>'"):
        read_manifest(f"kaldi:{bad}")
    assert main(["data", "import", "kaldi", str(bad), str(tmp_path / "b.jsonl"), "--skip-bad"]) == 0
    said = capsys.readouterr().out
    assert "5 utterances" in said and "skipped 1 bad row(s)" in said and "segments:5" in said


def test_kaldi_pipe_runs_only_when_allowed(corpus, tmp_path, capsys):
    d, _ = _kaldi_dir(corpus, tmp_path / "data")
    (d / "wav.scp").write_text(f"rec0 cat {d / 'rec0.wav'} |\nrec1 rec1.wav\n")
    assert main(["data", "import", "kaldi", str(d), str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{d / 'wav.scp'}:1" in err and "pipe command" in err and "--allow-pipes" in err
    assert main(["data", "import", "kaldi", str(d), str(tmp_path / "x.jsonl"), "--allow-pipes"]) == 0
    rows = [json.loads(l) for l in (tmp_path / "x.jsonl").read_text().splitlines()]
    piped = Path(rows[0]["audio"])
    assert piped.parent == tmp_path / "x_audio" and piped.read_bytes() == (d / "rec0.wav").read_bytes()


def test_nemo_manifest_imports_with_offsets_and_names_a_bad_line(corpus, tmp_path, capsys):
    rows = _utts(corpus, 4)
    lines = [json.dumps({"audio_filepath": r["audio"], "duration": r["duration"], "text": r["text"], "lang": "en"})
             for r in rows]
    lines.append(json.dumps({"audio_filepath": rows[0]["audio"], "offset": 0.2, "duration": 0.5, "text": "the cat"}))
    src = tmp_path / "nemo.json"
    src.write_text("\n".join(lines) + "\n")
    m = read_manifest(f"nemo:{src}")
    assert len(m) == 5 and m.utterances[4].offset == 0.2 and m.utterances[4].duration == 0.5
    assert m.utterances[0].id == Path(rows[0]["audio"]).stem and m.utterances[0].language == "en"
    store = load_features(m, FeatureConfig(n_mels=40), tmp_path / "cache", progress=False)
    assert abs(int(store.num_frames[store.index[m.utterances[4].id]]) - 48) <= 1  # 0.5 s
    src.write_text("\n".join(lines[:2] + [json.dumps({"duration": 1.0, "text": "x"})] + lines[2:]) + "\n")
    with pytest.raises(InputError, match=rf"{src}:3: missing key 'audio_filepath'"):
        read_manifest(f"nemo:{src}")
    assert main(["data", "import", "nemo", str(src), str(tmp_path / "n.jsonl"), "--skip-bad"]) == 0
    assert "5 utterances" in capsys.readouterr().out


def test_lhotse_cutset_imports_through_lhotse(corpus, tmp_path, capsys):
    from lhotse import CutSet, Recording, SupervisionSegment
    from lhotse.cut import MonoCut

    cuts = []
    for r in _utts(corpus, 4):
        rec = Recording.from_file(r["audio"], recording_id=r["id"])
        sup = SupervisionSegment(id=r["id"], recording_id=r["id"], start=0.0, duration=rec.duration, text=r["text"],
                                 language="en", speaker=r["speaker"])
        cuts.append(MonoCut(id=r["id"], start=0.0, duration=rec.duration, channel=0, recording=rec,
                            supervisions=[sup]))
    src = tmp_path / "cuts.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(src)
    m = read_manifest(f"lhotse:{src}")
    assert [u.id for u in m.utterances] == [c.id for c in cuts]
    assert m.utterances[1].speaker == cuts[1].supervisions[0].speaker and m.utterances[1].text == cuts[1].supervisions[0].text
    plain = tmp_path / "cuts.jsonl"
    CutSet.from_cuts(cuts).to_file(plain)
    lines = plain.read_text().splitlines()
    plain.write_text("\n".join(lines[:2] + ['{"id": "broken", "type": "MonoCut"}'] + lines[2:]) + "\n")
    with pytest.raises(InputError, match=rf"{plain}:3: not a lhotse cut"):
        read_manifest(f"lhotse:{plain}")
    assert main(["data", "import", "lhotse", str(plain), str(tmp_path / "l.jsonl"), "--skip-bad"]) == 0
    said = capsys.readouterr().out
    assert "4 utterances" in said and "skipped 1 bad row(s)" in said


def test_hf_saved_dataset_and_audio_folder_import(corpus, tmp_path, capsys):
    import datasets

    rows = _utts(corpus, 4)
    ds = datasets.Dataset.from_dict({"audio": [r["audio"] for r in rows], "sentence": [r["text"] for r in rows]})
    ds = ds.cast_column("audio", datasets.Audio())
    ds.save_to_disk(str(tmp_path / "saved"))
    out = tmp_path / "hf.jsonl"
    # the saved dataset embeds the audio as bytes: import writes them out as files
    assert main(["data", "import", "hf", str(tmp_path / "saved"), str(out), "--text-column", "sentence"]) == 0
    got = [json.loads(l) for l in out.read_text().splitlines()]
    assert [g["text"] for g in got] == [r["text"] for r in rows]
    assert soundfile.read(got[2]["audio"])[0].shape == soundfile.read(rows[2]["audio"])[0].shape
    assert main(["data", "import", "hf", str(tmp_path / "saved"), str(out), "--force"]) == 2  # no column 'text'
    assert "no column 'text'" in capsys.readouterr().err

    folder = tmp_path / "folder"
    folder.mkdir()
    with open(folder / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "transcription"])
        for i, r in enumerate(rows):
            name = f"u{i}.flac"
            (folder / name).write_bytes(Path(r["audio"]).read_bytes())
            w.writerow([name, r["text"] if i != 1 else ""])
    with pytest.raises(InputError, match=rf"{folder / 'metadata.csv'}:3: utterance 'u1' has an empty transcript"):
        read_manifest(f"hf:{folder}", text_column="transcription")
    m = read_manifest(f"hf:{folder}", text_column="transcription", skip_bad=True)
    assert len(m) == 3 and len(m.skipped) == 1


def test_commonvoice_release_with_mp3_clips(corpus, tmp_path, capsys):
    rows = _utts(corpus, 5)
    root = tmp_path / "cv-corpus" / "en"
    (root / "clips").mkdir(parents=True)
    header = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
              "gender", "accents", "variant", "locale", "segment"]
    lines, durations = ["\t".join(header)], ["clip\tduration[ms]"]
    for i, r in enumerate(rows):
        x, sr = soundfile.read(r["audio"], dtype="float32")
        clip = f"common_voice_en_{i:04d}.mp3"
        soundfile.write(str(root / "clips" / clip), x, sr, format="MP3")
        text = r["text"] if i != 3 else 'he said "stop" again'  # quotes stay as they are (QUOTE_NONE)
        lines.append("\t".join([f"client{i % 2}", clip, f"s{i}", text, "", "2", "0", "", "", "", "", "en", ""]))
        durations.append(f"{clip}\t{round(1000 * len(x) / sr)}")
    lines.append("client9\tbroken.mp3\tonly three")
    (root / "train.tsv").write_text("\n".join(lines) + "\n")
    (root / "clip_durations.tsv").write_text("\n".join(durations) + "\n")
    with pytest.raises(InputError, match=rf"{root / 'train.tsv'}:7: expected 13 tab-separated columns, got 3"):
        read_manifest(f"commonvoice:{root}")
    m = read_manifest(f"commonvoice:{root}", skip_bad=True)
    assert len(m) == 5 and len(m.skipped) == 1
    assert m.utterances[3].text == 'he said "stop" again' and {u.speaker for u in m.utterances} == {"client0",
                                                                                                     "client1"}
    assert m.utterances[0].duration == pytest.approx(rows[0]["duration"], abs=1e-3)
    store = load_features(m, FeatureConfig(n_mels=40), tmp_path / "cache", progress=False)  # mp3 decodes
    assert len(store) == 5 and store.num_frames.min() > 50


def test_data_stats_equals_a_hand_count(corpus, tmp_path, capsys):
    rows = [json.loads(l) for l in Path(corpus["dev"]).read_text().splitlines()]
    base = Path(corpus["dev"]).parent
    seconds = sum(soundfile.info(str(base / r["audio"])).duration for r in rows)
    assert main(["data", "stats", corpus["dev"]]) == 0
    out = capsys.readouterr().out
    assert f"{len(rows)} utterances, {seconds / 3600:.3f} hours ({seconds:.1f} s)" in out, out
    assert f"speakers: {len({r['speaker'] for r in rows})}" in out
    chars = sorted(set("".join(r["text"] for r in rows)))
    assert f"characters ({len(chars)}): {''.join(chars)!r}" in out
    median = float(np.median([r["duration"] for r in rows]))
    assert f"median {median:.2f}" in out and "languages: en 24" in out
    assert not math.isnan(seconds)


def test_import_never_overwrites_its_source_nor_an_existing_manifest_without_force(corpus, tmp_path, capsys):
    """``data import nemo a.json a.json`` destroyed a.json; an existing OUT was replaced silently;
    an OUT that is a folder left a temporary file behind."""
    rows = _utts(corpus, 3)
    src = tmp_path / "a.json"
    src.write_text("".join(json.dumps({"audio_filepath": r["audio"], "duration": r["duration"], "text": r["text"]})
                           + "\n" for r in rows))
    before = src.read_bytes()
    assert main(["data", "import", "nemo", str(src), str(src)]) == 2
    assert main(["data", "import", "nemo", str(src), str(src), "--force"]) == 2
    assert "OUT is the source itself" in capsys.readouterr().err and src.read_bytes() == before
    out = tmp_path / "out.jsonl"
    out.write_text("mine\n")
    assert main(["data", "import", "nemo", str(src), str(out)]) == 2
    assert "exists: give another OUT, or --force" in capsys.readouterr().err and out.read_text() == "mine\n"
    assert main(["data", "import", "nemo", str(src), str(out), "--force"]) == 0
    assert len(out.read_text().splitlines()) == 3
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main(["data", "import", "nemo", str(src), str(folder)]) == 2
    assert "OUT is a folder" in capsys.readouterr().err and list(folder.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "folder", "out.jsonl"]  # no temporary file
