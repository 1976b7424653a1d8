"""Kiln's web console at /console/ on the API's port: sign in with an access key, watch and create jobs.

    GET  /console/                      -> the jobs list, or the sign-in form
    GET  /console/sign-in, POST         sign in (access key id + secret key; a signed session cookie)
    POST /console/sign-out
    GET  /console/jobs[?status=&name=&target=&page=]   and jobs.json (what the list polls)
    GET  /console/new-job, POST /console/jobs          create a job (upload a model.tar.gz)
    GET  /console/jobs/NAME             request, stage timeline, candidates, latency chart, notes, log
    GET  /console/jobs/NAME/log.json?after=N           log lines after N, and the status (polled)
    POST /console/jobs/NAME/stop, /delete
    GET  /console/jobs/NAME/artifact, /report.json     downloads, read as the signed-in account
    GET  /console/static/...            the console's CSS and JavaScript, from this package
(The navigation is nav.py; the device pages are devices.py.)

A browser never signs with SigV4, so a request under /console/ that carries a SigV4 signature (an
Authorization header or a presigned query) is S3's, not the console's: a bucket named "console" stays usable.
"""
from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelkiln.api.console.sessions import SECRET_FILE, SessionBook, server_key
from modelkiln.api.console.views import Console
from modelkiln.api.services import Services

PREFIX = "/console"
STATIC = Path(__file__).with_name("static")
log = logging.getLogger("kiln.console")

# Same-origin everything; no inline script or style, so an injected tag could not run even if it got through.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                                 b"base-uri 'none'; object-src 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]
NO_STORE = (b"cache-control", b"no-store")  # pages and JSON carry an account's data: never cached
# A presigned URL's parameters, SigV4's and the SigV2 ones boto3 still makes by default (S3 refuses those
# with its own error, which is the answer such a request should get).
PRESIGNED_PARAMS = {"x-amz-signature", "x-amz-credential", "x-amz-algorithm", "awsaccesskeyid", "signature"}


def serves(scope: Scope) -> bool:
    """Whether a request is the console's: under /console and not signed for AWS (a signed one is S3's)."""
    path = scope.get("path", "")
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return False
    if any(name == b"authorization" for name, _ in scope.get("headers", ())):
        return False
    query = scope.get("query_string", b"").decode("latin-1")
    return not {name.lower() for name, _ in parse_qsl(query, keep_blank_values=True)} & PRESIGNED_PARAMS


def create_console(services: Services, key_path: Path | None = None) -> ASGIApp:
    """The console app; its signing key lives at key_path (default: beside the accounts' keys.json)."""
    book = SessionBook(services.accounts, server_key(key_path or services.accounts.path.with_name(SECRET_FILE)))
    console = Console(services, book)
    app = Starlette(routes=routes(console), exception_handlers={HTTPException: console.http_error})
    return _Guarded(app)


def routes(c: Console) -> list[Route | Mount]:
    get, post = ["GET"], ["POST"]
    return [
        Route("/console", c.home, methods=get),
        Route("/console/", c.home, methods=get),
        Route("/console/sign-in", c.sign_in_form, methods=get),
        Route("/console/sign-in", c.sign_in, methods=post),
        Route("/console/sign-out", c.sign_out, methods=post),
        Route("/console/jobs", c.jobs, methods=get),
        Route("/console/jobs", c.create_job, methods=post),
        Route("/console/jobs.json", c.jobs_json, methods=get),
        Route("/console/new-job", c.new_job, methods=get),
        Route("/console/jobs/{name}", c.job, methods=get),
        Route("/console/jobs/{name}/log.json", c.job_log, methods=get),
        Route("/console/jobs/{name}/stop", c.stop_job, methods=post),
        Route("/console/jobs/{name}/delete", c.delete_job, methods=post),
        Route("/console/jobs/{name}/artifact", c.artifact, methods=get),
        Route("/console/jobs/{name}/report.json", c.report_json, methods=get),
        Route("/console/devices", c.devices, methods=get),
        Route("/console/device-jobs/{name}", c.device_job, methods=get),
        Mount("/console/static", StaticFiles(directory=STATIC), name="static"),
    ]


class _Guarded:
    """Adds the security headers to every console response, and turns an unexpected error into a plain 500
    page (logged with its traceback) instead of letting it escape to the S3/SageMaker app around it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False
        static = scope.get("path", "").startswith(PREFIX + "/static/")

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", [])) + SECURITY_HEADERS + ([] if static else [NO_STORE])
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except ClientDisconnect:
            log.info("console: client disconnected during %s %s", scope.get("method"), scope.get("path"))
        except Exception:  # noqa: BLE001 - a bug: log it, answer 500 without internals
            log.exception("console: %s %s failed", scope.get("method"), scope.get("path"))
            if not started:
                await HTMLResponse("<!doctype html><title>Error</title><p>The console hit an internal error. "
                                   "Retry, or ask the operator to look at the server log.</p>",
                                   500)(scope, receive, send_with_headers)
