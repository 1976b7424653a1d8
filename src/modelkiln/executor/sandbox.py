"""A job's compile runs in a child process with resource limits, in its own process group, so it can be
killed whole (the compilers spawn tools of their own) and a model that exhausts memory takes down only itself.
"""
from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1
KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL this long after, as SageMaker documents for StopCompilationJob


@dataclass(frozen=True)
class Limits:
    memory_bytes: int  # address space (RLIMIT_AS)
    file_size_bytes: int  # largest file written (RLIMIT_FSIZE: SIGXFSZ past it)
    cpu_seconds: int  # CPU time (RLIMIT_CPU), a backstop behind the wall-clock MaxRuntimeInSeconds


def start(argv: Sequence[str], limits: Limits, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start argv limited, stdout+stderr merged into one text pipe."""
    def preexec() -> None:  # runs in the child between fork and exec
        os.setsid()
        try:  # die with the worker process, not linger after it (Linux only)
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 30))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", bufsize=1, env=env, preexec_fn=preexec)


def kill(proc: subprocess.Popen[str], grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the child's whole process group, then SIGKILL it if it has not exited within grace_s."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # the leader is gone; take any tool it left running in its group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def describe_exit(returncode: int, limits: Limits) -> str:
    """Why a child ended without a result, in the user's terms."""
    if returncode >= 0:
        return f"the compiler process exited with status {returncode} without a result"
    sig = -returncode
    if sig == signal.SIGXFSZ:
        return (f"the compiler wrote a file larger than the job's file-size limit "
                f"({limits.file_size_bytes // 2**20} MB)")
    if sig == signal.SIGXCPU:
        return f"the compiler used more than the job's CPU-time limit ({limits.cpu_seconds} s)"
    if sig in (signal.SIGKILL, signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS):
        return (f"the compiler process died ({signal.Signals(sig).name}), most likely by exceeding the job's memory "
                f"limit ({limits.memory_bytes // 2**20} MB)")
    return f"the compiler process was killed by {signal.Signals(sig).name}"
