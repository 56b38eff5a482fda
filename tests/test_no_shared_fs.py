"""A cluster whose nodes share no disk, on this machine: a Ray head that offers no CPU for trials,
and a worker node started in its own mount namespace with an empty tmpfs over every directory
the driver writes (cache, corpora, experiments, temp). The two share nothing but a moto
S3 server on 127.0.0.1, as a KubeRay or cloud cluster shares nothing but object storage."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.factories import edited_job, free_port, stop_process_tree, unshare_works, wait_for
from tune_jobs.runner import resolve_data
from tune_jobs.spec import load_job

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")

pytestmark = pytest.mark.ray  # every test here starts Ray (a process, a cluster)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, s3_server, cache_dir):
    why = unshare_works()
    if why:
        pytest.skip(why)
    import ray

    if ray.is_initialized():
        ray.shutdown()
    env_s3, s3 = s3_server
    port = free_port()
    # loopback test cluster: Ray's token authentication off for its own processes (DEVELOPERS.md)
    env = {**os.environ, **env_s3, "RAY_AUTH_MODE": "disabled"}
    logs = tmp_path_factory.mktemp("nodes")
    # its own temp dir: the default one would leave /tmp/ray/ray_current_cluster behind, which a
    # later plain ray.init() on this machine would try to join
    temp = tempfile.mkdtemp(prefix="st-head-", dir="/tmp")
    head = subprocess.Popen([RAY, "start", "--head", "--num-cpus", "0", "--port", str(port), "--block",
                             "--include-dashboard", "false", "--node-ip-address", "127.0.0.1",
                             f"--temp-dir={temp}", "--disable-usage-stats"], env=env, stdout=open(logs / "head.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    # The worker node and every process its raylet starts see an empty, private copy of every
    # directory the driver writes: pytest's base temp (the cache with its corpora and features,
    # the experiments, and the driver's TMPDIR, see _tune; the session's cache, beside it when
    # pytest-xdist runs several workers) and the head node's Ray temp dir; and
    # a /tmp/ray of its own. The code and the virtual environment stay visible, as a node's
    # image has them (they may live under /tmp in a fresh clone, so /tmp itself is not hidden).
    hidden = [str(tmp_path_factory.getbasetemp()), str(cache_dir), temp, "/tmp/ray"]
    mounts = " && ".join(f"mkdir -p {d} && mount -t tmpfs none {d}" for d in hidden)
    worker = subprocess.Popen(["unshare", "-m", "--propagation", "private", "bash", "-c",
                               f"{mounts} && exec {RAY} start --address 127.0.0.1:{port} "
                               "--num-cpus 2 --block --disable-usage-stats"],
                              env=env, stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        def started() -> bool:  # both `ray start`s say so once their node is up (a probe before costs a Ray client)
            assert head.poll() is None and worker.poll() is None, (logs / "head.log").read_text()[-2000:] + \
                (logs / "worker.log").read_text()[-2000:]
            return all("Ray runtime started" in (logs / f).read_text() for f in ("head.log", "worker.log"))

        wait_for(started, 120, "the head and the worker node starting")
        probe = [sys.executable, "-c", f"import ray; ray.init(address='127.0.0.1:{port}', logging_level='ERROR');"
                 "import sys; sys.stdout.write(str(ray.cluster_resources().get('CPU', 0)))"]
        deadline = time.time() + 120
        while time.time() < deadline:  # until the worker node has registered its CPUs
            out = subprocess.run(probe, env=env, capture_output=True, text=True).stdout
            if out.strip() == "2.0":
                break
            assert head.poll() is None and worker.poll() is None, (logs / "head.log").read_text()[-2000:] + \
                (logs / "worker.log").read_text()[-2000:]
        else:
            pytest.fail("the worker node did not join: " + (logs / "worker.log").read_text()[-2000:])
        yield f"127.0.0.1:{port}", env, s3
    finally:
        stop_process_tree(worker)
        stop_process_tree(head)
        shutil.rmtree(temp, ignore_errors=True)


def _cli(*args, env, cwd) -> subprocess.CompletedProcess:
    tmp = Path(cwd) / "driver-tmp"  # the driver's temp files, hidden from the worker node with the rest
    tmp.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "tune_jobs.cli", *args], env={**env, "TMPDIR": str(tmp)},
                          cwd=cwd, capture_output=True, text=True, timeout=600)


def _upload(s3, local: Path, prefix: str) -> None:
    for f in sorted(local.rglob("*")):
        if f.is_file():
            s3.upload_file(str(f), "speech", f"{prefix}/{f.relative_to(local)}")


def _kaldi_corpus(corpus: dict, out: Path) -> None:
    """train and dev Kaldi data directories: recordings of four corpus utterances each, with
    ``segments`` cutting them out, relative wav.scp paths, utt2spk."""
    for split, n in (("train", 48), ("dev", 12)):
        base = Path(corpus[split]).parent
        rows = [json.loads(l) for l in Path(corpus[split]).read_text().splitlines()][:n]
        d = out / split
        d.mkdir(parents=True)
        wav, seg, text, spk = [], [], [], []
        for r in range(n // 4):
            parts, t = [], 0.0
            for k, u in enumerate(rows[4 * r: 4 * r + 4]):
                x, sr = soundfile.read(str(base / u["audio"]), dtype="float32")
                uid = f"{split}-r{r:02d}-{k}"
                seg.append(f"{uid} rec{r:02d} {t:.3f} {t + len(x) / sr:.3f}")
                text.append(f"{uid} {u['text']}")
                spk.append(f"{uid} {u['speaker']}")
                parts += [x, np.zeros(sr // 5, np.float32)]
                t += len(x) / sr + 0.2
            soundfile.write(str(d / f"rec{r:02d}.flac"), np.concatenate(parts), 16000)
            wav.append(f"rec{r:02d} rec{r:02d}.flac")
        for name, lines in (("wav.scp", wav), ("segments", seg), ("text", text), ("utt2spk", spk)):
            (d / name).write_text("\n".join(lines) + "\n")


@pytest.mark.timeout(900)
def test_demo_and_a_kaldi_corpus_run_on_nodes_that_share_only_object_storage(two_nodes, corpus, cache_dir, tmp_path):
    address, env, s3 = two_nodes
    env = {**env, "SPEECHTUNE_CACHE": str(tmp_path / "cache")}  # under pytest's base temp: hidden from the worker
    demo = str(ROOT / "tune_jobs" / "jobs" / "demo.yaml")
    # the driver's cache holds the smoke profile's corpus, as it would after a first run: a copy of
    # the session's (synthesized once for every test that runs the smoke profile)
    smoke = resolve_data(load_job(demo, profile="smoke"), cache_dir=str(cache_dir))
    corpus_dir = Path(smoke["train"]).parent
    shutil.copytree(corpus_dir, tmp_path / "cache" / "corpora" / corpus_dir.name)
    # the worker node (the only one with CPUs) cannot see the driver's files
    seen = subprocess.run([sys.executable, "-c", f"import os, ray; ray.init(address='{address}', logging_level='ERROR');"
                           f"print(ray.get(ray.remote(num_cpus=1)(os.path.exists).remote({corpus['train']!r})))"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert Path(corpus["train"]).is_file() and seen.stdout.strip().splitlines()[-1] == "False", seen.stdout + seen.stderr

    # (a) the demo's smoke profile, experiment in S3: the driver publishes the synthesized corpus,
    # Ray tasks on the worker node extract the features into S3, the trials train there
    p = _cli("tune", demo, "--profile", "smoke", "--address", address, "--storage", "s3://speech/exps", env=env,
             cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    assert "search finished" in p.stdout and "2 trials, 0 failed" in p.stdout, p.stdout[-3000:]
    assert not (tmp_path / "experiments").exists()
    report = s3.get_object(Bucket="speech", Key="exps/demo/report.md")["Body"].read().decode()
    assert report.count("| finished |") + report.count("| early-stopped |") == 2, report
    assert "test CER" in report and "- test decoding: decoder greedy" in report  # which decoder gave the figure
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="speech", Prefix="exps/")["Contents"]]
    assert any(k.startswith("exps/corpora/demo-mono-") and k.endswith(".flac") for k in keys)
    assert any(k.startswith("exps/features/") and "/part-" in k for k in keys)
    history = [json.loads(l) for k in keys if k.endswith("/result.json")
               for l in s3.get_object(Bucket="speech", Key=k)["Body"].read().decode().splitlines() if l.strip()]
    assert history and {h["num_nodes"] for h in history} == {1}
    assert any(k.startswith("exps/demo/") and "/checkpoint_" in k for k in keys)
    # `report` reads the experiment back from S3 (here, on the driver's machine) and ranks it as
    # the search's own report did; the live view reads it too: every trial, its status, the metric
    r = _cli("report", "s3://speech/exps/demo", "--out", str(tmp_path / "rep"), env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "rep" / "report.md").read_text().split("## Ranking")[1] == report.split("## Ranking")[1]
    w = _cli("watch", "s3://speech/exps/demo", "--once", env={**env, "COLUMNS": "200"}, cwd=tmp_path)
    assert w.returncode == 0 and "2 done, 0 running, 0 pending of 2" in w.stdout and "val_cer now" in w.stdout, w.stdout
    assert w.stdout.count("finished") + w.stdout.count("early-stopped") == 2, w.stdout

    # (b) a Kaldi corpus with segments, uploaded to S3, named directly in the job file
    _kaldi_corpus(corpus, tmp_path / "kaldi")
    _upload(s3, tmp_path / "kaldi", "corpora/kaldi")
    job = tmp_path / "kaldi.yaml"
    job.write_text(f"""\
name: kaldi_s3
family: crnn_ctc
preset: tiny
data: {{train_manifest: "kaldi:s3://speech/corpora/kaldi/train", dev_manifest: "kaldi:s3://speech/corpora/kaldi/dev"}}
params: {{epochs: 2, n_mels: 40, batch_bins: 200000}}
search_space: {{lr: {{grid: [4.0e-3]}}}}
searcher: {{name: grid}}
metric: val_cer
max_concurrent: 2
resources: {{num_workers: 1, cpus_per_worker: 1}}
storage_path: s3://speech/exps
""")
    k = _cli("tune", str(job), "--address", address, env=env, cwd=tmp_path)
    assert k.returncode == 0, k.stdout[-4000:] + k.stderr[-4000:]
    assert "1 trials, 0 failed" in k.stdout, k.stdout[-3000:]
    kreport = s3.get_object(Bucket="speech", Key="exps/kaldi_s3/report.md")["Body"].read().decode()
    assert kreport.count("| finished |") == 1, kreport

    # (c) the same job with a local storage path: refused before any trial, naming the key
    local = tmp_path / "local.yaml"
    edited_job(job, local, {"name": "kaldi_local", "storage_path": str(tmp_path / "exp")})
    c = _cli("tune", str(local), "--address", address, env=env, cwd=tmp_path)
    assert c.returncode == 2, c.stdout[-3000:] + c.stderr[-3000:]
    assert f"{local}: storage_path" in c.stderr and "object storage" in c.stderr, c.stderr
    assert not (tmp_path / "exp").exists()
    assert not [o for o in s3.list_objects_v2(Bucket="speech", Prefix="exps/kaldi_local").get("Contents", [])]
