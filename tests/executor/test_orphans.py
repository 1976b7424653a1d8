"""No orphans: whichever level of a running job dies (its compile child, the worker process, the whole server,
by SIGKILL), no process of that job is left, even a tool that left the compile's process group and session."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.api.kiln_server import KilnServer, wait_for_job
from tests.executor.test_isolation import _job_processes, _alive, _log, _run, _until

# A compile that starts a long-running tool in a session of its own (as iree-compile could be), then hangs.
HANG = '''
import subprocess, time
tool = subprocess.Popen(["sleep", "600"], start_new_session=True)
print("started a tool", flush=True)
time.sleep(600)
'''


@pytest.fixture
def kiln(tmp_path):
    data = tmp_path / "kiln"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KILN_WORK_DIR", str(data / "scratch"))
        server = KilnServer(data, args=["--workers", "1"])
        alice = server.create_account()
        try:  # stopped whatever fails, setup included: a test of orphans must not leave a server behind
            server.start(timeout_s=90)
            server.client("s3", alice).create_bucket(Bucket="kiln-tests")
            yield server, alice, None
        finally:
            server.stop()


def _hanging_job(kiln, name: str) -> set[int]:
    """Start a job that hangs with a tool running; the pids of its sandbox once the tool is up."""
    server = kiln[0]
    _run(kiln, name, HANG, runtime_s=600, wait=False)
    _until(lambda: "started a tool" in _log(kiln, name), 90, "the job's tool to start")
    return _until(lambda: _job_processes(server) if len(_job_processes(server)) >= 4 else None, 30, "its processes")


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def _gone(pids: set[int], what: str) -> None:
    _until(lambda: not _alive(pids), 30, f"every process of the job to end after {what}")


def _scratch(server: KilnServer) -> list[Path]:
    root = server.data_dir / "scratch" / "kiln-jobs"
    return sorted(root.iterdir()) if root.exists() else []


def test_killing_the_compile_child_kills_its_tools_and_fails_the_job_naming_the_signal(kiln):
    server, alice, _ = kiln
    pids = _hanging_job(kiln, "child-killed")
    [child] = [pid for pid in pids if "modelkiln.executor.job_main" in _cmdline(pid)
               and not _cmdline(pid).startswith("bwrap")]
    os.kill(child, signal.SIGKILL)
    job = wait_for_job(server.client("sagemaker", alice), "child-killed", timeout_s=60)
    assert job["CompilationJobStatus"] == "FAILED"
    assert "signal 9 (SIGKILL)" in job["FailureReason"] and "memory limit" not in job["FailureReason"]
    _gone(pids, "the compile child was killed")
    _until(lambda: not _scratch(server), 10, "the job directory to be removed")


def test_killing_the_worker_process_kills_the_job_and_the_job_runs_again(kiln):
    server, alice, _ = kiln
    pids = _hanging_job(kiln, "worker-killed")
    [outer] = [pid for pid in pids if _cmdline(pid).startswith("bwrap") and
               int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) not in pids]
    worker = int(Path(f"/proc/{outer}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(worker, signal.SIGKILL)
    _gone(pids, "its worker process was killed")
    sm = server.client("sagemaker", alice)
    # the dispatcher sees the worker gone and runs the job again (attempt 2) on the restarted worker
    _until(lambda: "(attempt 2)" in _log(kiln, "worker-killed"), 90, "the job's second attempt")
    second = _until(lambda: _job_processes(server) - pids, 60, "the second attempt's processes")
    sm.stop_compilation_job(CompilationJobName="worker-killed")
    assert wait_for_job(sm, "worker-killed", timeout_s=60)["CompilationJobStatus"] == "STOPPED"
    _gone(second, "the job was stopped")
    _until(lambda: not _scratch(server), 10, "both attempts' job directories to be removed")


def test_killing_the_server_kills_every_job_process(kiln):
    server, alice, _ = kiln
    pids = _hanging_job(kiln, "server-killed")
    server.kill9()
    _gone(pids, "the server was killed")
    server.start(timeout_s=90)  # the same data: the job is recovered and its scratch swept by the next run
    sm = server.client("sagemaker", alice)
    _until(lambda: "(attempt 2)" in _log(kiln, "server-killed"), 90, "the job's second attempt")
    sm.stop_compilation_job(CompilationJobName="server-killed")
    assert wait_for_job(sm, "server-killed", timeout_s=60)["CompilationJobStatus"] == "STOPPED"
    _until(lambda: not _job_processes(server), 30, "the second attempt's processes to end")
    assert not _scratch(server)
