"""Factories the tests share: a tiny run config, a tiny job file, manifests, a real CLI process,
a free port, and a trial's reports (one module, so that no test module imports another)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path


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


def tiny_job(tmp_path: Path, corpus, cache_dir, name: str, body: str, epochs: int = 3, **params) -> Path:
    """A crnn_ctc tiny job file; ``body`` adds search, scheduler, phases...; ``params`` adds run keys."""
    f = tmp_path / f"{name}.yaml"
    more = "".join(f", {k}: {v}" for k, v in params.items())
    f.write_text(textwrap.dedent(f"""\
        name: {name}
        family: crnn_ctc
        preset: tiny
        data: {{train_manifest: {corpus['train']}, dev_manifest: {corpus['dev']}}}
        params: {{epochs: {epochs}, n_mels: 40, batch_bins: 200000, cache_dir: {cache_dir}, lr: 3.0e-3{more}}}
        metric: val_loss
        mode: min
        test_eval: false
        resources: {{num_workers: 1, cpus_per_worker: 1}}
        storage_path: {tmp_path / 'exp'}
        """) + textwrap.dedent(body))
    return f


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_while_running(p: subprocess.Popen, ready, timeout: float, what: str, poll: float = 0.2) -> None:
    """Until ``ready()`` holds, while process ``p`` still runs (its output is the failure message if it
    ends first); after ``timeout`` seconds ``p`` is killed and the test fails naming ``what``."""
    import time

    import pytest

    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            return
        assert p.poll() is None, p.stdout.read()
        time.sleep(poll)
    p.kill()
    pytest.fail(f"{what} did not happen within {timeout:.0f} s")
