"""``speechtune cluster up | status | down``: a local single-node Ray head for testing jobs
before they go to a real cluster.

``up`` runs Ray's own ``ray start --head --block`` as the leader of a new session, so every
process of this cluster (GCS, raylet, dashboard and Jobs API, workers, job drivers) can be told
apart from any other Ray on the machine: ``down`` stops that session and nothing else, where
``ray stop`` would kill every Ray process of the user. The state (address, token file, session)
is kept in ``$SPEECHTUNE_HOME/cluster/`` (default ``~/.speechtune``).

Network: the dashboard and the Jobs API listen on 127.0.0.1 only. Ray 2.60's own gRPC servers
(GCS, raylet, workers) bind every interface and have no option to change it (ray start also
turns ``--node-ip-address 127.0.0.1`` into the host's address), so ``up`` turns on Ray's token
authentication by default (``RAY_AUTH_MODE=token``, as ``ray.init`` does for new local clusters
since 2.5x): a peer without the token is refused on those ports and on the Jobs API. The token is
written 0600 under the state directory and never into a job, a runtime environment or an
experiment directory. ``--no-auth`` turns it off (the user says so).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster.auth import (ClusterError, HeadState, auth_headers, client, read_state,  # noqa: F401
                          read_token, state_dir)
from cluster.local import RAY_ENV


def _session_pids(sid: int) -> set[int]:
    import psutil

    out = set()
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                out.add(p.pid)
        except (ProcessLookupError, PermissionError, OSError):
            continue
    return out


def our_processes(st: HeadState) -> list:
    """Every live process of this cluster: its session, and their descendants that started a
    session of their own (Ray's job supervisor starts each job driver in a new one)."""
    import psutil

    pids = _session_pids(st.sid)
    procs = {}
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs[pid] = p
            for c in p.children(recursive=True):
                procs[c.pid] = c
        except psutil.NoSuchProcess:
            continue
    return list(procs.values())


def is_running(st: HeadState | None) -> bool:
    import psutil

    if st is None:
        return False
    try:
        p = psutil.Process(st.pid)
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE and st.temp_dir in " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return False
        except OSError:
            return True


def _ray_cli() -> str:
    exe = Path(sys.executable).parent / "ray"
    return str(exe) if exe.is_file() else (shutil.which("ray") or "ray")


def api_ready(url: str, token: str | None, timeout: float = 2.0) -> bool:
    import requests

    try:
        r = requests.get(f"{url}/api/version", timeout=timeout, headers=auth_headers(token))
        return r.status_code == 200
    except requests.RequestException:
        return False


def up(num_cpus: float | None = None, num_gpus: float | None = None, dashboard_port: int = 8265,
       auth: bool = True, timeout: float = 90.0, progress=print) -> HeadState:
    """Start the head; a cluster of ours already running is an error and nothing is started."""
    st = read_state()
    if is_running(st):
        raise ClusterError(f"a speechtune cluster is already running (pid {st.pid}, dashboard "
                           f"{st.dashboard_url}, started {time.ctime(st.started)}); nothing started. "
                           "`speechtune cluster down` stops it.")
    sdir = state_dir()
    sdir.mkdir(parents=True, exist_ok=True)
    (sdir / "cluster.json").unlink(missing_ok=True)  # a stale record of a cluster that died
    if _port_taken(dashboard_port):
        raise ClusterError(f"127.0.0.1:{dashboard_port} is in use (another Ray dashboard?); "
                           "choose another with --dashboard-port")
    # short: Ray's Unix socket paths under it must stay within 107 characters
    temp_dir = tempfile.mkdtemp(prefix="st-ray-", dir="/tmp")
    env = {**os.environ, **RAY_ENV, "RAY_USAGE_STATS_ENABLED": "0",
           # job drivers run `python`: the one that started the cluster (this virtualenv's)
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    token_file = None
    if auth:
        token_file = sdir / "auth_token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
        env.pop("RAY_AUTH_TOKEN", None)
    else:
        env["RAY_AUTH_MODE"] = "disabled"
    gcs_port = _free_port()
    cmd = [_ray_cli(), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
           f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus:g}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus:g}")
    log = open(sdir / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=temp_dir)
    url = f"http://127.0.0.1:{dashboard_port}"
    token = Path(token_file).read_text() if token_file else None
    st = HeadState(pid=proc.pid, sid=os.getsid(proc.pid), gcs_address=f"127.0.0.1:{gcs_port}", dashboard_url=url,
                   temp_dir=temp_dir, token_file=str(token_file) if token_file else None, num_cpus=num_cpus,
                   num_gpus=num_gpus, started=time.time())
    deadline = time.time() + timeout
    progress(f"starting Ray head (logs: {sdir / 'head.log'}) ...")
    while not api_ready(url, token):
        if proc.poll() is not None or time.time() > deadline:
            _stop(st)
            shutil.rmtree(temp_dir, ignore_errors=True)
            tail = (sdir / "head.log").read_text(errors="replace")[-2000:]
            raise ClusterError(f"the Ray head did not come up ({'exited' if proc.poll() is not None else 'timeout'});"
                               f" {sdir / 'head.log'} ends with:\n{tail}")
        time.sleep(0.5)
    while not _gcs_address(temp_dir) and time.time() < deadline:
        time.sleep(0.2)
    st.gcs_address = _gcs_address(temp_dir) or st.gcs_address
    (sdir / "cluster.json").write_text(json.dumps(st.to_dict(), indent=1))
    return st


def _gcs_address(temp_dir: str) -> str | None:
    """The GCS address as Ray recorded it (ray start replaces 127.0.0.1 by the host's address)."""
    f = Path(temp_dir) / "ray_current_cluster"
    return f.read_text().strip() or None if f.is_file() else None


def _stop(st: HeadState, grace: float = 5.0) -> int:
    """SIGTERM to every process of ours (as ``ray stop`` does), then SIGKILL whatever is left after
    ``grace`` seconds. Returns how many processes had to be killed. An idle cluster is gone in
    about 3 s; once a job has run, the GCS, the raylet, ``ray start`` and two of Ray's own actors
    (the runtime-env agent, the autoscaling coordinator) outlast any grace (seen here: none had
    gone after 25 s), so a longer one only makes every ``down`` wait for the SIGKILL."""
    import psutil

    procs = our_processes(st)
    for p in sorted(procs, key=lambda p: p.pid != st.pid):  # ``ray start`` first, then the rest
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    left = our_processes(st)
    for p in left:  # started meanwhile by a dying raylet
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return len(alive)


def down() -> HeadState | None:
    """Stop the cluster ``up`` started; None when there is none."""
    st = read_state()
    if st is None:
        return None
    _stop(st)
    shutil.rmtree(st.temp_dir, ignore_errors=True)
    (state_dir() / "cluster.json").unlink(missing_ok=True)
    if st.token_file:
        Path(st.token_file).unlink(missing_ok=True)
    return st


def status(st: HeadState) -> dict:
    """Nodes with their resources, jobs, and the dashboard address (through the Jobs API)."""
    import requests

    token = read_token(st)
    r = requests.get(f"{st.dashboard_url}/api/v0/nodes", headers=auth_headers(token), timeout=10)  # State API
    r.raise_for_status()
    nodes = [{"node_id": n["node_id"][:12], "ip": n.get("node_ip"), "state": n.get("state"),
              "head": bool(n.get("is_head_node")),
              "resources": {k: v for k, v in (n.get("resources_total") or {}).items()
                            if k in ("CPU", "GPU", "memory", "object_store_memory")}}
             for n in r.json()["data"]["result"]["result"]]
    jobs = [j for j in client(st.dashboard_url, token).list_jobs()]
    return {"dashboard": st.dashboard_url, "gcs": st.gcs_address, "pid": st.pid, "nodes": nodes,
            "jobs": [{"id": j.submission_id, "status": str(j.status.value if hasattr(j.status, "value") else j.status),
                      "entrypoint": j.entrypoint} for j in jobs]}
