"""Kiln's own routes, beside the AWS APIs: a health check, and job logs (signed like any SageMaker call).

    GET /_kiln/health                    -> {"status": "ok"}            (unsigned, for load balancers)
    GET /_kiln/jobs/NAME/logs            -> text/plain, one line per log line, "ISO-time  line"
"""
from __future__ import annotations

import re
from datetime import UTC, datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from modelkiln.api.errors import json_error
from modelkiln.api.services import Services
from modelkiln.api.signing import verify
from modelkiln.errors import ValidationError

PREFIX = "/_kiln/"
_LOGS = re.compile(r"/_kiln/jobs/([^/]+)/logs")


async def handle(request: Request, services: Services, request_id: str) -> Response:
    if request.url.path == "/_kiln/health" and request.method in ("GET", "HEAD"):
        return JSONResponse({"status": "ok"})
    try:
        match = _LOGS.fullmatch(request.url.path)
        if match is None or request.method != "GET":
            raise ValidationError("path", f"no such Kiln route: {request.method} {request.url.path}")
        verified = await verify(request, services, "sagemaker", b"")
        entries = await run_in_threadpool(services.jobs.read_log, verified.principal.account_id, match.group(1))
    except Exception as exc:  # noqa: BLE001 - mapped in api/errors.py
        return json_error(exc, request_id)
    return PlainTextResponse("".join(f"{format_time(t)}  {line}\n" for t, line in entries),
                             headers={"x-amzn-RequestId": request_id})


def format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
