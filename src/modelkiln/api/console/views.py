"""The console's request handlers: sign-in, the jobs list, a job's page, creating, stopping and deleting jobs.

Every handler but sign-in finds the session first and acts for its account only: jobs are read with the
session's account id, so another account's job is "not found" (404), never shown. Every POST checks the
session's CSRF token; state changes go through the same functions the SageMaker API runs.
"""
from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.templating import Jinja2Templates

from modelkiln.api import sagemaker
from modelkiln.api.console import artifacts, devices, forms, listing, pages
from modelkiln.api.console.nav import SECTIONS
from modelkiln.api.console.sessions import (
    COOKIE, COOKIE_PATH, SIGN_IN_COOKIE, SIGN_IN_LIFETIME_S, Session, SessionBook, SignInFailed,
)
from modelkiln.api.services import Services
from modelkiln.auth import Principal
from modelkiln.errors import ValidationError
from modelkiln.jobs import validation
from modelkiln.jobs.errors import JobError, JobExists, JobNotFound
from modelkiln.jobs.model import ACTIVE, COMPLETED, DEFAULT_REGION, Job
from modelkiln.storage import BucketAlreadyOwnedByYou, StorageError

log = logging.getLogger("kiln.console")

TEMPLATES = Path(__file__).with_name("templates")
_JOB_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")  # CompilationJobName's pattern in the service model
MAX_LOG_LINES = 2000  # per poll of a job's log
MAX_PAGE_LOG_LINES = 10000  # on the page itself; the rest through `kiln logs` or the log endpoint
SMALL_FORM = {"max_files": 0, "max_fields": 20, "max_part_size": 64 * 1024}


class Console:
    """The handlers, with what they share: the services, the session book and the templates."""

    def __init__(self, services: Services, book: SessionBook) -> None:
        self.services = services
        self.book = book
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                 undefined=jinja2.StrictUndefined)
        self.templates = Jinja2Templates(env=env)
        self.reports = artifacts.ReportCache(services.objects)

    # ---- shared ------------------------------------------------------------------------------------

    def render(self, request: Request, template: str, session: Session | None, status: int = 200,
               **context: Any) -> Response:
        context = {"session": session, "csrf": self.book.csrf_token(session) if session else "",
                   "nav": SECTIONS, "active": "", **context}
        return self.templates.TemplateResponse(request, template, context, status_code=status)

    async def session_of(self, request: Request) -> Session | None:
        return await run_in_threadpool(self.book.read, request.cookies.get(COOKIE))

    async def signed_in(self, request: Request) -> Session:
        """The request's session; HTTPException 401 (pages turn it into the sign-in form) when there is none."""
        session = await self.session_of(request)
        if session is None:
            raise HTTPException(401, "Sign in to use the console.")
        return session

    async def posted(self, request: Request, **limits: Any) -> tuple[Session, FormData]:
        """A POST's session and form, after the checks every state change needs: a session, the same origin,
        and this session's CSRF token in the form."""
        session = await self.signed_in(request)
        same_origin(request)
        try:
            form = await request.form(**(limits or SMALL_FORM))
        except MultiPartException as exc:
            raise HTTPException(400, f"The form could not be read: {exc.message}") from None
        token = form.get("csrf")
        if not isinstance(token, str) or not self.book.csrf_ok(session, token):
            await form.close()
            raise HTTPException(403, "The form's security token is missing or belongs to another session; "
                                     "reload the page and try again.")
        return session, form

    async def job_of(self, session: Session, name: str) -> Job:
        """The session's account's job of that name; 404 for any other (another account's included)."""
        if not _JOB_NAME.fullmatch(name):
            raise HTTPException(404, f"There is no compilation job {name!r}.")
        try:
            return await run_in_threadpool(self.services.jobs.get, session.account_id, name)
        except JobNotFound:
            raise HTTPException(404, f"There is no compilation job {name} in account {session.account_id}.") \
                from None

    # ---- signing in and out ------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        session = await self.session_of(request)
        return RedirectResponse("/console/jobs" if session else "/console/sign-in", 303)

    async def sign_in_form(self, request: Request, problem: str = "", status: int = 200,
                           access_key_id: str = "") -> Response:
        nonce = self.book.sign_in_nonce()
        response = self.render(request, "sign_in.html", None, status, token=self.book.sign_in_token(nonce),
                               problem=problem, access_key_id=access_key_id)
        response.set_cookie(SIGN_IN_COOKIE, nonce, max_age=SIGN_IN_LIFETIME_S, path=COOKIE_PATH, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    async def sign_in(self, request: Request) -> Response:
        same_origin(request)
        try:
            form = await request.form(**SMALL_FORM)
        except MultiPartException as exc:
            raise HTTPException(400, f"The form could not be read: {exc.message}") from None
        key_id, secret, token = (str(form.get(k) or "") for k in ("access_key_id", "secret_access_key", "csrf"))
        if not self.book.sign_in_ok(request.cookies.get(SIGN_IN_COOKIE), token):
            return await self.sign_in_form(request, "The sign-in form expired or did not come from this page; "
                                                    "sign in again.", 403, key_id)
        try:
            session = await run_in_threadpool(self.book.sign_in, key_id, secret)
        except SignInFailed as exc:
            return await self.sign_in_form(request, str(exc), 401, key_id)
        log.info("console: account %s signed in with key %s", session.account_id, session.access_key_id)
        response = RedirectResponse("/console/jobs", 303)
        response.set_cookie(COOKIE, self.book.cookie_value(session), max_age=self.book.lifetime_s,
                            expires=self.book.lifetime_s, path=COOKIE_PATH, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        response.delete_cookie(SIGN_IN_COOKIE, path=COOKIE_PATH)
        return response

    async def sign_out(self, request: Request) -> Response:
        session, _ = await self.posted(request)
        self.book.sign_out(session)
        response = RedirectResponse("/console/sign-in", 303)
        response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
        return response

    # ---- the jobs list -----------------------------------------------------------------------------

    async def jobs(self, request: Request) -> Response:
        session = await self.signed_in(request)
        filters = listing.Filters.from_query(request.query_params)
        found = await run_in_threadpool(listing.list_jobs, self.services, session.account_id, filters)
        return self.render(request, "jobs.html", session, active="/console/jobs", filters=filters, listing=found,
                           statuses=forms.statuses(), poll=f"/console/jobs.json?{filters.query()}")

    async def jobs_json(self, request: Request) -> Response:
        session = await self.signed_in(request)
        filters = listing.Filters.from_query(request.query_params)
        found = await run_in_threadpool(listing.list_jobs, self.services, session.account_id, filters)
        return JSONResponse({"jobs": [row.json() for row in found.rows], "problem": found.problem,
                             "active": any(row.active for row in found.rows)})

    # ---- creating a job ----------------------------------------------------------------------------

    async def new_job(self, request: Request) -> Response:
        session = await self.signed_in(request)
        draft = forms.JobDraft(bucket=default_bucket(session.account_id))
        return self.new_job_page(request, session, draft)

    def new_job_page(self, request: Request, session: Session, draft: forms.JobDraft, status: int = 200,
                     errors: dict[str, str] | None = None, problem: str = "", reupload: bool = False) -> Response:
        return self.render(request, "new_job.html", session, status, active="/console/jobs", draft=draft,
                           choices=forms.choices(), errors=errors or {}, problem=problem, reupload=reupload)

    async def create_job(self, request: Request) -> Response:
        # No size limit on the file part: an archive may be gigabytes, spooled to disk as S3 PUT would take it.
        session, form = await self.posted(request, max_files=1, max_fields=30, max_part_size=256 * 1024)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(form.close)
            draft = forms.JobDraft.from_form(form)
            upload = form.get("model")
            file = upload if isinstance(upload, UploadFile) and upload.filename else None
            try:
                name = await run_in_threadpool(self._create, session, draft, file)
            except ValidationError as exc:
                place = forms.error_place(exc.field)
                errors = {place: str(exc)} if place else {}
                return self.new_job_page(request, session, draft, 400, errors, "" if place else str(exc),
                                         reupload=file is not None)
            except (JobError, StorageError) as exc:
                return self.new_job_page(request, session, draft, 400, problem=str(exc), reupload=file is not None)
        return RedirectResponse(f"/console/jobs/{quote(name)}", 303)

    def _create(self, session: Session, draft: forms.JobDraft, file: UploadFile | None) -> str:
        """Upload the archive (if one came), then CreateCompilationJob exactly as the API runs it."""
        if file is None and not draft.model_uri:
            raise ValidationError("model", "choose a model.tar.gz to upload, or give the s3:// URI of one "
                                           "already in your bucket")
        key = draft.upload_key()
        model_uri = f"s3://{draft.bucket}/{key}" if file is not None else draft.model_uri
        params = draft.request(session.account_id, model_uri)
        # The API's checks before anything is written: a request it would refuse uploads nothing.
        validation.validate_create_compilation_job(params, session.account_id)
        if self.services.jobs.exists(session.account_id, draft.name):
            raise JobExists(session.account_id, draft.name)
        if file is not None:
            self._upload(session.account_id, draft.bucket, key, file)
        sagemaker.create_compilation_job(self.services, principal(session), params)
        log.info("console: account %s created compilation job %s", session.account_id, draft.name)
        return draft.name

    def _upload(self, account_id: str, bucket: str, key: str, file: UploadFile) -> None:
        try:
            with contextlib.suppress(BucketAlreadyOwnedByYou):
                self.services.objects.create_bucket(account_id, bucket)
            file.file.seek(0)
            self.services.objects.put_object(account_id, bucket, key, file.file, content_type="application/gzip")
        except StorageError as exc:
            raise ValidationError("bucket", f"cannot upload to s3://{bucket}/{key}: {exc.message}") from None

    # ---- one job -----------------------------------------------------------------------------------

    async def job(self, request: Request) -> Response:
        session = await self.signed_in(request)
        job = await self.job_of(session, request.path_params["name"])
        return await self.job_page(request, session, job)

    async def devices(self, request: Request) -> Response:
        return await devices.devices_page(self, request)

    async def device_job(self, request: Request) -> Response:
        return await devices.device_job_page(self, request)

    async def log_of(self, session: Session, job: Job) -> list[tuple[float, str]]:
        try:
            return await run_in_threadpool(self.services.jobs.read_log, session.account_id, job.name)
        except JobNotFound:  # deleted a moment ago
            raise HTTPException(404, f"There is no compilation job {job.name}.") from None

    async def job_page(self, request: Request, session: Session, job: Job, status: int = 200,
                       problem: str = "") -> Response:
        entries = await self.log_of(session, job)
        report = None
        if job.status == COMPLETED:
            report = await run_in_threadpool(self.reports.get, session.account_id, job)
        shown = entries[-MAX_PAGE_LOG_LINES:]
        return self.render(
            request, "job.html", session, status, active="/console/jobs", job=job, problem=problem,
            row=pages.job_row(job, time.time()), failure=pages.failure_of(job.failure_reason),
            input_settings=pages.settings_of(job.input_config), output_settings=pages.settings_of(job.output_config),
            stopping_settings=pages.settings_of(job.stopping_condition),
            report=pages.report_view(report.report) if report and report.report else None,
            report_problem=report.problem if report else "", log_lines=[log_line(t, line) for t, line in shown],
            log_omitted=len(entries) - len(shown), log_next=len(entries), url=job_url(job.name))

    async def job_log(self, request: Request) -> Response:
        """The log lines after index ?after=N, and the job's status: what the job page polls while it runs."""
        session = await self.signed_in(request)
        job = await self.job_of(session, request.path_params["name"])
        after = request.query_params.get("after", "0")
        start = int(after) if after.isdigit() else 0
        entries = await self.log_of(session, job)
        lines = entries[start:start + MAX_LOG_LINES]
        return JSONResponse({"lines": [log_line(t, line) for t, line in lines], "next": start + len(lines),
                             "status": job.status, "active": job.status in ACTIVE,
                             "duration": pages.job_row(job, time.time()).duration})

    async def stop_job(self, request: Request) -> Response:
        return await self._change(request, sagemaker.stop_compilation_job, to_list=False)

    async def delete_job(self, request: Request) -> Response:
        return await self._change(request, sagemaker.delete_compilation_job, to_list=True)

    async def _change(self, request: Request, operation: sagemaker.Operation, to_list: bool) -> Response:
        """Stop or delete through the API's own operation; its refusal is shown on the job's page."""
        session, _ = await self.posted(request)
        job = await self.job_of(session, request.path_params["name"])
        try:
            await run_in_threadpool(operation, self.services, principal(session), {"CompilationJobName": job.name})
        except JobNotFound:
            raise HTTPException(404, f"There is no compilation job {job.name}.") from None
        except JobError as exc:
            fresh = await self.job_of(session, job.name)
            return await self.job_page(request, session, fresh, 409, problem=str(exc))
        return RedirectResponse("/console/jobs" if to_list else job_url(job.name), 303)

    # ---- downloads ---------------------------------------------------------------------------------

    async def artifact(self, request: Request) -> Response:
        session = await self.signed_in(request)
        job = await self.job_of(session, request.path_params["name"])
        try:
            info, reader = await run_in_threadpool(artifacts.open_artifact, self.services.objects,
                                                   session.account_id, job)
        except artifacts.NoArtifact as exc:
            raise HTTPException(404, str(exc)) from None
        filename = info.key.rsplit("/", 1)[-1] or "model.tar.gz"
        return StreamingResponse(artifacts.chunks(reader), media_type="application/gzip",
                                 headers={"Content-Length": str(info.size),
                                          "Content-Disposition": attachment(filename)})

    async def report_json(self, request: Request) -> Response:
        session = await self.signed_in(request)
        job = await self.job_of(session, request.path_params["name"])
        result = await run_in_threadpool(self.reports.get, session.account_id, job)
        if result.report is None:
            raise HTTPException(404, result.problem or f"compilation job {job.name} has no report yet")
        return JSONResponse(result.report, headers={"Content-Disposition": attachment(f"{job.name}-report.json")})

    # ---- errors ------------------------------------------------------------------------------------

    async def http_error(self, request: Request, exc: Exception) -> Response:
        """Starlette's HTTPException as a console page (JSON for the polled endpoints); 401 -> sign in."""
        assert isinstance(exc, HTTPException)
        wants_json = request.url.path.endswith(".json")
        if wants_json:
            return JSONResponse({"error": exc.detail}, exc.status_code)
        if exc.status_code == 401 and request.method == "GET":
            return RedirectResponse("/console/sign-in", 303)
        session = await self.session_of(request)
        return self.render(request, "error.html", session, exc.status_code, code=exc.status_code,
                           message=exc.detail)


def same_origin(request: Request) -> None:
    """Refuse a POST a browser says came from another site (defence in depth beside SameSite and CSRF)."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise HTTPException(403, "This form was posted from another site.")
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise HTTPException(403, "This form was posted from another site.")


def principal(session: Session) -> Principal:
    """The session as the API's operations see a caller."""
    return Principal(session.account_id, session.access_key_id, DEFAULT_REGION, "sagemaker")


def default_bucket(account_id: str) -> str:
    """The bucket the form suggests for uploads: the account's own by name (bucket names are global)."""
    return f"kiln-console-{account_id}"


def job_url(name: str) -> str:
    return f"/console/jobs/{quote(name)}"


def log_line(epoch: float, line: str) -> dict[str, str]:
    return {"t": pages.fmt_time(epoch).removesuffix(" UTC")[11:], "text": line}


def attachment(filename: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    return f'attachment; filename="{safe}"'

