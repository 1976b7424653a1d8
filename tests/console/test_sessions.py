"""Console sessions without a server: the secret check, the signed cookie, expiry, sign-out, CSRF tokens, and
the server key file."""
from __future__ import annotations

import os

import pytest

from modelkiln.api.console.sessions import LIFETIME_S, SessionBook, SignInFailed, server_key
from modelkiln.auth import AccountStore
from modelkiln.errors import KilnError


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def accounts(tmp_path):
    return AccountStore(tmp_path / "keys.json")


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def book(accounts, clock, tmp_path):
    return SessionBook(accounts, server_key(tmp_path / "console-secret"), clock=clock)


def test_only_the_keys_own_secret_signs_in(accounts, book):
    first, second = accounts.create_account(), accounts.create_account()
    session = book.sign_in(first.access_key_id, first.secret_access_key)
    assert (session.account_id, session.access_key_id) == (first.account_id, first.access_key_id)
    failures = []
    for key_id, secret in ((first.access_key_id, second.secret_access_key),  # another key's real secret
                           (first.access_key_id, first.secret_access_key[:-1]),
                           (first.access_key_id, ""),
                           ("AKIANOSUCHKEY0000000", first.secret_access_key),
                           (first.access_key_id, "\udcff" + first.secret_access_key)):  # not even UTF-8
        with pytest.raises(SignInFailed) as failed:
            book.sign_in(key_id, secret)
        failures.append(str(failed.value))
    assert len(set(failures)) == 1  # an unknown key and a wrong secret read the same


def test_the_cookie_round_trips_and_any_change_to_it_is_refused(accounts, book, clock, tmp_path):
    creds = accounts.create_account()
    other = accounts.create_account()
    session = book.sign_in(creds.access_key_id, creds.secret_access_key)
    cookie = book.cookie_value(session)
    assert creds.secret_access_key not in cookie
    assert book.read(cookie) == session
    sid, account, key_id, expires, mac = cookie.split(".")
    forged = [
        ".".join([sid, other.account_id, key_id, expires, mac]),  # someone else's account
        ".".join([sid, account, other.access_key_id, expires, mac]),
        ".".join([sid, account, key_id, str(int(expires) + 3600), mac]),  # a longer life
        ".".join([sid, account, key_id, expires, mac[:-1] + ("A" if mac[-1] != "A" else "B")]),
        cookie + ".x", "", "garbage", None,
    ]
    for value in forged:
        assert book.read(value) is None, value
    elsewhere = SessionBook(accounts, server_key(tmp_path / "other-secret"), clock=clock)
    assert elsewhere.read(cookie) is None  # another server key signs differently


def test_a_session_ends_when_it_expires_is_signed_out_or_its_key_is_revoked(accounts, book, clock):
    creds = accounts.create_account()
    session = book.sign_in(creds.access_key_id, creds.secret_access_key)
    cookie = book.cookie_value(session)
    clock.now += LIFETIME_S - 1
    assert book.read(cookie) == session
    clock.now += 1
    assert book.read(cookie) is None  # 8 hours on

    clock.now += 10
    again = book.sign_in(creds.access_key_id, creds.secret_access_key)
    kept = book.sign_in(creds.access_key_id, creds.secret_access_key)
    book.sign_out(again)
    assert book.read(book.cookie_value(again)) is None
    assert book.read(book.cookie_value(kept)) == kept  # one session's sign-out leaves the others

    accounts.revoke(creds.access_key_id)
    assert book.read(book.cookie_value(kept)) is None


def test_csrf_tokens_belong_to_one_session(accounts, book, clock):
    creds = accounts.create_account()
    first = book.sign_in(creds.access_key_id, creds.secret_access_key)
    second = book.sign_in(creds.access_key_id, creds.secret_access_key)
    assert book.csrf_ok(first, book.csrf_token(first))
    assert not book.csrf_ok(first, book.csrf_token(second))
    assert not book.csrf_ok(first, "")
    nonce = book.sign_in_nonce()
    assert book.sign_in_ok(nonce, book.sign_in_token(nonce))
    assert not book.sign_in_ok(book.sign_in_nonce(), book.sign_in_token(nonce))  # another browser's nonce
    assert not book.sign_in_ok(None, book.sign_in_token(nonce))
    clock.now += 3601
    assert not book.sign_in_ok(nonce, book.sign_in_token(nonce))  # a stale form


def test_the_server_key_is_made_once_with_mode_0600(tmp_path):
    path = tmp_path / "data" / "console-secret"
    key = server_key(path)
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert server_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["console-secret"]  # no temp file left behind
    os.chmod(path, 0o644)
    assert server_key(path) == key and path.stat().st_mode & 0o777 == 0o600  # tightened
    path.write_text("not a key\n")
    with pytest.raises(KilnError, match="not a console key"):
        server_key(path)
