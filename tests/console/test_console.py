"""The web console end to end: a real `kiln serve`, real boto3 clients, and headless Chromium (Debian's, driven
by Playwright; nothing is downloaded). Screenshots of every page land in the test's tmp dir (`screens/`)."""
from __future__ import annotations

import gzip
import http.client
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.api.kiln_server import Account, KilnServer, job_request, wait_for_job

CHROMIUM = "/usr/bin/chromium"
BUCKET = "console-tests"
JOB_TIMEOUT_MS = 150_000


@dataclass(frozen=True)
class Site:
    """The server, its two accounts, and where screenshots go."""

    kiln: KilnServer
    first: Account
    second: Account
    shots: Path

    def url(self, path: str) -> str:
        return f"{self.kiln.endpoint}{path}"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    kiln = KilnServer(tmp_path_factory.mktemp("kiln-console"), args=["--workers", "1"])
    first, second = kiln.create_account(), kiln.create_account()
    kiln.start(timeout_s=90)
    try:
        yield Site(kiln, first, second, tmp_path_factory.mktemp("screens"))
    finally:
        kiln.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def cnn_job(site: Site, models: Path) -> str:
    """A quick real job of the first account, created through boto3 (not waited for)."""
    s3, sagemaker = site.kiln.client("s3", site.first), site.kiln.client("sagemaker", site.first)
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(models / "cnn_onnx.tar.gz"), BUCKET, "cnn/model.tar.gz")
    sagemaker.create_compilation_job(**job_request(site.first, "console-cnn", f"s3://{BUCKET}/cnn/model.tar.gz",
                                                   output=f"s3://{BUCKET}/out/"))
    return "console-cnn"


@pytest.fixture(scope="module")
def others_job(site: Site, tmp_path_factory) -> str:
    """A job of the second account (a broken archive: it fails fast, and its record and log remain)."""
    broken = tmp_path_factory.mktemp("others") / "model.tar.gz"
    broken.write_bytes(b"the second account's secret model")
    s3, sagemaker = site.kiln.client("s3", site.second), site.kiln.client("sagemaker", site.second)
    s3.create_bucket(Bucket="second-account")
    s3.upload_file(str(broken), "second-account", "m/model.tar.gz")
    sagemaker.create_compilation_job(**job_request(site.second, "second-secret-job",
                                                   "s3://second-account/m/model.tar.gz",
                                                   output="s3://second-account/out/"))
    wait_for_job(sagemaker, "second-secret-job", timeout_s=120)
    return "second-secret-job"


def signed_in(browser: Browser, site: Site, account: Account, **options) -> tuple[BrowserContext, Page]:
    context = browser.new_context(**options)
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.goto(site.url("/console/"))
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    page.fill("input[name=access_key_id]", account.access_key_id)
    page.fill("input[name=secret_access_key]", account.secret_access_key)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/console/jobs$"))
    return context, page


def shot(page: Page, site: Site, name: str) -> Path:
    path = site.shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    return path


# ---- sign-in -------------------------------------------------------------------------------------

def test_sign_in_refuses_a_wrong_secret_and_admits_the_right_one(browser, site):
    context = browser.new_context()
    page = context.new_page()
    page.goto(site.url("/console/jobs"))  # not signed in: sent to the form
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    shot(page, site, "sign-in")
    page.fill("input[name=access_key_id]", site.first.access_key_id)
    page.fill("input[name=secret_access_key]", site.second.secret_access_key)  # a real secret, of another key
    page.click("button[type=submit]")
    expect(page.locator("#sign-in-problem")).to_contain_text("do not match")
    assert not [c for c in context.cookies() if c["name"] == "kiln_console"]
    page.fill("input[name=secret_access_key]", site.first.secret_access_key)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/console/jobs$"))
    expect(page.locator(".account")).to_have_text(f"account {site.first.account_id}")
    cookie = next(c for c in context.cookies() if c["name"] == "kiln_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert site.first.secret_access_key not in cookie["value"]
    context.close()


# ---- jobs ----------------------------------------------------------------------------------------

def test_a_job_created_through_boto3_appears_completes_and_shows_its_report(browser, site, request):
    context, page = signed_in(browser, site, site.first)
    expect(page.locator("header nav a")).to_have_text(["Jobs", "Devices"])
    row = page.locator("tr[data-job=console-cnn]")
    expect(row).to_have_count(0)
    cnn_job = request.getfixturevalue("cnn_job")  # created now, with the page open
    expect(row).to_be_visible()  # the page's polling found it
    expect(row.locator(".status")).to_have_text("COMPLETED", timeout=JOB_TIMEOUT_MS)  # the page polls itself
    expect(row).to_contain_text("ONNX")
    expect(row).to_contain_text("ml_c5")
    shot(page, site, "jobs")

    row.locator("a").click()
    expect(page).to_have_url(re.compile(rf"/console/jobs/{cnn_job}$"))
    expect(page.locator("#job-status")).to_have_text("COMPLETED")
    stages = {name: rest for name, _, rest in (s.partition(" ") for s in page.locator(".stages li").all_inner_texts())}
    assert list(stages)[0] == "fetch" and list(stages)[-1] == "package"
    assert {"convert", "compile", "select"} <= set(stages) and re.fullmatch(r"[0-9.]+ m?s", stages["compile"])
    assert page.locator(".timeline rect").count() >= 4  # fetch, convert, compile, select were timed
    table = page.locator("#candidate-table")
    expect(table).to_contain_text("onnxruntime")
    expect(table.locator("tr.selected")).to_have_count(1)
    assert page.locator("#latency-chart rect").count() >= 1
    expect(page.locator("#latency-chart")).to_contain_text("ms")
    expect(page.locator("#log")).to_contain_text("kiln: job COMPLETED")
    expect(page.locator("table.settings")).to_contain_text('{"kiln-backend": "onnxruntime"}')
    shot(page, site, "job-completed")

    artifact = page.request.get(site.url(f"/console/jobs/{cnn_job}/artifact"))
    assert artifact.status == 200 and artifact.body()[:2] == b"\x1f\x8b"  # a gzip stream
    assert gzip.decompress(artifact.body())  # whole
    report = page.request.get(site.url(f"/console/jobs/{cnn_job}/report.json"))
    assert report.status == 200
    assert report.json()["selected"] == "onnxruntime"
    assert "attachment" in report.headers["content-disposition"]
    context.close()


def test_a_phone_width_screen_shows_the_job_without_sideways_scrolling(browser, site, cnn_job):
    wait_for_job(site.kiln.client("sagemaker", site.first), cnn_job, timeout_s=150)
    context, page = signed_in(browser, site, site.first, viewport={"width": 390, "height": 844},
                              device_scale_factor=2, is_mobile=True, has_touch=True)
    shot(page, site, "jobs-phone")
    for path in ("/console/jobs", f"/console/jobs/{cnn_job}", "/console/new-job"):
        page.goto(site.url(path))
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow} px wider than a phone's screen"
    shot(page, site, "new-job-phone")
    context.close()


def test_a_job_created_in_the_console_with_a_broken_archive_fails_with_its_reason_and_fix(browser, site, tmp_path):
    broken = tmp_path / "model.tar.gz"
    broken.write_bytes(b"this is not a gzip archive")
    context, page = signed_in(browser, site, site.first)
    page.click("#new-job")
    page.fill("input[name=name]", "console-broken")
    page.set_input_files("input[name=model]", str(broken))
    page.select_option("select[name=framework]", "ONNX")
    page.fill("input[name=data_input_config]", '{"data": [1, 3, 32, 32]}')
    page.select_option("select[name=target_device]", "ml_c5")
    page.fill("input[name=compiler_options]", '{"kiln-backend": "onnxruntime"}')
    shot(page, site, "new-job")
    page.click("#create")
    expect(page).to_have_url(re.compile(r"/console/jobs/console-broken$"))
    # The page follows the log while the job runs and reloads itself when it ends.
    expect(page.locator("#failure")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#job-status")).to_have_text("FAILED")
    expect(page.locator("#failure-problem")).to_contain_text("not a readable tar archive")
    expect(page.locator("#failure-fix")).to_contain_text("Fix:")
    expect(page.locator("#log")).to_contain_text("fetch")
    shot(page, site, "job-failed")

    described = site.kiln.client("sagemaker", site.first).describe_compilation_job(
        CompilationJobName="console-broken")
    assert described["CompilationJobStatus"] == "FAILED"
    assert described["InputConfig"]["S3Uri"].startswith(f"s3://kiln-console-{site.first.account_id}/console-uploads/")
    page.click("#delete")  # a finished job can be deleted from its page
    expect(page).to_have_url(re.compile(r"/console/jobs$"))
    expect(page.locator("tr[data-job=console-broken]")).to_have_count(0)
    context.close()


def test_a_running_job_is_stopped_from_its_page(browser, site, models):
    s3, sagemaker = site.kiln.client("s3", site.first), site.kiln.client("sagemaker", site.first)
    s3.create_bucket(Bucket="console-stop")
    s3.upload_file(str(models / "cnn_onnx.tar.gz"), "console-stop", "cnn/model.tar.gz")
    # every backend for ml_c5 (no kiln-backend pin): far longer than the click takes
    sagemaker.create_compilation_job(**job_request(site.first, "console-stop", "s3://console-stop/cnn/model.tar.gz",
                                                   output="s3://console-stop/out/", options=None))
    context, page = signed_in(browser, site, site.first)
    page.goto(site.url("/console/jobs/console-stop"))
    page.click("#stop")
    expect(page.locator("#job-status")).to_have_text("STOPPED", timeout=60_000)  # STOPPING, then followed live
    assert wait_for_job(sagemaker, "console-stop", timeout_s=30)["CompilationJobStatus"] == "STOPPED"
    expect(page.locator("#stop")).to_have_count(0)
    expect(page.locator("#delete")).to_be_visible()
    context.close()


def test_the_form_refuses_what_the_api_refuses_naming_the_same_field(browser, site, models):
    context, page = signed_in(browser, site, site.first)
    page.goto(site.url("/console/new-job"))
    page.fill("input[name=name]", "console-invalid")
    page.set_input_files("input[name=model]", str(models / "cnn_onnx.tar.gz"))
    page.fill("input[name=data_input_config]", "[1, 3")
    page.click("#create")
    expect(page.locator("#error-data_input_config")).to_contain_text("InputConfig.DataInputConfig:")
    expect(page.locator("input[name=name]")).to_have_value("console-invalid")  # what was typed stays
    expect(page.locator("#choose-again")).to_be_visible()  # but a browser drops the file: say so
    page.fill("input[name=data_input_config]", '{"data": [1, 3, 32, 32]}')
    page.select_option("select[name=target_device]", "")
    page.select_option("select[name=target_os]", "LINUX")  # a platform without its Arch
    page.set_input_files("input[name=model]", str(models / "cnn_onnx.tar.gz"))
    page.click("#create")
    expect(page.locator("#error-target_platform")).to_contain_text("OutputConfig.TargetPlatform.Arch")
    shot(page, site, "new-job-errors")
    sagemaker = site.kiln.client("sagemaker", site.first)
    with pytest.raises(ClientError) as missing:
        sagemaker.describe_compilation_job(CompilationJobName="console-invalid")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFound"
    # A refused request uploads nothing: the upload comes after the API's checks.
    listed = site.kiln.client("s3", site.first).list_objects_v2(
        Bucket=f"kiln-console-{site.first.account_id}", Prefix="console-uploads/console-invalid/") \
        if _bucket_exists(site, f"kiln-console-{site.first.account_id}") else {}
    assert listed.get("KeyCount", 0) == 0
    context.close()


def _bucket_exists(site: Site, bucket: str) -> bool:
    names = [b["Name"] for b in site.kiln.client("s3", site.first).list_buckets()["Buckets"]]
    return bucket in names


# ---- isolation and request forgery ----------------------------------------------------------------

def test_another_accounts_job_and_artifact_are_not_found(browser, site, cnn_job, others_job):
    wait_for_job(site.kiln.client("sagemaker", site.first), cnn_job, timeout_s=150)
    context, page = signed_in(browser, site, site.first)
    expect(page.locator(f"tr[data-job={others_job}]")).to_have_count(0)
    response = page.goto(site.url(f"/console/jobs/{others_job}"))
    assert response is not None and response.status == 404
    assert site.second.account_id not in page.content() and "second-account" not in page.content()
    shot(page, site, "not-found")
    for suffix in ("log.json", "artifact", "report.json"):
        got = page.request.get(site.url(f"/console/jobs/{others_job}/{suffix}"))
        assert got.status == 404, suffix
        assert "second-account" not in got.text()
    context.close()

    # and the second account cannot read the first's artifact or report through the console
    context, page = signed_in(browser, site, site.second)
    expect(page.locator(f"tr[data-job={others_job}]")).to_be_visible()
    for suffix in ("", "/artifact", "/report.json", "/log.json"):
        got = page.request.get(site.url(f"/console/jobs/{cnn_job}{suffix}"))
        assert got.status == 404, suffix
        assert b"onnxruntime" not in got.body()
    context.close()


def test_a_post_without_this_sessions_csrf_token_is_refused(browser, site, cnn_job):
    wait_for_job(site.kiln.client("sagemaker", site.first), cnn_job, timeout_s=150)
    context, page = signed_in(browser, site, site.first)
    url = site.url(f"/console/jobs/{cnn_job}/delete")
    assert page.request.post(url, form={}, max_redirects=0).status == 403
    assert page.request.post(url, form={"csrf": "not-the-token"}, max_redirects=0).status == 403
    other_context, other_page = signed_in(browser, site, site.first)  # the same account, another session
    their_token = other_page.locator("body").get_attribute("data-csrf")
    assert their_token and page.request.post(url, form={"csrf": their_token}, max_redirects=0).status == 403
    own_token = page.locator("body").get_attribute("data-csrf")
    forged = page.request.post(url, form={"csrf": own_token}, headers={"Origin": "https://evil.example"},
                               max_redirects=0)
    assert forged.status == 403
    described = site.kiln.client("sagemaker", site.first).describe_compilation_job(CompilationJobName=cnn_job)
    assert described["CompilationJobStatus"] == "COMPLETED"  # still there
    other_context.close()
    context.close()


def test_sign_out_ends_the_session_even_for_a_copy_of_its_cookie(browser, site):
    context, page = signed_in(browser, site, site.first)
    cookie = next(c for c in context.cookies() if c["name"] == "kiln_console")["value"]
    assert _get(site, "/console/jobs.json", cookie)[0] == 200
    page.click("#sign-out")
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    assert not [c for c in context.cookies() if c["name"] == "kiln_console"]
    assert _get(site, "/console/jobs.json", cookie)[0] == 401  # the old cookie, replayed
    page.goto(site.url("/console/jobs"))
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    context.close()


# ---- HTTP details --------------------------------------------------------------------------------

def _request(site: Site, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", site.kiln.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def _get(site: Site, path: str, session_cookie: str) -> tuple[int, bytes]:
    status, _, body = _request(site, "GET", path, headers={"Cookie": f"kiln_console={session_cookie}"})
    return status, body


def test_cookies_are_strict_and_every_console_response_carries_the_security_headers(site):
    status, headers, body = _request(site, "GET", "/console/sign-in")
    assert status == 200
    nonce = headers.get_all("Set-Cookie")[0].split(";")[0]
    token = re.search(rb'name="csrf" value="([^"]+)"', body).group(1).decode()
    form = f"access_key_id={site.first.access_key_id}&secret_access_key={site.first.secret_access_key}&csrf={token}"
    form_headers = {"Content-Type": "application/x-www-form-urlencoded"}
    # without the nonce cookie the sign-in form's token is refused (login CSRF)
    assert _request(site, "POST", "/console/sign-in", form.encode(), form_headers)[0] == 403
    status, headers, _ = _request(site, "POST", "/console/sign-in", form.encode(), {**form_headers, "Cookie": nonce})
    assert status == 303 and headers["Location"] == "/console/jobs"
    session = next(c for c in headers.get_all("Set-Cookie") if c.startswith("kiln_console="))
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in session.split(";")[1:]}
    assert {"httponly", "path", "samesite", "max-age"} <= set(attributes)
    assert attributes["path"] == "Path=/console" and attributes["samesite"].lower() == "samesite=strict"
    assert attributes["max-age"] == "Max-Age=28800"  # 8 hours
    cookie = session.split(";")[0].split("=", 1)[1]

    for path in ("/console/sign-in", "/console/jobs", "/console/jobs.json", "/console/static/console.css",
                 "/console/jobs/no-such-job"):
        status, headers, _ = _request(site, "GET", path, headers={"Cookie": f"kiln_console={cookie}"})
        assert status in (200, 404), path
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert headers["X-Frame-Options"] == "DENY" and headers["Referrer-Policy"] == "no-referrer", path
    tampered = cookie.replace(site.first.account_id, site.second.account_id)
    assert _get(site, "/console/jobs.json", tampered)[0] == 401
    key = site.kiln.data_dir / "console-secret"
    assert key.stat().st_mode & 0o777 == 0o600


def test_a_signed_s3_request_under_console_still_reaches_s3(site):
    """A bucket named "console" is S3's: the console only answers requests that carry no SigV4 signature."""
    s3 = site.kiln.client("s3", site.first)
    s3.create_bucket(Bucket="console")
    s3.put_object(Bucket="console", Key="static/console.css", Body=b"mine")
    assert s3.get_object(Bucket="console", Key="static/console.css")["Body"].read() == b"mine"
    params = {"Bucket": "console", "Key": "static/console.css"}
    v4 = site.kiln.client("s3", site.first, signature_version="s3v4")
    status, _, body = _request(site, "GET", _path(site, v4.generate_presigned_url("get_object", Params=params)))
    assert status == 200 and body == b"mine"
    # boto3's default presigned URL is SigV2, which Kiln's S3 refuses with its own error (not the console's page)
    status, _, body = _request(site, "GET", _path(site, s3.generate_presigned_url("get_object", Params=params)))
    assert status == 403 and b"<Error>" in body
    status, _, body = _request(site, "GET", "/console/static/console.css")  # unsigned: the console's own
    assert status == 200 and b"Kiln console" in body
    s3.delete_object(Bucket="console", Key="static/console.css")
    s3.delete_bucket(Bucket="console")


def _path(site: Site, url: str) -> str:
    return url.split(str(site.kiln.port), 1)[1]


def test_the_jobs_json_answers_only_when_signed_in(site):
    status, _, body = _request(site, "GET", "/console/jobs.json")
    assert status == 401 and json.loads(body)["error"]
