"""Keyset pagination: a NextToken is the last row's sort key and id, base64url-encoded JSON.

Unlike an offset, a keyset token neither repeats nor skips rows when jobs are created or deleted between pages;
only a change to the sort key itself (a job changing status while sorted by Status) can move a row.
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import sqlalchemy as sa

from modelkiln.jobs.errors import InvalidToken

MAX_TOKEN_CHARS = 8192  # the service model's NextToken bound
_BIGINT = (-(2**63), 2**63 - 1)  # what SQLite's INTEGER and PostgreSQL's BIGINT hold


def encode(kind: str, value: Any, row_id: Any) -> str:
    """A token for "after this row" in the listing `kind` (e.g. "CreationTime/Ascending", "tags")."""
    raw = json.dumps({"k": kind, "v": value, "i": row_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(token: str, kind: str, value_type: type | tuple[type, ...], id_type: type = int) -> tuple[Any, Any]:
    """(value, id) from a token this module issued for `kind`, of the given types; InvalidToken otherwise."""
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken("too long")
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, RecursionError) as exc:  # json's and UnicodeDecodeError are ValueErrors
        raise InvalidToken("not a token Kiln issued") from exc
    if not isinstance(data, dict) or set(data) != {"k", "v", "i"}:
        raise InvalidToken("not a token Kiln issued")
    if data["k"] != kind:
        raise InvalidToken(f"it was issued for {data['k']}, not {kind}")
    value, row_id = data["v"], data["i"]
    # bool is an int to isinstance, and a forged token must not reach SQL with the wrong types
    if isinstance(value, bool) or not isinstance(value, value_type) or not isinstance(row_id, id_type) \
            or isinstance(row_id, bool):
        raise InvalidToken("not a token Kiln issued")
    # A forged value the database cannot compare would fail the query (an internal error), not the token.
    for item in (value, row_id):
        if isinstance(item, int) and not _BIGINT[0] <= item <= _BIGINT[1]:
            raise InvalidToken("it holds an integer past 64 bits")
        if isinstance(item, str) and not _is_text(item):
            raise InvalidToken("it holds a lone UTF-16 surrogate")
    return value, row_id


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def after(columns: tuple[sa.ColumnElement[Any], sa.ColumnElement[Any]], key: tuple[Any, Any],
          descending: bool) -> sa.ColumnElement[bool]:
    """Rows strictly after `key` in (sort column, id) order: (c > v) OR (c = v AND id > i), mirrored if descending."""
    (column, id_column), (value, row_id) = columns, key
    if descending:
        return sa.or_(column < value, sa.and_(column == value, id_column < row_id))
    return sa.or_(column > value, sa.and_(column == value, id_column > row_id))
