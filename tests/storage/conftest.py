"""Fixtures for the storage tests: a real moto S3 server on 127.0.0.1, and a store of either backend."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid

import pytest

from modelkiln.storage import LocalObjectStore, ObjectStore

ACCOUNT = "111111111111"
OTHER = "222222222222"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """http://127.0.0.1:<port> of a moto S3 server subprocess, stopped when the session ends."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            pytest.fail(f"moto server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("moto server did not start listening within 30 s")
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def s3_store(endpoint: str):
    """An S3ObjectStore on its own bucket prefix, so tests sharing one server do not collide."""
    from modelkiln.storage.s3 import S3ObjectStore

    return S3ObjectStore(endpoint, "us-east-1", "testing", "testing", bucket_prefix=f"t{uuid.uuid4().hex[:10]}-")


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> ObjectStore:
    """A fresh, empty store of each backend."""
    if request.param == "local":
        return LocalObjectStore(tmp_path / "store")
    return s3_store(request.getfixturevalue("moto_endpoint"))


@pytest.fixture
def bucket(store) -> str:
    """A bucket owned by ACCOUNT in `store`."""
    store.create_bucket(ACCOUNT, "models")
    return "models"
