"""Fixtures for the storage tests: a store of either backend (the moto S3 server is in tests/conftest.py)."""
from __future__ import annotations

import uuid

import pytest

from modelkiln.storage import LocalObjectStore, ObjectStore

ACCOUNT = "111111111111"
OTHER = "222222222222"


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
