"""Fixtures for the API's end-to-end tests: a real `kiln serve` process (see kiln_server.py)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.api.kiln_server import Account, KilnServer


@dataclass(frozen=True)
class S3Server:
    """A running `kiln serve` and two accounts on it, for S3 clients."""

    server: KilnServer
    first: Account
    second: Account

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def client(self, account: Account | None = None, **config):
        """A path-style boto3 S3 client signing as account (the first by default)."""
        return self.server.client("s3", account or self.first, **config)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`kiln serve` on the embedded defaults, one per test module, stopped at the module's end."""
    kiln = KilnServer(tmp_path_factory.mktemp("kiln")).start()
    yield kiln
    kiln.stop()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """`kiln serve --workers 1` on a free port with two accounts; stopped (SIGTERM, then SIGKILL) at the end."""
    kiln = KilnServer(tmp_path_factory.mktemp("kiln-s3"), args=["--workers", "1"])
    first, second = kiln.create_account(), kiln.create_account()
    kiln.start(timeout_s=60)
    try:
        yield S3Server(kiln, first, second)
    finally:
        kiln.stop()
