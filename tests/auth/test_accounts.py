"""AccountStore: the key file's permissions, id formats, and no lost writes across processes."""
from __future__ import annotations

import multiprocessing
import re
import stat
from pathlib import Path

import pytest

from modelkiln.auth import AccountError, AccountStore


def test_creates_the_file_0600_in_a_new_folder_0700(tmp_path):
    path = tmp_path / "data" / "keys.json"
    AccountStore(path).create_account()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []  # no temp file left


def test_ids_look_like_aws_and_are_unique(tmp_path):
    store = AccountStore(tmp_path / "keys.json")
    made = [store.create_account() for _ in range(30)]
    for c in made:
        assert re.fullmatch(r"\d{12}", c.account_id)
        assert re.fullmatch(r"AKIA[A-Z0-9]{16}", c.access_key_id)
        assert re.fullmatch(r"[A-Za-z0-9]{40}", c.secret_access_key)
    assert len({c.account_id for c in made}) == 30
    assert len({c.access_key_id for c in made}) == 30
    assert len({c.secret_access_key for c in made}) == 30
    assert store.accounts() == sorted(c.account_id for c in made)


def test_add_key_and_revoke(tmp_path):
    store = AccountStore(tmp_path / "keys.json")
    first = store.create_account()
    second = store.add_key(first.account_id)
    assert second.account_id == first.account_id and second.access_key_id != first.access_key_id
    assert store.access_keys(first.account_id) == sorted([first.access_key_id, second.access_key_id])
    store.revoke(first.access_key_id)
    assert store.lookup(first.access_key_id) is None
    assert store.lookup(second.access_key_id) == second
    with pytest.raises(AccountError):
        store.add_key("000000000000")
    with pytest.raises(AccountError):
        store.revoke(first.access_key_id)


def test_lookup_sees_keys_written_by_another_store(tmp_path):
    server, cli = AccountStore(tmp_path / "keys.json"), AccountStore(tmp_path / "keys.json")
    assert server.lookup("AKIAAAAAAAAAAAAAAAAA") is None  # no file yet
    early = cli.create_account()
    assert server.lookup(early.access_key_id) == early  # caches the file now
    late = cli.create_account()  # very likely within the same mtime tick: the inode tells the change
    assert server.lookup(late.access_key_id) == late
    cli.revoke(early.access_key_id)
    assert server.lookup(early.access_key_id) is None


def test_secrets_stay_out_of_reprs(tmp_path):
    store = AccountStore(tmp_path / "keys.json")
    creds = store.create_account()
    assert creds.secret_access_key not in repr(creds)
    assert creds.secret_access_key not in str(creds)
    assert creds.access_key_id in repr(creds)


def test_a_corrupt_file_is_reported_without_its_content(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text('{"keys": {"AKIA": {"secret_access_key": "hush"')
    with pytest.raises(AccountError) as caught:
        AccountStore(path).lookup("AKIA")
    assert "hush" not in str(caught.value) and str(path) in str(caught.value)


def _create_many(path: str, count: int) -> None:
    store = AccountStore(Path(path))
    for _ in range(count):
        store.create_account()


def test_concurrent_creates_from_two_processes_all_land(tmp_path):
    path = tmp_path / "keys.json"
    ctx = multiprocessing.get_context("spawn")  # no fork of a test process that holds torch and threads
    workers = [ctx.Process(target=_create_many, args=(str(path), 25)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    store = AccountStore(path)
    assert len(store.accounts()) == 50
    assert all(len(store.access_keys(a)) == 1 for a in store.accounts())
