"""The ASGI app of `kiln serve`: SageMaker awsJson at `POST /` (and Kiln's own device operations, X-Amz-Target
Kiln.*, api/kiln_api.py), Kiln's own routes under /_kiln/, the web console under /console/ (api/console/),
S3 elsewhere.

One port serves both APIs, told apart the way AWS's endpoints would be: an awsJson call is a POST to / with
X-Amz-Target; everything else is an S3 path-style request (bucket names cannot start with '_').
"""
from __future__ import annotations

import uuid

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from modelkiln.api import console, kiln_api, kiln_routes, s3, sagemaker
from modelkiln.api.errors import client_disconnected
from modelkiln.api.services import Services


class _AnyPath(Convertor[str]):
    """Every path, line breaks included: Starlette's `path` stops at one (`.`), which sent a key holding
    %0A to a plain-text 404 instead of the S3 handler."""

    regex = "[\\s\\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("any_path", _AnyPath())


def create_app(services: Services) -> Starlette:
    return Starlette(routes=[Route("/{path:any_path}", _Endpoint(services))])


class _Endpoint:
    """Every request, whatever its method. An ASGI app rather than a function, so the Route passes every
    method through: one S3 does not serve (PATCH, OPTIONS) gets S3's MethodNotAllowed, not a plain 405."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.console = console.create_console(services)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if console.serves(scope):  # a browser's request: the console is a Starlette app of its own
            await self.console(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await self.dispatch(request, str(uuid.uuid4()))
        except ClientDisconnect:  # the client is gone: there is no one to answer
            client_disconnected(request.method, request.scope.get("raw_path", b"").decode("latin-1"))
            return
        await response(scope, receive, send)

    async def dispatch(self, request: Request, request_id: str) -> Response:
        if request.method == "POST" and request.url.path == "/" and "x-amz-target" in request.headers:
            if request.headers["x-amz-target"].startswith(kiln_api.TARGET_PREFIX):
                return await kiln_api.handle(request, self.services, request_id)
            return await sagemaker.handle(request, self.services, request_id)
        if request.url.path.startswith(kiln_routes.PREFIX):
            return await kiln_routes.handle(request, self.services, request_id)
        return await s3.handle(request, self.services, request_id)
