"""Factories the tests share: a tiny run config, a tiny job file, manifests, a real CLI process,
a free port, and a trial's reports (one module, so that no test module imports another)."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml


def make_params(corpus: dict, cache_dir, **overrides) -> dict:
    """A tiny, fast crnn_ctc run config (factory used across tests)."""
    p = {"family": "crnn_ctc", "preset": "tiny", "train_manifest": corpus["train"], "dev_manifest": corpus["dev"],
         "cache_dir": str(cache_dir), "epochs": 2, "n_mels": 40, "batch_bins": 200_000, "lr": 3e-3}
    p.update(overrides)
    return p


def copy_manifest(src: str, dst: Path, edit=None) -> Path:
    """Copy a manifest with absolute audio paths, optionally editing rows: edit(i, row) -> row."""
    base = Path(src).parent
    rows = [json.loads(l) for l in Path(src).read_text().splitlines() if l.strip()]
    out = []
    for i, r in enumerate(rows):
        r["audio"] = str((base / r["audio"]).resolve())
        if edit is not None:
            r = edit(i, r)
        out.append(json.dumps(r, ensure_ascii=False))
    dst.write_text("\n".join(out) + "\n")
    return dst


def with_audio(corpus, tmp_path: Path, i: int, wav) -> Path:
    """The dev manifest with row ``i``'s audio replaced by ``wav`` (a 16 kHz float array)."""
    import soundfile

    path = tmp_path / f"row{i}.wav"
    soundfile.write(str(path), wav, 16000)
    return copy_manifest(corpus["dev"], tmp_path / "dev.jsonl",
                         lambda j, r: {**r, "audio": str(path), "duration": len(wav) / 16000} if j == i else r)


def _flow(value) -> str:
    """One YAML line: a mapping or list in flow style, a path or number as itself."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip().removesuffix("\n...")


def tiny_job(tmp_path: Path, corpus, cache_dir, name: str, body: str = "", epochs: int = 3,
             edit: dict | None = None, **params) -> Path:
    """A crnn_ctc tiny job file: one line a top-level key (lines 1-10), then ``body``, a YAML
    fragment that adds search, scheduler, phases... ``params`` adds run keys. ``edit`` changes
    the file's own keys by dotted name (``{"metric": "val_cer", "data.test_manifest": ...}``):
    a name whose parent is not there is an error, never a silently different file."""
    base = {"name": name, "family": "crnn_ctc", "preset": "tiny",
            "data": {"train_manifest": corpus["train"], "dev_manifest": corpus["dev"]},
            "params": {"epochs": epochs, "n_mels": 40, "batch_bins": 200000, "cache_dir": str(cache_dir),
                       "lr": 3.0e-3, **params},
            "metric": "val_loss", "mode": "min", "test_eval": False,
            "resources": {"num_workers": 1, "cpus_per_worker": 1},
            "storage_path": str(tmp_path / "exp")}
    for key, value in (edit or {}).items():
        _set(base, key, value, "tiny_job")
    f = tmp_path / f"{name}.yaml"
    f.write_text("".join(f"{k}: {_flow(v)}\n" for k, v in base.items()) + textwrap.dedent(body))
    return f


def _set(mapping: dict, dotted: str, value, where: str, must_exist: bool = False) -> None:
    *parents, leaf = dotted.split(".")
    node = mapping
    for i, part in enumerate(parents):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"{where}: no key {'.'.join(parents[:i + 1])!r} to set {dotted!r} under")
        node = node[part]
    if not isinstance(node, dict) or (must_exist and leaf not in node):
        raise KeyError(f"{where}: no key {dotted!r} to change")
    node[leaf] = value


def edited_job(src: Path, dst: Path, changes: dict) -> Path:
    """A copy of job file ``src`` at ``dst`` with ``changes`` (dotted key -> new value) applied to
    its parsed YAML: each key must already be there (a KeyError names one that is not), so an
    edit cannot silently miss and leave the test checking another job."""
    job = yaml.safe_load(Path(src).read_text())
    for key, value in changes.items():
        _set(job, key, value, str(src), must_exist=True)
    dst.write_text(yaml.safe_dump(job, sort_keys=False))
    return dst


def history_of(exp_dir) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for res in Path(exp_dir).glob("*/result.json"):
        rows = [json.loads(l) for l in res.read_text().splitlines() if l.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def speechtune(*args, env=None, **kw):
    """A real ``speechtune`` CLI process (python -m tune_jobs.cli) with its output piped."""
    return subprocess.Popen([sys.executable, "-m", "tune_jobs.cli", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def unshare_works() -> str:
    """'' when this machine lets a process mount in its own namespace (``unshare -m``), else why not."""
    import shutil

    if shutil.which("unshare") is None:
        return "no unshare command"
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs none /mnt"],
                       capture_output=True, text=True)
    return "" if p.returncode == 0 else f"unshare -m is not permitted here: {p.stderr.strip()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(ready, timeout: float, what: str, poll: float = 0.2) -> None:
    """Until ``ready()`` holds (it may assert what must stay true meanwhile); after ``timeout``
    seconds the test fails naming ``what``."""
    import time

    import pytest

    deadline = time.time() + timeout
    while not ready():
        if time.time() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(poll)


def stop_process_tree(p: subprocess.Popen) -> None:
    """SIGKILL a process and everything it started (a ``ray start --block`` and its Ray processes)."""
    import psutil

    try:
        procs = psutil.Process(p.pid).children(recursive=True) + [psutil.Process(p.pid)]
    except psutil.NoSuchProcess:
        return
    for q in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            q.kill()
    psutil.wait_procs(procs, timeout=30)
    p.wait()


# Ray titles a worker process by its actor class while idle and by the method it runs, name
# mangled, while busy: a Train worker mid-epoch reads ``ray::_RayTrainWorker__execute.get_next``
# (seen here; matching the idle title alone froze a trial only between two method calls).
TRAIN_WORKER = ("ray::RayTrainWorker", "ray::_RayTrainWorker__")


def ray_processes(root: int, title: str | tuple[str, ...]) -> list:
    """The Ray workers under process ``root`` (a ``ray start --block``, or a driver that started a
    Ray of its own) whose process title starts with ``title`` (one prefix or several, as
    ``TRAIN_WORKER``): never another test's, nor another pytest worker's."""
    import psutil

    found = []
    for q in psutil.Process(root).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if any(c.startswith(title) for c in q.cmdline()):
                found.append(q)
    return found


def freeze_ray_workers(roots: list[int], title: str | tuple[str, ...], count: int, timeout: float = 60) -> list:
    """SIGSTOP ``count`` Ray workers titled ``title`` under the processes ``roots``; returns them. It
    looks again until it has them all: a Ray worker retitles itself at every method call, and for
    a moment its command line can read empty (seen: a DDP worker missed by a single look)."""
    found: dict = {}

    def all_frozen() -> bool:
        for root in roots:
            for q in ray_processes(root, title):
                if q.pid not in found:
                    q.suspend()
                    found[q.pid] = q
        return len(found) >= count

    wait_for(all_frozen, timeout, f"{count} {title} process(es) to freeze", poll=0.01)
    return list(found.values())


def wait_while_running(p: subprocess.Popen, ready, timeout: float, what: str, poll: float = 0.2) -> None:
    """Until ``ready()`` holds, while process ``p`` still runs (its output is the failure message if it
    ends first); after ``timeout`` seconds ``p`` is killed and the test fails naming ``what``."""
    def check() -> bool:
        if ready():
            return True
        assert p.poll() is None, p.stdout.read()
        return False

    try:
        wait_for(check, timeout, what, poll)
    except BaseException:  # pytest.fail's exception too
        p.kill()
        raise
