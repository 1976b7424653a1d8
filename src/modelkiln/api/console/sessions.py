"""Console sign-in: an access key's secret checked against the AccountStore, then a signed session cookie.

The cookie holds no secret: a random session id, the account, the access key id and the expiry, signed with
HMAC-SHA256 under a server key kept beside keys.json (mode 0600, made on first use; replicas that share the
key file share it too). Every request looks the access key up again, so revoking it (`kiln accounts revoke`)
ends its sessions on every replica. Signing out ends one session in this process: its id is remembered as
revoked until the moment it would have expired anyway.

CSRF: each session's forms carry a token derived from the session id (HMAC under the same key), checked on
every POST; the sign-in form, before any session exists, pairs its token with a short-lived nonce cookie.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelkiln.auth import AccountStore
from modelkiln.errors import KilnError

log = logging.getLogger("kiln.console")

COOKIE = "kiln_console"
SIGN_IN_COOKIE = "kiln_console_sign_in"
COOKIE_PATH = "/console"
LIFETIME_S = 8 * 3600
SIGN_IN_LIFETIME_S = 3600  # how long a sign-in form stays usable
SECRET_FILE = "console-secret"
# A stand-in compared against when the key id is unknown, so a miss takes as long as a wrong secret.
_NO_SECRET = b"\0" * 40
_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
_ACCOUNT = re.compile(r"[0-9]{12}")
_KEY_ID = re.compile(r"[A-Z0-9]{16,128}")


class SignInFailed(KilnError):
    """The access key id is unknown or the secret is not its secret (the two are not told apart)."""

    def __init__(self) -> None:
        super().__init__("That access key id and secret access key do not match a key of this Kiln server.")


@dataclass(frozen=True)
class Session:
    """A signed-in browser: which account, through which access key, until when (epoch seconds)."""

    session_id: str
    account_id: str
    access_key_id: str
    expires: int


class SessionBook:
    """Signs, reads and ends console sessions for the accounts of one AccountStore."""

    def __init__(self, accounts: AccountStore, server_key: bytes, *, lifetime_s: int = LIFETIME_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.accounts = accounts
        self._key = server_key
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._ended: dict[str, int] = {}  # session id -> its expiry: signed-out sessions, forgotten once expired
        self._guard = threading.Lock()

    # ---- signing in and out ------------------------------------------------------------------------

    def sign_in(self, access_key_id: str, secret_access_key: str) -> Session:
        """A new session for the key, if the secret is its secret; SignInFailed otherwise.

        The key is found as SigV4 finds it (AccountStore.lookup) and the secret compared in constant time.
        """
        credentials = self.accounts.lookup(access_key_id.strip())
        expected = credentials.secret_access_key.encode() if credentials else _NO_SECRET
        matches = hmac.compare_digest(expected, secret_access_key.strip().encode("utf-8", "replace"))
        if credentials is None or not matches:
            raise SignInFailed()
        expires = int(self._clock()) + self.lifetime_s
        return Session(secrets.token_urlsafe(24), credentials.account_id, credentials.access_key_id, expires)

    def sign_out(self, session: Session) -> None:
        """End the session here: its cookie is refused from now on, even if a copy of it survives."""
        now = int(self._clock())
        with self._guard:
            self._ended = {sid: exp for sid, exp in self._ended.items() if exp > now}
            self._ended[session.session_id] = session.expires

    # ---- the cookie --------------------------------------------------------------------------------

    def cookie_value(self, session: Session) -> str:
        payload = f"{session.session_id}.{session.account_id}.{session.access_key_id}.{session.expires}"
        return f"{payload}.{self._mac('session', payload)}"

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie names, if its signature holds, it has not expired or been signed out, and its
        access key still exists for that account; None otherwise."""
        session = self._parse(cookie or "")
        if session is None or session.expires <= self._clock():
            return None
        with self._guard:
            if session.session_id in self._ended:
                return None
        credentials = self.accounts.lookup(session.access_key_id)
        if credentials is None or credentials.account_id != session.account_id:
            return None  # the key was revoked: its sessions end with it
        return session

    def _parse(self, cookie: str) -> Session | None:
        parts = cookie.split(".")
        if len(parts) != 5:
            return None
        sid, account, key_id, expires, mac = parts
        if not (_ID.fullmatch(sid) and _ACCOUNT.fullmatch(account) and _KEY_ID.fullmatch(key_id)
                and expires.isdigit() and len(expires) < 16):
            return None
        if not hmac.compare_digest(mac, self._mac("session", ".".join(parts[:4]))):
            return None
        return Session(sid, account, key_id, int(expires))

    # ---- CSRF --------------------------------------------------------------------------------------

    def csrf_token(self, session: Session) -> str:
        """The token this session's forms carry: derived, so nothing is stored, and useless for any other session."""
        return self._mac("csrf", session.session_id)

    def csrf_ok(self, session: Session, token: str) -> bool:
        return hmac.compare_digest(self.csrf_token(session), token)

    def sign_in_nonce(self) -> str:
        """A fresh nonce for the sign-in form's cookie: it ties the form's token to this browser."""
        return f"{secrets.token_urlsafe(24)}.{int(self._clock()) + SIGN_IN_LIFETIME_S}"

    def sign_in_token(self, nonce: str) -> str:
        return self._mac("sign-in", nonce)

    def sign_in_ok(self, nonce: str | None, token: str) -> bool:
        """The sign-in form's token matches the browser's nonce cookie, and the form has not gone stale."""
        if not nonce:
            return False
        _, _, expires = nonce.partition(".")
        if not expires.isdigit() or int(expires) <= self._clock():
            return False
        return hmac.compare_digest(self.sign_in_token(nonce), token)

    def _mac(self, purpose: str, text: str) -> str:
        digest = hmac.new(self._key, f"{purpose}|{text}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def server_key(path: Path) -> bytes:
    """The console's signing key in `path` (32 random bytes, hex), made with mode 0600 if absent.

    Made as a whole file linked into place, so racing servers never read a half-written key: one link wins
    and every process reads the winner's.
    """
    if not path.exists():
        _create_key(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o); making it 0600", path, mode)
        os.chmod(path, 0o600)
    text = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise KilnError(f"{path} is not a console key (64 hex digits); delete it to have a new one made "
                        "(every console session then ends)")
    return bytes.fromhex(text)


def _create_key(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")  # 0600 from the start
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another server made it first: use theirs
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
