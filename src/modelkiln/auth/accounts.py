"""Accounts and their access keys, kept in one JSON file that several processes may share.

Writers (`kiln accounts create` while `kiln serve` runs) take an fcntl lock on a sibling `.lock` file, re-read,
change, and replace the file atomically, so no write is lost; readers never lock: they see the old or the new
file whole, and `lookup` re-reads it when it changed on disk.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import string
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from modelkiln.errors import KilnError

_KEY_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits  # 40 of 62 symbols: ~238 bits, copy-paste friendly
FORMAT_VERSION = 1


class AccountError(KilnError):
    """An account or key named by the operator does not exist, or the key file cannot be read."""


@dataclass(frozen=True)
class Credentials:
    """One access key of one account. The secret stays out of repr() so logs never carry it."""

    account_id: str
    access_key_id: str
    secret_access_key: str = field(repr=False)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_account_id(taken: dict[str, Any]) -> str:
    while True:
        candidate = f"{secrets.randbelow(10**12):012d}"
        if candidate not in taken:
            return candidate


def _new_access_key_id(taken: dict[str, Any]) -> str:
    while True:
        candidate = "AKIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
        if candidate not in taken:
            return candidate


def _new_secret() -> str:
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40))


class AccountStore:
    """Accounts and access keys in one JSON file (mode 0600), e.g. DATA_DIR/keys.json."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._guard = threading.Lock()  # the cache below is shared by a server's threads
        self._stamp: tuple[int, int, int] | None = None
        self._data: dict[str, Any] = _empty()

    def __repr__(self) -> str:
        return f"AccountStore({str(self.path)!r})"

    def create_account(self) -> Credentials:
        """Create an account with a fresh 12-digit id and its first access key."""
        with self._writing() as data:
            account_id = _new_account_id(data["accounts"])
            data["accounts"][account_id] = {"created": _now()}
            return _add_key(data, account_id)

    def add_key(self, account_id: str) -> Credentials:
        """Give an existing account another access key (e.g. to rotate the old one out)."""
        with self._writing() as data:
            if account_id not in data["accounts"]:
                raise AccountError(f"no account {account_id!r} in {self.path}")
            return _add_key(data, account_id)

    def revoke(self, access_key_id: str) -> None:
        """Delete an access key; requests signed with it fail from the next lookup on."""
        with self._writing() as data:
            if data["keys"].pop(access_key_id, None) is None:
                raise AccountError(f"no access key {access_key_id!r} in {self.path}")

    def lookup(self, access_key_id: str) -> Credentials | None:
        """The credentials of an access key id, or None; re-reads the file when it changed on disk."""
        entry = self._current()["keys"].get(access_key_id)
        if entry is None:
            return None
        return Credentials(entry["account_id"], access_key_id, entry["secret_access_key"])

    def accounts(self) -> list[str]:
        """Every account id, sorted."""
        return sorted(self._current()["accounts"])

    def access_keys(self, account_id: str) -> list[str]:
        """The access key ids of one account, sorted (never their secrets)."""
        keys = self._current()["keys"]
        return sorted(k for k, entry in keys.items() if entry["account_id"] == account_id)

    def _current(self) -> dict[str, Any]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return _empty()
        # The inode changes on every os.replace, so this catches two writes within one mtime tick too.
        stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
        with self._guard:
            if stamp != self._stamp:
                self._data, self._stamp = self._read(), stamp
            return self._data

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return _empty()
        except (OSError, ValueError) as exc:
            raise AccountError(f"cannot read the key file {self.path}: {exc.__class__.__name__}") from None
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise AccountError(f"{self.path} is not a Kiln key file (version {FORMAT_VERSION})")
        return data

    @contextlib.contextmanager
    def _writing(self) -> Iterator[dict[str, Any]]:
        """Lock, read the file fresh, let the caller change it, and replace it atomically."""
        if not self.path.parent.exists():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self._read()
            yield data
            _write_atomically(self.path, data)
        finally:
            os.close(fd)  # closing releases the flock


def _empty() -> dict[str, Any]:
    return {"version": FORMAT_VERSION, "accounts": {}, "keys": {}}


def _add_key(data: dict[str, Any], account_id: str) -> Credentials:
    access_key_id = _new_access_key_id(data["keys"])
    secret = _new_secret()
    data["keys"][access_key_id] = {"account_id": account_id, "secret_access_key": secret, "created": _now()}
    return Credentials(account_id, access_key_id, secret)


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:  # mkstemp made it 0600 before any secret is written
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
