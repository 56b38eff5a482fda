"""Clusters: the local head (`speechtune cluster up/status/down`) with job submission through the
Jobs API and token authentication, two Ray nodes on this machine with a trial's DDP workers
spread across them and one node removed mid-search, and the shipped cluster configs and Docker
files checked against what the launcher, KubeRay and Docker need."""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from tests.factories import (TRAIN_WORKER, free_port, freeze_ray_workers, speechtune, stop_process_tree, tiny_job,
                             wait_while_running)

ROOT = Path(__file__).resolve().parents[1]


def _st(*args, env, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tune_jobs.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def _gcs_servers(home: Path) -> set[int]:
    """GCS servers started for this SPEECHTUNE_HOME (not the shared test head's, nor another test's)."""
    found = set()
    for p in psutil.process_iter(["name"]):
        try:
            if p.info["name"] == "gcs_server" and p.environ().get("SPEECHTUNE_HOME") == str(home):
                found.add(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_submit_uploads_no_untracked_data_and_refuses_an_upload_over_its_limit(tmp_path, monkeypatch):
    """`submit` from a checkout holding 179 MB of local data (neither tracked nor ignored) failed
    with "FAILED" and no reason: Ray's upload limit. Untracked folders and untracked files that
    are not source now stay behind, measured with Ray's own traversal; an upload over the limit is
    refused before anything is sent, naming its largest entries. A real git checkout."""
    from asr_core.errors import InputError
    from cluster.jobs import check_upload, upload_excludes, upload_size

    root = tmp_path / "checkout"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "model.py").write_text("x = 1\n")
    (root / ".gitignore").write_text("ignored.bin\n")
    for cmd in (["init", "-q"], ["add", "."], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "c"]):
        subprocess.run(["git", "-C", str(root), *cmd], check=True)
    (root / "pkg" / "new_family.py").write_text("y = 2\n")  # not committed yet: still travels
    (root / "local_data").mkdir()
    (root / "local_data" / "utt [1].flac").write_bytes(os.urandom(3 << 20))
    (root / "notes.wav").write_bytes(os.urandom(1 << 20))
    (root / "ignored.bin").write_bytes(os.urandom(1 << 20))
    excludes = upload_excludes(root)
    total, sizes = upload_size(root, excludes)
    assert "/local_data/" in excludes and "/notes.wav" in excludes and "/pkg/new_family.py" not in excludes
    assert sizes == {"pkg": 12, ".gitignore": 12}, sizes
    assert upload_size(root, [])[1]["local_data"] == 3 << 20  # what went up before
    monkeypatch.setenv("SPEECHTUNE_UPLOAD_LIMIT_MB", "3")
    (root / "pkg" / "weights.yaml").write_bytes(b"w: 0\n" * (800 << 10))  # 4 MB of "source"
    with pytest.raises(InputError, match=r"would upload 3\.9 MiB, over the 3 MiB limit .*largest: pkg \(3\.9 MiB\)"):
        check_upload(root, upload_excludes(root))


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_cluster_up_submit_logs_report_down_with_token_auth(tmp_path, cache_dir, ray_start_2_cpus):
    ray = ray_start_2_cpus  # another Ray on this machine (this test process's): `down` must leave it alone
    home, port = tmp_path / "home", free_port()
    env = {**os.environ, "SPEECHTUNE_HOME": str(home), "SPEECHTUNE_CACHE": str(cache_dir)}
    for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE"):
        env.pop(k, None)
    url = f"http://127.0.0.1:{port}"
    p = _st("cluster", "up", "--num-cpus", "2", "--dashboard-port", str(port), env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    state = json.loads((home / "cluster" / "cluster.json").read_text())
    try:
        # a second `up` says so and starts nothing
        before = _gcs_servers(home)
        assert len(before) == 1, before
        again = _st("cluster", "up", "--num-cpus", "2", "--dashboard-port", str(free_port()), env=env)
        assert again.returncode == 1 and "already running" in again.stderr, again.stderr
        assert _gcs_servers(home) == before
        s = _st("cluster", "status", env=env)
        assert s.returncode == 0 and url in s.stdout and re.search(r"head ALIVE: .*CPU 2", s.stdout), s.stdout

        # the Jobs API listens on loopback only: not on the host's own address
        host = state["gcs_address"].rsplit(":", 1)[0]
        if not host.startswith("127."):
            with pytest.raises(OSError):
                socket.create_connection((host, port), timeout=2).close()
        token_file = home / "cluster" / "auth_token"
        assert token_file.stat().st_mode & 0o077 == 0  # the token is the owner's alone
        token = token_file.read_text().strip()

        # without the token: refused, with a message that says what to do
        bare = {**env, "SPEECHTUNE_HOME": str(tmp_path / "elsewhere")}
        demo = str(ROOT / "tune_jobs" / "jobs" / "demo.yaml")
        refused = _st("submit", demo, "--profile", "smoke", "--address", url, env=bare, cwd=tmp_path)
        assert refused.returncode == 2 and "requires token authentication" in refused.stderr, refused.stderr
        # a job file that fails validation is refused before anything is sent
        bad = tmp_path / "bad.yaml"
        job = yaml.safe_load((ROOT / "tune_jobs" / "jobs" / "demo.yaml").read_text())
        job["num_trails"] = job.pop("num_trials")  # a KeyError if the demo had no num_trials
        bad.write_text(yaml.safe_dump(job, sort_keys=False))
        b = _st("submit", str(bad), "--address", url, env={**bare, "RAY_AUTH_TOKEN_PATH": str(token_file)})
        assert b.returncode == 2 and "bad.yaml" in b.stderr and "num_trails" in b.stderr, b.stderr
        # an address where nothing listens
        gone = _st("jobs", "list", "--address", f"http://127.0.0.1:{free_port()}", env=bare)
        assert gone.returncode == 2 and "cannot reach a Ray Jobs API" in gone.stderr, gone.stderr

        # with the token (the way a user of a remote cluster gives it): the demo job runs. An
        # experiment of its name is there already: submit printed `experiments/demo` while the
        # driver wrote `demo_<timestamp>`; now the name is chosen where the storage is seen
        authed = {**bare, "RAY_AUTH_TOKEN_PATH": str(token_file)}
        from analysis.synthetic import FakeTrial, write_experiment

        earlier = write_experiment(tmp_path / "experiments" / "demo", [FakeTrial("old00000", {"lr": 1e-3})])
        (earlier / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for: a resumable experiment
        kept = sorted(p.name for p in earlier.iterdir())
        sub = _st("submit", demo, "--profile", "smoke", "--address", url, env=authed, cwd=tmp_path)
        assert sub.returncode == 0, sub.stdout + sub.stderr
        job_id = re.search(r"submitted (\S+) to", sub.stdout).group(1)
        exp = Path(re.search(r"experiment: (\S+)", sub.stdout).group(1))
        assert exp.parent == tmp_path / "experiments" and exp.name.startswith("demo_"), sub.stdout
        logs = _st("jobs", "logs", job_id, "--follow", "--address", url, env=authed, timeout=400)
        assert logs.returncode == 0 and f"job {job_id}: SUCCEEDED" in logs.stdout, logs.stdout[-3000:] + logs.stderr
        assert "search finished" in logs.stdout and "all agree" in logs.stdout
        listed = _st("jobs", "list", env=env)  # the local cluster's own token, from the state directory
        assert re.search(rf"{job_id}\s+SUCCEEDED", listed.stdout), listed.stdout + listed.stderr

        # the experiment is where submit said (relative to where it ran); report works on it
        assert exp.is_dir() and sorted(p.name for p in earlier.iterdir()) == kept
        rep = _st("report", str(exp), "--out", str(tmp_path / "rep"), "--check-ray", env=env)
        assert rep.returncode == 0, rep.stdout + rep.stderr
        assert (tmp_path / "rep" / "report.md").read_text().count("| finished |") + \
            (tmp_path / "rep" / "report.md").read_text().count("| early-stopped |") == 2
        # no secret in the experiment, the job file, or what Ray keeps of the job
        for f in [*exp.rglob("*"), Path(demo)]:
            if f.is_file() and f.stat().st_size < 5_000_000:
                assert token not in f.read_text(errors="replace"), f
        from ray.job_submission import JobSubmissionClient

        info = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"}).get_job_info(job_id)
        assert token not in json.dumps(info.runtime_env) and token not in info.entrypoint

        # a job that fails on the cluster: `submit --wait` said "FAILED" and no more; now Ray's reason
        unwritable = tmp_path / "unwritable.yaml"
        job = yaml.safe_load((ROOT / "tune_jobs" / "jobs" / "demo.yaml").read_text())
        job["storage_path"] = "/proc/speechtune-exp"  # the driver's first check refuses it
        unwritable.write_text(yaml.safe_dump(job, sort_keys=False))
        w = _st("submit", str(unwritable), "--profile", "smoke", "--address", url, "--wait", env=authed, cwd=tmp_path)
        assert w.returncode == 1 and re.search(r"job \S+: FAILED", w.stdout), w.stdout[-3000:] + w.stderr
        assert "reason (Ray): " in w.stderr and "exit code 2" in w.stderr and "cannot be written" in w.stderr, w.stderr
    finally:
        d = _st("cluster", "down", env=env)
    assert d.returncode == 0 and "stopped" in d.stdout, d.stdout + d.stderr
    left = [p for p in psutil.process_iter(["cmdline"]) if state["temp_dir"] in " ".join(p.info["cmdline"] or [])]
    assert not left, [p.info["cmdline"][:2] for p in left]
    assert not [p for p in psutil.process_iter() if p.pid == state["pid"]]
    assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42  # the other Ray still works
    assert _st("cluster", "status", env=env).returncode == 1


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_two_nodes_spread_ddp_workers_and_a_removed_node_is_survived(corpus, cache_dir, tmp_path, monkeypatch):
    """Two Ray nodes on this machine (Ray's own ray.cluster_utils.Cluster: separate raylets), the
    search's driver a `speechtune tune` process. The trial has 2 DDP workers placed with SPREAD;
    once it has checkpointed its second epoch its workers are frozen, the worker node is removed
    (its raylet and workers are killed) and the survivor thawed: the trial is retried from its
    checkpoint on the remaining node and the search completes. The freeze makes the removal land
    mid-run however long an epoch takes."""
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    from analysis.load import load_experiment
    from analysis.raycheck import compare_with_ray
    if ray.is_initialized():  # this process drives nothing here: a test that fails cannot take a driver down
        ray.shutdown()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # loopback test cluster (DEVELOPERS.md)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    p = None
    try:
        job = tiny_job(tmp_path, corpus, cache_dir, "nodes", """\
            max_failures: 2
            search_space: {lr: {grid: [3.0e-3]}}
            searcher: {name: grid}
            storage_shared: true     # both nodes run on this machine: they do share its disk
            """, epochs=8, edit={"resources": {"num_workers": 2, "cpus_per_worker": 1,
                                                "placement_strategy": "SPREAD"}})
        exp = tmp_path / "exp" / "nodes"
        p = speechtune("tune", str(job), "--address", cluster.address, env={"SPEECHTUNE_CACHE": str(cache_dir)})
        wait_while_running(p, lambda: bool(list(exp.glob("*/checkpoint_000001"))), 240,
                           "the trial's second checkpoint", poll=0.02)
        raylets = [n.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
                   for n in (cluster.head_node, worker)]
        workers = freeze_ray_workers(raylets, TRAIN_WORKER, 2)  # this cluster's: the trial's two
        saved = sorted(c.name for c in exp.glob("*/checkpoint_*"))
        cluster.remove_node(worker)  # kills that node's raylet and every worker on it
        for w in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                w.resume()
        assert saved[-1] < "checkpoint_000007", f"the run had reached its last epoch: {saved}"
        out, _ = p.communicate(timeout=400)
        assert p.returncode == 0 and "1 trials, 0 failed" in out, out[-3000:]
        trials, history = load_experiment(exp)  # epochs a retry lost from result.json come from progress.csv
        assert set(trials.status) == {"finished"} and trials.epochs_run.tolist() == [8]
        assert history.restored_from_epoch.notna().any(), history[["trial_id", "epoch", "restored_from_epoch"]]
        first = history.sort_values("epoch")
        assert first.num_nodes.iloc[0] == 2  # the 2 DDP workers were placed on different nodes
        resumed = first[first.restored_from_epoch.notna()]
        assert len(resumed) == 1 and resumed.restored_from_epoch.iloc[0] >= 1, first[["epoch", "num_nodes"]]
        assert resumed.epoch.iloc[0] == resumed.restored_from_epoch.iloc[0] + 1 and resumed.num_nodes.iloc[0] == 1
        assert first.epoch.tolist() == list(range(1, 9))
        assert compare_with_ray(exp).ok
    finally:
        if p is not None and p.poll() is None:
            stop_process_tree(p)
        cluster.shutdown()


CONFIGS = sorted((ROOT / "cluster" / "configs").glob("*.yaml"))
RAY_VERSION = __import__("importlib.metadata").metadata.version("ray")
PKG_VERSION = __import__("importlib.metadata").metadata.version("speechtune")


def test_every_cluster_config_parses_and_has_what_launcher_and_kuberay_require():
    """Launcher YAMLs through Ray's own checks (ray-schema.json and the autoscaler's
    prepare/validate); KubeRay manifests against the fields the ray.io/v1 CRDs require."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    kinds = {}
    for path in CONFIGS:
        cfg = yaml.safe_load(path.read_text())
        kind = cfg.get("kind", "launcher")
        kinds.setdefault(kind, []).append(path.name)
        if kind == "launcher":
            validate_config(prepare_config(cfg))
            types = cfg["available_node_types"]
            assert cfg["cluster_name"] and cfg["head_node_type"] in types, path
            head = types[cfg["head_node_type"]]
            assert "GPU" not in head["resources"], f"{path}: the head is a CPU node"
            gpu = [n for n, t in types.items() if t["resources"].get("GPU", 0) >= 1]
            assert gpu and types[gpu[0]]["max_workers"] > types[gpu[0]].get("min_workers", 0), \
                f"{path}: an autoscaling GPU worker type"
            images = [cfg["docker"][k] for k in ("head_image", "worker_image")]
            assert all(re.fullmatch(rf"speechtune:{PKG_VERSION}-(cpu|gpu)", i) for i in images), images
            assert all("--dashboard-host=127.0.0.1" in c for c in cfg["head_start_ray_commands"] if "--head" in c)
            # nodes share no disk: every worker type can reach the job's object storage
            for t in types.values():
                nc = t["node_config"]
                assert nc.get("IamInstanceProfile") or any("devstorage" in sc or "cloud-platform" in sc
                                                           for sa in nc.get("serviceAccounts", [])
                                                           for sc in sa["scopes"]) or t is head, (path, nc)
            continue
        assert cfg["apiVersion"] == "ray.io/v1" and cfg["metadata"]["name"], path
        spec = cfg["spec"]
        if kind == "RayJob":
            assert spec["entrypoint"].startswith("speechtune tune ") and "--address auto" in spec["entrypoint"]
            assert "--storage s3://" in spec["entrypoint"]  # pods share no disk: the job's storage is S3
            yaml.safe_load(spec["runtimeEnvYAML"])
            spec = spec["rayClusterSpec"]
        else:
            assert kind == "RayCluster", path
        assert spec["rayVersion"] == RAY_VERSION, path
        groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
        gpus = 0
        for name, g in groups:
            assert isinstance(g["rayStartParams"], dict), (path, name)
            (c, *_) = g["template"]["spec"]["containers"]
            assert re.fullmatch(rf"speechtune:{PKG_VERSION}-(cpu|gpu)", c["image"]), (path, name, c["image"])
            assert c["resources"]["limits"]["cpu"] and c["resources"]["limits"]["memory"], (path, name)
            assert g["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
            env = {e["name"]: e for e in c.get("env", [])}
            assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
            assert {"secretRef": {"name": "speechtune-object-storage"}} in c["envFrom"], (path, name)
            if name != "head":
                assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], (path, name)
            gpus += int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
            assert ("gpu" in c["image"]) == bool(c["resources"]["limits"].get("nvidia.com/gpu")), (path, name)
        assert gpus >= 1 and len(groups) >= 3, f"{path}: CPU and GPU worker groups"
    assert sorted(kinds) == ["RayCluster", "RayJob", "launcher"] and len(kinds["launcher"]) == 2, kinds


def test_launcher_validation_catches_a_missing_field():
    """The check above can fail: a node type without resources is refused by Ray's schema."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster" / "configs" / "aws.yaml").read_text())
    del cfg["available_node_types"]["worker_gpu"]["resources"]
    with pytest.raises(jsonschema.ValidationError, match="resources"):
        validate_config(prepare_config(cfg))


def _dockerfile(path: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#")))
    return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l.strip() else "")
            for l in text.splitlines() if l.strip()]


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_pin_the_ray_image_run_as_non_root_and_install_the_package(name):
    """No Docker engine runs here: the files are checked for what the images must do."""
    ins = _dockerfile(ROOT / "docker" / name)
    (base,) = [a for i, a in ins if i == "FROM"]
    flavour = name.split(".")[1]
    assert re.fullmatch(rf"rayproject/ray:{re.escape(RAY_VERSION)}-py3\d+-{flavour}", base), base  # pinned, never :latest
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith(("root:", "0:")), users
    copied = " ".join(a for i, a in ins if i == "COPY")
    for part in ("pyproject.toml", "asr_core", "tune_jobs", "analysis", "cluster"):
        assert part in copied, part
    assert all("--chown=ray" in a for i, a in ins if i == "COPY")
    runs = [a for i, a in ins if i == "RUN"]
    assert any(re.search(r"pip install .*(\s\.)(\s|$|&)", r) for r in runs), runs
    # the package's pins are what the image installs: no other torch or ray pin slipped in
    assert not re.search(r"torch==|ray==", " ".join(runs))


def test_compose_runs_a_head_and_two_workers_and_publishes_only_on_loopback():
    c = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    svc = c["services"]
    heads = [n for n, s in svc.items() if "--head" in s["command"]]
    workers = [n for n, s in svc.items() if "--address=head:6379" in s["command"]]
    assert heads == ["head"] and len(workers) == 2
    for n, s in svc.items():
        assert re.fullmatch(rf"speechtune:{PKG_VERSION}-cpu", s["image"]), n
        assert s["environment"]["RAY_AUTH_MODE"] == "token" and s["environment"]["RAY_AUTH_TOKEN"].startswith("${")
        for port in s.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (n, port)
    make = (ROOT / "Makefile").read_text()
    assert "docker-images:" in make and "docker/Dockerfile.cpu" in make and "docker/Dockerfile.gpu" in make
