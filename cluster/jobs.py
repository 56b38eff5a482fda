"""``speechtune submit JOB.yaml`` and ``speechtune jobs list | logs | stop``, through Ray's Jobs API.

A job file is loaded and checked here, before anything is uploaded: a bad key fails on the
submitting machine with the file and line, not minutes later in the cluster's logs. What is sent:

- the job itself, with its profile applied and its local relative paths (manifests, storage)
  made absolute, as ``SPEECHTUNE_JOB`` in the job's environment (``speechtune tune env:SPEECHTUNE_JOB``
  reads it there; the job file may live outside the project);
- the project's code as the runtime environment's ``working_dir`` (``.gitignore`` and the
  excludes below keep the virtual environment, caches and experiments out);
- the package's requirements pinned to the versions installed here, as ``SPEECHTUNE_REQUIREMENTS``:
  the job's driver checks them before it starts and stops with the list of mismatches (a cluster
  built from ``docker/`` has them). ``--pip`` has Ray install them instead (its ``pip`` runtime
  environment); Ray then clones the cluster's Python environment first, which for a torch-sized
  environment takes minutes (4.5 min for 6.3 GB here), so it is not the default.

The token of an authenticated cluster goes in the request's ``Authorization`` header only.
"""
from __future__ import annotations

import json
import os
import re
from importlib import metadata
from pathlib import Path

from cluster.auth import api_errors, client, resolve_address
from cluster.local import RAY_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXCLUDES = [".venv", ".cache", ".git", "experiments", "reports", "**/__pycache__", ".pytest_cache", "*.pt",
            "*.parquet"]
JOB_ENV = "SPEECHTUNE_JOB"
REQ_ENV = "SPEECHTUNE_REQUIREMENTS"
# untracked files of these kinds travel (code and job files not yet committed); any other
# untracked file, and every untracked folder, stays behind: data go in the job's storage
SOURCE_SUFFIXES = (".py", ".yaml", ".yml", ".toml")
UPLOAD_LIMIT_MB = 100  # of the working directory; SPEECHTUNE_UPLOAD_LIMIT_MB overrides it


def pinned_requirements() -> list[str]:
    """speechtune's own requirements at the versions installed here (Ray itself excluded: the
    cluster's Ray must not be replaced by a job)."""
    out = []
    for req in metadata.requires("speechtune") or []:
        if "extra ==" in req:
            continue
        name = re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0]
        if name.lower() == "ray":
            continue
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(req.split(";")[0].strip())
    return out


def requirement_mismatches(pins: list[str]) -> list[str]:
    """The pins (``name==version``) this Python environment does not satisfy."""
    bad = []
    for pin in pins:
        name, _, want = pin.partition("==")
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = "not installed"
        if want and have != want:
            bad.append(f"{name}: wanted {want}, {have}")
    return bad


def upload_excludes(root: Path = PROJECT_ROOT) -> list[str]:
    """Ray's ``excludes`` for the working directory: ours, and in a git checkout every untracked
    folder and every untracked file that is not source (``SOURCE_SUFFIXES``). Git-ignored paths
    Ray leaves out itself (it reads ``.gitignore``). A 179 MB folder of local data that was neither
    tracked nor ignored made Ray's upload fail with no reason given."""
    import subprocess

    out = list(EXCLUDES)
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "--others", "--exclude-standard", "--directory",
                                 "-z"], capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an installed package)
        return out
    for rel in filter(None, listed.split("\0")):
        if rel.endswith("/") or not rel.endswith(SOURCE_SUFFIXES):
            out.append("/" + re.sub(r"([\\*?\[\]!#])", r"\\\1", rel))  # anchored, gitwildmatch's specials escaped
    return out


def upload_size(root: Path, excludes: list[str]) -> tuple[int, dict[str, int]]:
    """Bytes Ray would upload of ``root`` with ``excludes``: (total, by top-level entry). Walked
    with Ray's own traversal (its exclude matching and .gitignore reading), so that what is
    measured is what it packs."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    root = Path(root).absolute()
    sizes: dict[str, int] = {}

    def add(p: Path) -> None:
        if p.is_file() and not p.is_symlink():
            top = p.relative_to(root).parts[0]
            sizes[top] = sizes.get(top, 0) + p.stat().st_size

    _dir_travel(root, [_get_excludes(root, excludes)], add, include_gitignore=True)
    return sum(sizes.values()), sizes


def check_upload(root: Path, excludes: list[str]) -> int:
    """The working directory's upload within the limit, else an InputError naming its largest
    entries; returns its size in bytes."""
    from asr_core.errors import InputError

    limit_mb = float(os.environ.get("SPEECHTUNE_UPLOAD_LIMIT_MB", UPLOAD_LIMIT_MB))
    total, sizes = upload_size(root, excludes)
    if total > limit_mb * 2 ** 20:
        largest = ", ".join(f"{k} ({v / 2 ** 20:.1f} MiB)" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:5])
        raise InputError(str(root), f"the job's working directory would upload {total / 2 ** 20:.1f} MiB, over the "
                                    f"{limit_mb:g} MiB limit (SPEECHTUNE_UPLOAD_LIMIT_MB); largest: {largest}. Keep "
                                    "data in the job's storage or list them in .gitignore; nothing was sent")
    return total


def job_payload(job) -> dict:
    """What travels with a submitted job: the validated job (``tune_jobs.spec.JobSpec``, checked
    by the CLI before anything is sent) with local relative paths made absolute."""
    from asr_core import storage as store
    from asr_core.data.manifest import normalize_spec

    raw = json.loads(json.dumps(job.raw, default=str))
    raw["storage_path"] = store.normalize(job.storage_path)
    data = raw.get("data") or {}
    for k in ("train_manifest", "dev_manifest", "test_manifest", "test_hard_manifest"):
        if data.get(k):
            data[k] = normalize_spec(data[k])
    return {"path": str(Path(job.path).resolve()), "profile": job.profile or "", "job": raw}


def submit(job, address: str | None = None, pip: bool = False, report_dir: str | None = None,
           submission_id: str | None = None, name: str | None = None) -> tuple[str, str, str]:
    """Submit a validated job (``tune_jobs.spec.JobSpec``) as experiment ``name`` (default the
    job's). Returns (submission id, Jobs API address, experiment URI)."""
    from asr_core import storage as store

    payload = job_payload(job)
    if name:
        payload["job"]["name"] = name
    excludes = upload_excludes(PROJECT_ROOT)
    check_upload(PROJECT_ROOT, excludes)
    address, token = resolve_address(address)
    c = client(address, token)
    pins = pinned_requirements()
    env = {**RAY_ENV, JOB_ENV: json.dumps(payload, ensure_ascii=False), REQ_ENV: " ".join(pins)}
    if os.environ.get("SPEECHTUNE_CACHE"):
        env["SPEECHTUNE_CACHE"] = os.environ["SPEECHTUNE_CACHE"]
    runtime_env: dict = {"working_dir": str(PROJECT_ROOT), "excludes": excludes, "env_vars": env}
    if pip:
        runtime_env["pip"] = {"packages": pins, "pip_check": False}
    entry = f"python -m tune_jobs.cli tune env:{JOB_ENV} --address auto"
    if report_dir:
        entry += f" --report-dir {store.normalize(report_dir)}"
    with api_errors(address, token):
        sid = c.submit_job(entrypoint=entry, runtime_env=runtime_env, submission_id=submission_id,
                           metadata={"speechtune_job": payload["path"], "name": job.name})
    return sid, address, store.join(payload["job"]["storage_path"], payload["job"]["name"])


def list_jobs(address: str | None = None) -> list:
    address, token = resolve_address(address)
    with api_errors(address, token):
        return client(address, token).list_jobs()


def logs(job_id: str, address: str | None = None, follow: bool = False, out=print) -> str:
    """The job's driver output; ``follow`` streams it until the job ends and returns its status."""
    address, token = resolve_address(address)
    c = client(address, token)
    if not follow:
        with api_errors(address, token):
            out(c.get_job_logs(job_id), end="")
            return str(c.get_job_status(job_id))
    import asyncio

    async def tail():
        async for chunk in c.tail_job_logs(job_id):
            out(chunk, end="", flush=True)

    with api_errors(address, token):
        asyncio.run(tail())
        return str(c.get_job_status(job_id))


def failure_reason(job_id: str, address: str | None = None) -> str:
    """Ray's own account of a job that failed (its runtime environment could not be set up, its
    driver exited non-zero...): the job's ``message``; "" when it gives none."""
    address, token = resolve_address(address)
    with api_errors(address, token):
        return (client(address, token).get_job_info(job_id).message or "").strip()


def stop(job_id: str, address: str | None = None) -> bool:
    address, token = resolve_address(address)
    with api_errors(address, token):
        return client(address, token).stop_job(job_id)
