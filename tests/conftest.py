"""Shared fixtures: one tiny synthesized corpus per session, one real S3 server (moto) on 127.0.0.1,
and one real local Ray head with 2 CPUs for the whole session (factories live in tests/factories.py).

The Ray head runs as its own processes (``ray start --head``), as Ray's own suite shares one
cluster (``ray_start_regular_shared``): the test process connects to it as a driver, and the
``speechtune`` processes a test starts join it with ``--address``, so no test pays for a Ray
start of its own. Only tests that kill a node, bring up a cluster through ``speechtune cluster
up`` or need nodes with private file systems start another cluster.

``make test`` runs the suite in two pytest-xdist workers (``-n 2``): each worker
has its own session fixtures (its own head, S3 server and Ray), the corpus and feature cache is
one for both (built under a file lock), and the tests that start Rays of their own run one after
the other in one worker (unit ``own-ray``, see ``work_unit``), longest first."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest

import tune_jobs  # noqa: F401  (Train/Tune integration env before ray.train loads)
from tests.factories import free_port, stop_process_tree, wait_for

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The session's feature and corpus cache; SPEECHTUNE_CACHE points at it while the session
    runs (a job naming a corpus synthesizes it here) and is restored afterwards."""
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one for every worker: pytest-N/cache beside popen-gwK
        d = tmp_path_factory.getbasetemp().parent / "cache"
        d.mkdir(exist_ok=True)
    else:
        d = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEECHTUNE_CACHE", str(d))
        yield d


@pytest.fixture(scope="session")
def corpus(cache_dir) -> dict[str, str]:
    """demo-mono at test size: real eSpeak NG audio, 160/24/24 utterances."""
    from asr_core.data.synth import ensure_corpus

    return ensure_corpus("demo-mono", cache_dir=cache_dir, train=160, dev=24, test=24, progress=False)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on 127.0.0.1 with a bucket ``speech``; yields the
    environment a client needs (endpoint and dummy credentials) and a boto3 client."""
    import socket

    import boto3

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def accepts() -> bool:
        assert server.poll() is None, "moto server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    try:
        wait_for(accepts, 60, "the S3 server accepting connections")
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket="speech")
        yield env, client
    finally:
        server.terminate()
        server.wait()


class RayHead(NamedTuple):
    address: str
    pid: int  # the ``ray start --block`` process: every process of this head descends from it


@pytest.fixture(scope="session", autouse=True)
def torch_threads():
    """With several pytest workers on this machine, in-process training uses its share of the cores
    (torch's default, one thread per core in every worker, oversubscribes them)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    yield


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory, cache_dir, s3_server) -> RayHead:
    """One local Ray head with 2 CPUs for the session; yields its address and process. The head's processes (and so every Ray
    worker) have the S3 server's endpoint and credentials, as a cluster's nodes have their object
    storage's. Loopback test cluster: Ray's token authentication is off for its processes and its
    clients (DEVELOPERS.md); ``speechtune cluster up`` is tested with tokens on."""
    s3_env, _ = s3_server
    port = free_port()
    # its own temp dir: the default one would leave /tmp/ray/ray_current_cluster behind, which a
    # plain ray.init() on this machine (Ray's Cluster utility, another test's) would try to join
    temp = tempfile.mkdtemp(prefix="st-shared-", dir="/tmp")
    env = {**os.environ, **s3_env, "RAY_AUTH_MODE": "disabled", "SPEECHTUNE_CACHE": str(cache_dir)}
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    head = subprocess.Popen([RAY, "start", "--head", "--num-cpus", "2", "--port", str(port), "--block",
                             "--include-dashboard", "false", "--node-ip-address", "127.0.0.1",
                             # ports of their own: a test's own cluster (cluster up, two nodes) runs beside it
                             "--ray-client-server-port", str(free_port()), "--dashboard-port", str(free_port()),
                             f"--temp-dir={temp}", "--disable-usage-stats"],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def started() -> bool:
        assert head.poll() is None, log.read_text()[-3000:]
        return "Ray runtime started" in log.read_text()

    try:
        wait_for(started, 120, "the shared Ray head starting")
        with pytest.MonkeyPatch.context() as mp:  # this process joins it as a client, without a token
            mp.setenv("RAY_AUTH_MODE", "disabled")
            yield RayHead(f"127.0.0.1:{port}", head.pid)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        stop_process_tree(head)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def ray_address(ray_cluster) -> str:
    """The shared head's address, for ``speechtune ... --address`` (a driver of its own)."""
    return ray_cluster.address


@pytest.fixture(scope="module")
def ray_start_2_cpus(ray_cluster):
    """This process as a driver of the shared 2-CPU head (Ray's own test fixture name). A test
    that disconnects (``ray.shutdown()``, to drive another cluster) leaves it to the next module
    that asks, which connects again."""
    import ray

    from cluster.local import init_ray

    if not ray.is_initialized():
        init_ray(address=ray_cluster.address)
    yield ray


RAY_FIXTURES = {"ray_start_2_cpus", "ray_cluster", "ray_address", "asha_run"}
# Tests that start Rays of their own (`speechtune cluster up`, Ray's Cluster utility, nodes in mount
# namespaces): one after the other, in one pytest worker, so that no two of them compete for the
# ports and /tmp/ray files a default Ray uses.
OWN_RAY = ("tests/test_cluster.py::test_cluster_up", "tests/test_cluster.py::test_two_nodes",
           "tests/test_no_shared_fs.py::")
# modules whose module-scoped fixture trains or searches: all their tests in one worker, which
# builds it once
MODULE_GROUPS = ("tests/test_tune_asha.py", "tests/test_decoding.py")


def work_unit(nodeid: str) -> str:
    """The unit pytest-xdist hands a test out in: ``own-ray``, its module (MODULE_GROUPS), or itself."""
    if nodeid.startswith(OWN_RAY):
        return "own-ray"
    if nodeid.startswith(MODULE_GROUPS):
        return nodeid.split("::")[0]
    return nodeid


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's load-scope scheduler with our units as its scopes. (Its ``--dist loadgroup``
    and ``xdist_group`` marks do nothing with pytest 9: xdist 3.8 renames a grouped test through
    ``item._nodeid``, which pytest 9 no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByUnit(config, log)


def pytest_collection_modifyitems(config, items):
    """``ray``: the test starts or joins Ray (the shared head, a CLI process or a cluster of its
    own); ``slow``: it trains in-process for tens of seconds. ``make test-fast`` runs the rest
    (-m "not ray and not slow").

    In a pytest-xdist worker, the order in which the controller hands the units out (``make test``
    keeps it: --no-loadscope-reorder): the own-Ray unit first (the longest), then the other Ray
    tests, then in-process training, then the rest, so that no long test starts last."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank: dict[str, int] = {}
        first: dict[str, int] = {}
        for i, item in enumerate(items):
            u = work_unit(item.nodeid)
            r = 0 if u == "own-ray" else 1 if "ray" in item.keywords else 2 if "slow" in item.keywords else 3
            rank[u] = min(r, rank.get(u, r))
            first.setdefault(u, i)
        items.sort(key=lambda it: (rank[work_unit(it.nodeid)], first[work_unit(it.nodeid)]))  # a unit stays together
