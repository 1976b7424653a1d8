"""The parts of an HTTP request that SigV4 signs, as the server received them."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field


def _text(value: str | bytes) -> str:
    # HTTP clients (http.client under botocore) send header text as latin-1, and SigV4 signs the str, so
    # latin-1 turns the received bytes back into exactly the characters the client signed.
    return value.decode("latin-1") if isinstance(value, bytes) else value


class Headers:
    """Case-insensitive multi-dict of header fields, in the order received."""

    def __init__(self, fields: Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]] = ()) -> None:
        pairs = fields.items() if isinstance(fields, Mapping) else fields
        self._fields: list[tuple[str, str]] = [(_text(k).lower(), _text(v)) for k, v in pairs]

    def get(self, name: str) -> str | None:
        """The first value of a field, or None."""
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        """Every value of a field, in order."""
        name = name.lower()
        return [v for k, v in self._fields if k == name]

    def names(self) -> set[str]:
        """Every field name present, lower-cased."""
        return {k for k, _ in self._fields}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self.names()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._fields)

    def __repr__(self) -> str:
        # Authorization and security tokens are not secrets (the signature proves one request only), but
        # keep them out of logs anyway.
        shown = [(k, "…" if k in ("authorization", "x-amz-security-token") else v) for k, v in self._fields]
        return f"Headers({shown!r})"


@dataclass(frozen=True)
class HttpRequest:
    """Method, path (percent-encoded, as received), raw query string (no '?'), headers, and the body.

    `body` is None when the server streams the body instead of holding it; then `modelkiln.auth.payload`
    checks it as it is read.
    """

    method: str
    path: str
    query: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes | None = b""

    def __post_init__(self) -> None:
        if not isinstance(self.headers, Headers):
            object.__setattr__(self, "headers", Headers(self.headers))
