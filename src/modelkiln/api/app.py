"""The ASGI app of `kiln serve`: SageMaker awsJson at `POST /`, Kiln's own routes under /_kiln/, S3 elsewhere.

One port serves both APIs, told apart the way AWS's endpoints would be: an awsJson call is a POST to / with
X-Amz-Target; everything else is an S3 path-style request (bucket names cannot start with '_').
"""
from __future__ import annotations

import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelkiln.api import kiln_routes, s3, sagemaker
from modelkiln.api.services import Services


def create_app(services: Services) -> Starlette:
    async def endpoint(request: Request) -> Response:
        request_id = str(uuid.uuid4())
        if request.method == "POST" and request.url.path == "/" and "x-amz-target" in request.headers:
            return await sagemaker.handle(request, services, request_id)
        if request.url.path.startswith(kiln_routes.PREFIX):
            return await kiln_routes.handle(request, services, request_id)
        return await s3.handle(request, services, request_id)

    methods = ["GET", "HEAD", "PUT", "POST", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", endpoint, methods=methods)])
