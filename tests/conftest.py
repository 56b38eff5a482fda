"""Shared fixtures: one tiny synthesized corpus per session, a real local 2-CPU Ray, a real S3 server
(factories live in tests/factories.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import tune_jobs  # noqa: F401  (Train/Tune integration env before ray.train loads)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cache")
    os.environ["SPEECHTUNE_CACHE"] = str(d)
    return d


@pytest.fixture(scope="session")
def corpus(cache_dir) -> dict[str, str]:
    """demo-mono at test size: real eSpeak NG audio, 160/24/24 utterances."""
    from asr_core.data.synth import ensure_corpus

    return ensure_corpus("demo-mono", cache_dir=cache_dir, train=160, dev=24, test=24, progress=False)


@pytest.fixture(scope="session")
def _ray_session():
    """Shuts down at the end whatever local Ray the tests left running."""
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_start_2_cpus(_ray_session):
    """A real local Ray with 2 CPUs (Ray's own test fixture name). Started once and kept across
    modules (each start costs seconds); a test that needs Ray down shuts it down itself, and the
    next module that asks for it starts a fresh one."""
    import ray

    from cluster.local import init_ray

    if not ray.is_initialized():
        init_ray(num_cpus=2)
    yield ray


@pytest.fixture(scope="module")
def s3_server():
    """A real S3-compatible server (moto) on 127.0.0.1 with a bucket ``speech``; yields the
    environment a client needs (endpoint and dummy credentials) and a boto3 client."""
    import socket
    import subprocess
    import sys
    import time

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        for _ in range(300):  # until it accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket="speech")
        yield env, client
    finally:
        server.terminate()
        server.wait()


RAY_FIXTURES = {"ray_start_2_cpus", "asha_run"}


def pytest_collection_modifyitems(config, items):
    """``ray``: the test starts Ray (the fixture, a CLI process or a cluster of its own); ``slow``:
    it trains in-process for tens of seconds. ``make test-fast`` runs the rest (-m "not ray and not slow")."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
