"""Hostile models against a real `kiln serve`: pickles whose loading runs an attacker's code in the compile
job. Each attack is tried for real from inside the job; the job log (written by the job's own stdout) says
what the code could reach, and none of it may be another tenant's data, the server's secrets, the network or
the server's files. The job fails with a reason; the server and other jobs carry on."""
from __future__ import annotations

import io
import os
import pickle
import re
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.api.kiln_server import KILN, KilnServer, job_request, wait_for_job

SECRET_ENV = "KILN_TEST_SERVER_SECRET"
SECRET = "server-secret-4f1c9a"
OTHER_OBJECT = b"bob's private weights 7d2e"


class _Payload:
    """Unpickling this runs `code` (what a malicious model file does)."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return exec, (self.code, {})


def _archive(code: str) -> bytes:
    data = pickle.dumps(_Payload(code))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("model.pkl")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# Runs inside the job; ATTEMPT prints LEAKED or BLOCKED for each thing tried.
_ATTEMPT = '''
import os, socket
def attempt(name, fn):
    try:
        print(f"LEAKED {name}: {fn()!r}"[:200], flush=True)
    except BaseException as exc:
        print(f"BLOCKED {name}: {type(exc).__name__}", flush=True)
'''


@pytest.fixture(scope="module")
def kiln(tmp_path_factory):
    """A server with a secret in its environment, two workers, and its own scratch root (to find its jobs'
    processes); accounts alice (the attacker) and bob (the victim, with a private object)."""
    data = tmp_path_factory.mktemp("kiln-isolation")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(SECRET_ENV, SECRET)
        env.setenv("KILN_WORK_DIR", str(data / "scratch"))
        server = KilnServer(data, args=["--workers", "2"])
        alice, bob = server.create_account(), server.create_account()
        server.start(timeout_s=90)
    try:
        s3_bob = server.client("s3", bob)
        s3_bob.create_bucket(Bucket="bob-private")
        s3_bob.put_object(Bucket="bob-private", Key="weights.bin", Body=OTHER_OBJECT)
        s3 = server.client("s3", alice)
        s3.create_bucket(Bucket="kiln-tests")
        yield server, alice, bob
    finally:
        server.stop()


def _run(kiln, name: str, code: str, *, runtime_s: int = 300, wait: bool = True) -> dict:
    server, alice, _ = kiln
    server.client("s3", alice).put_object(Bucket="kiln-tests", Key=f"{name}.tar.gz", Body=_archive(code))
    sm = server.client("sagemaker", alice)
    sm.create_compilation_job(**job_request(alice, name, f"s3://kiln-tests/{name}.tar.gz", framework="SKLEARN",
                                            data_input_config='{"input": [1, 4]}', options=None,
                                            runtime_s=runtime_s))
    return wait_for_job(sm, name, timeout_s=runtime_s + 120) if wait else {}


def _log(kiln, name: str) -> str:
    server, alice, _ = kiln
    return subprocess.run([KILN, "logs", name, "--data-dir", str(server.data_dir), "--account", alice.account_id],
                          check=True, capture_output=True, text=True).stdout


def _job_processes(server: KilnServer) -> set[int]:
    """The pids of this server's job sandboxes (bwrap of a job directory under its scratch root) and every
    process below them."""
    children: dict[int, list[int]] = {}
    roots = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
        if cmdline.startswith(b"bwrap\0") and str(server.data_dir / "scratch").encode() in cmdline:
            roots.append(int(entry.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.add(pid)
        except (OSError, IndexError):
            pass
    return alive


def _until(predicate, timeout_s: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_malicious_pickle_reaches_no_secret_no_tenant_and_no_network(kiln):
    server, alice, bob = kiln
    keys = server.data_dir / "keys.json"
    [bob_object] = [p for p in (server.data_dir / "objects").rglob("*") if p.is_file()
                    and p.read_bytes() == OTHER_OBJECT]
    secret_key = bob.secret_access_key
    code = _ATTEMPT + f'''
import glob, json, subprocess
attempt("keys.json", lambda: open({str(keys)!r}).read())
attempt("another account's object", lambda: open({str(bob_object)!r}, "rb").read())
attempt("the data directory", lambda: os.listdir({str(server.data_dir)!r}))
attempt("server environment", lambda: os.environ[{SECRET_ENV!r}])
attempt("server process environment", lambda: [open(p, "rb").read() for p in glob.glob("/proc/*/environ")
                                               if {SECRET[::-1]!r}[::-1].encode() in open(p, "rb").read()][0])
attempt("socket to the server", lambda: socket.create_connection(("127.0.0.1", {server.port}), timeout=3))
attempt("socket to the internet", lambda: socket.create_connection(("1.1.1.1", 443), timeout=3))
attempt("write outside the job", lambda: open({str(server.data_dir / "pwned")!r}, "w").write("x"))
attempt("write to the venv", lambda: open({str(Path(KILN).parent / "pwned")!r}, "w").write("x"))
attempt("signal the server", lambda: os.kill({server.proc.pid}, 0))
attempt("credentials in the job's files", lambda: [p for p in glob.glob("/job/**", recursive=True)
    if os.path.isfile(p) and {secret_key[::-1]!r}[::-1].encode() in open(p, "rb").read()][0])  # not in the pickle
attempt("root", lambda: os.setuid(0))
print("job uid", os.getuid(), "env", sorted(os.environ), flush=True)
raise SystemExit("the attack is over")
'''
    job = _run(kiln, "attack", code)
    log = _log(kiln, "attack")
    assert job["CompilationJobStatus"] == "FAILED" and job["FailureReason"], log
    assert "LEAKED" not in log, log
    assert len(re.findall(r"BLOCKED ", log)) == 12, log
    assert SECRET not in log and secret_key not in log
    assert not (server.data_dir / "pwned").exists() and not (Path(KILN).parent / "pwned").exists()
    uid = int(re.search(r"job uid (\d+)", log).group(1))
    assert uid != 0 and uid != os.getuid()
    assert SECRET_ENV not in log and "AWS" not in log.split("job uid", 1)[1]
    # the server and its other tenants are unharmed
    assert server.client("s3", bob).get_object(Bucket="bob-private", Key="weights.bin")["Body"].read() == OTHER_OBJECT


def test_a_fork_bomb_stops_at_the_process_limit_and_leaves_nothing(kiln):
    code = '''
import os, time
root = os.getpid()
while True:
    try:
        os.fork()
    except OSError as exc:
        if os.getpid() == root:
            print(f"BLOCKED fork: {type(exc).__name__}", flush=True)
            raise SystemExit("fork refused")
        time.sleep(600)
'''
    job = _run(kiln, "fork-bomb", code, runtime_s=120)
    assert job["CompilationJobStatus"] == "FAILED"
    assert "BLOCKED fork" in _log(kiln, "fork-bomb")
    server = kiln[0]
    _until(lambda: not _job_processes(server), 30, "the bomb's processes to go")


def test_sleeping_forever_fails_at_max_runtime_while_other_jobs_complete(kiln, models):
    server, alice, _ = kiln
    _run(kiln, "sleeper", "import time; time.sleep(10**6)", runtime_s=20, wait=False)
    s3, sm = server.client("s3", alice), server.client("sagemaker", alice)
    s3.upload_file(str(models / "cnn_onnx.tar.gz"), "kiln-tests", "good.tar.gz")
    sm.create_compilation_job(**job_request(alice, "good", "s3://kiln-tests/good.tar.gz"))
    assert wait_for_job(sm, "good")["CompilationJobStatus"] == "COMPLETED"
    job = wait_for_job(sm, "sleeper", timeout_s=120)
    assert job["CompilationJobStatus"] == "FAILED" and "MaxRuntimeInSeconds" in job["FailureReason"]
    _until(lambda: not _job_processes(server), 30, "the sleeper's processes to go")


def test_a_flood_of_output_is_cut_off_in_the_log(kiln):
    job = _run(kiln, "flood", "import sys\nfor _ in range(200_000): print('x' * 100)\nraise SystemExit(3)",
               runtime_s=120)
    log = _log(kiln, "flood")
    assert job["CompilationJobStatus"] == "FAILED" and "status 3" in job["FailureReason"]
    assert "output passed 4 MB; the rest is not logged" in log and 4 << 20 < len(log) < 6 << 20
