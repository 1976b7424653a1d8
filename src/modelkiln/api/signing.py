"""From a Starlette request to a verified principal: SigV4 checked with botocore's signer (see modelkiln.auth)."""
from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from modelkiln.api.services import Services
from modelkiln.auth import HttpRequest, Verified, authenticate


def as_http_request(request: Request, body: bytes | None) -> HttpRequest:
    """The request as the client signed it: path and query exactly as received, every header field."""
    return HttpRequest(
        method=request.method,
        path=request.scope.get("raw_path", request.url.path.encode()).decode("latin-1").partition("?")[0],
        query=request.scope.get("query_string", b"").decode("latin-1"),
        headers=request.headers.raw,
        body=body,
    )


async def verify(request: Request, services: Services, service: str, body: bytes | None) -> Verified:
    """Check the signature (and, when `body` is given, the body hash); AuthError if it does not hold.

    With body=None the body is streamed later through `modelkiln.auth.body_decoder(verified, headers)`.
    """
    return await run_in_threadpool(
        authenticate, as_http_request(request, body), services.accounts.lookup, services=(service,))
