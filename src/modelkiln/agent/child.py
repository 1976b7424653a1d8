"""Run one job's work in a forked child: a fresh process for the runtime (a real cold load), which dies with
the agent (PR_SET_PDEATHSIG), while the agent keeps the job's lease alive."""
from __future__ import annotations

import ctypes
import json
import os
import signal
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict

PR_SET_PDEATHSIG = 1


class ChildFailed(Exception):
    """The work raised, or the child died; the message is the job's FailureReason."""


def run_forked(work: Callable[[], Dict[str, Any]], result_path: Path, tick: Callable[[], bool],
               tick_every_s: float) -> Dict[str, Any]:
    """work() in a child; its dict, or ChildFailed. tick() runs every tick_every_s meanwhile: when it returns
    False (the job was taken away) the child is killed and ChildFailed raised."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        _child(work, result_path)
    next_tick = time.monotonic() + tick_every_s
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + tick_every_s
                if not tick():
                    raise ChildFailed("the server took the job back (its lease was lost)")
            time.sleep(0.1)
    finally:
        if not done:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return _outcome(status, result_path)


def _child(work: Callable[[], Dict[str, Any]], result_path: Path) -> None:
    code = 1
    try:
        try:  # die with the agent: no orphan keeps running a job nobody waits for
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
        try:
            record: Dict[str, Any] = {"ok": True, "result": work()}
        except Exception as exc:  # noqa: BLE001 - reported as the job's failure, with the cause named
            record = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                      "trace": traceback.format_exc(limit=8)}
        result_path.write_text(json.dumps(record))
        code = 0
    finally:
        os._exit(code)  # no atexit handlers or buffers of the parent's run twice


def _outcome(status: int, result_path: Path) -> Dict[str, Any]:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        raise ChildFailed(f"the process running the model was killed by signal {sig} "
                          f"({signal.Signals(sig).name}){' - out of memory?' if sig == signal.SIGKILL else ''}")
    try:
        record = json.loads(result_path.read_text())
    except (OSError, ValueError):
        raise ChildFailed(f"the process running the model exited {os.WEXITSTATUS(status)} without a result") from None
    if not record["ok"]:
        raise ChildFailed(record["error"])
    return record["result"]
