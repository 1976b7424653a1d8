"""The job sandbox: real child processes hitting real limits, and killed as a whole group."""
from __future__ import annotations

import os
import sys
import time

import pytest

from modelkiln.executor import sandbox, scratch

LIMITS = sandbox.Limits(memory_bytes=512 * 2**20, file_size_bytes=2**20, cpu_seconds=60)


def _python(code: str, limits: sandbox.Limits = LIMITS):
    return sandbox.start([sys.executable, "-c", code], limits)


def test_output_is_captured_and_exit_status_kept():
    child = _python("print('hello'); import sys; sys.stderr.write('err\\n'); sys.exit(3)")
    assert child.stdout.read().splitlines() == ["hello", "err"]
    assert child.wait(30) == 3 and child.peak_rss_bytes > 1 << 20
    assert "status 3" in sandbox.describe_exit(3, LIMITS)


def test_exit_reasons_name_the_signal_and_the_memory_limit_only_when_it_was_hit():
    killed = sandbox.describe_exit(128 + 9, LIMITS, peak_rss_bytes=300 * 2**20)  # bwrap's way to say SIGKILL
    assert killed.startswith("ServerError:") and "signal 9 (SIGKILL)" in killed and "300 MB" in killed
    assert "memory limit" not in killed
    crashed = sandbox.describe_exit(-11, LIMITS)
    assert "signal 11 (SIGSEGV)" in crashed and "memory" not in crashed
    starved = sandbox.describe_exit(-6, LIMITS, last_lines=["terminate called after throwing 'std::bad_alloc'"])
    assert starved.startswith("ClientError:") and "allows a job (512 MB" in starved and "job_memory_mb" in starved


def test_memory_limit_stops_a_greedy_child():
    child = _python("x = bytearray(2 * 1024**3)")  # 2 GiB against a 512 MiB address-space limit
    out = child.stdout.read()
    assert child.wait(30) != 0 and "MemoryError" in out


def test_file_size_limit_stops_the_writer(tmp_path):
    # Python ignores SIGXFSZ (and children inherit that), so the write fails with EFBIG instead of a signal
    child = _python(f"open({str(tmp_path / 'big')!r}, 'wb').write(b'x' * (4 * 1024**2))")
    assert "File too large" in child.stdout.read()
    assert child.wait(30) == 1
    assert (tmp_path / "big").stat().st_size <= 2**20
    assert "file-size limit (1 MB)" in sandbox.describe_exit(-25, LIMITS)  # a tool that does not ignore it


def test_kill_takes_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time\n"
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
            "time.sleep(600)\n")
    child = _python(code)
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    started = time.monotonic()
    sandbox.kill(child, grace_s=2)
    assert child.returncode == -15 and time.monotonic() - started < 10  # SIGTERM was enough
    for _ in range(50):  # the grandchild was in the group: it is gone (or a zombie awaiting its reaper)
        try:
            os.kill(grandchild, 0)
            with open(f"/proc/{grandchild}/stat") as f:
                if f.read().split()[2] == "Z":
                    break
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the grandchild survived the kill")


def test_a_child_ignoring_sigterm_is_killed():
    child = _python("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                    "time.sleep(600)")
    assert child.stdout.readline().strip() == "ready"
    sandbox.kill(child, grace_s=1)
    assert child.returncode == -9


@pytest.mark.parametrize("own_uid", [True, False], ids=["job-uid", "user-namespace"])
def test_a_jailed_child_sees_only_its_directory_and_system_files(tmp_path, own_uid):
    """Both ways a job is jailed: its own uid (a root server), or the server's uid in a user namespace."""
    work = tmp_path / "job"
    uid = sandbox.job_uid(7) if own_uid else None
    sandbox.prepare(work, uid)
    (tmp_path / "secret").write_text("not for jobs")
    code = ("import os, socket\n"
            "print(sorted(os.listdir('/')), os.getcwd(), os.getuid(), sorted(os.environ))\n"
            "open('/job/out.txt', 'w').write('ok'); open('/tmp/t', 'w').write('ok')\n"
            f"for path in ({str(tmp_path / 'secret')!r}, '/root', '/etc/shadow'):\n"
            "    print(path, os.path.exists(path))\n"
            "try:\n    socket.create_connection(('127.0.0.1', 22), timeout=2)\n"
            "except OSError as exc:\n    print('network', type(exc).__name__)\n")
    child = sandbox.start([sys.executable, "-c", code], LIMITS, sandbox.Jail(work, uid, sandbox.child_env()))
    out = child.stdout.read()
    assert child.wait(30) == 0, out
    assert (work / "out.txt").read_text() == "ok" and (work / "tmp" / "t").read_text() == "ok"
    assert f"{tmp_path / 'secret'} False" in out and "/etc/shadow False" in out and "network" in out
    assert "/job" in out and "'PATH'" in out and "'PWD'" in out
    if uid is not None:
        assert f" {uid} " in out


def test_sweep_removes_the_directories_no_supervisor_holds(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_WORK_DIR", str(tmp_path))
    live, dead = scratch.job_dir("1-1", "live"), scratch.job_dir("2-1", "dead")
    dead.mkdir(parents=True)
    dead.with_name(dead.name + ".lock").touch()  # its supervisor died holding it: the kernel dropped the lock
    orphan = scratch.job_dir("3-1", "nolock")
    orphan.mkdir()
    with scratch.held(live):
        live.mkdir()
        assert sorted(scratch.sweep()) == [dead, orphan]
        assert live.is_dir() and not dead.exists() and not orphan.exists()
    assert not live.exists() and list(tmp_path.joinpath("kiln-jobs").iterdir()) == []
