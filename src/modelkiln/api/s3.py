"""The embedded S3 endpoint (path-style) over the object store. Placeholder until the S3 routes land."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from modelkiln.api.errors import s3_error
from modelkiln.api.services import Services
from modelkiln.storage import UnsupportedFeature


async def handle(request: Request, services: Services, request_id: str) -> Response:
    return s3_error(UnsupportedFeature("S3 requests are not served yet"), request_id, request.url.path)
