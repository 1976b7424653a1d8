"""A job's compile runs in a sandbox: a model file is hostile input (a pickle is code).

The child runs under bubblewrap (bwrap) in its own PID, network, IPC and UTS namespaces and a mount namespace
that shows only the system's read-only files (/usr, the Python install, Kiln itself) and its own job
directory, at /job. It gets an empty environment and no credentials (the supervisor fetches the model and
uploads the artifact). On a root server it runs as a dedicated unprivileged uid with no capabilities
(setpriv), so RLIMIT_NPROC caps its processes; otherwise it keeps the server's uid in a user namespace.
Resource limits bound its memory, file sizes and CPU time. When the child dies, is killed, or the worker
dies (PR_SET_PDEATHSIG, bwrap --die-with-parent), the PID namespace goes, and with it every tool it started.
"""
from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import modelkiln

_PR_SET_PDEATHSIG = 1
KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL this long after, as SageMaker documents for StopCompilationJob
JOB_ROOT = Path("/job")  # where the child sees its own directory
# Root servers: compilation job N runs as uid BASE + N % SPAN; device job N's comparison (lane 1) as
# BASE + SPAN + N % SPAN, so the two kinds of job never share a uid.
JOB_UID_BASE, JOB_UID_SPAN = 200_000, 100_000
COMPILE_LANE, COMPARE_LANE = 0, 1
# System files a compile needs, shown read-only where present: the dynamic linker's cache, `cc` and friends
# (alternatives), OpenCL/Vulkan driver manifests, and names for uids and localhost. Nothing else of /etc.
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "OpenCL", "vulkan", "hosts", "passwd",
        "group", "nsswitch.conf", "localtime", "mime.types")
# CPU features and core counts; the (empty, without a GPU) device classes onnxruntime probes at import.
_SYS = tuple(Path(p) for p in ("/sys/devices/system/cpu", "/sys/class/drm", "/sys/class/accel"))
SHM_BYTES = 64 << 20
_TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")  # symlinks into /usr on merged-/usr systems


@dataclass(frozen=True)
class Limits:
    memory_bytes: int  # address space (RLIMIT_AS)
    file_size_bytes: int  # largest file written (RLIMIT_FSIZE: SIGXFSZ past it)
    cpu_seconds: int  # CPU time (RLIMIT_CPU), a backstop behind the wall-clock MaxRuntimeInSeconds
    processes: int = 512  # processes and threads of the job's uid (RLIMIT_NPROC; a fork bomb stops here)


@dataclass(frozen=True)
class Jail:
    """What the child sees: its directory (at /job), its uid, and its environment."""

    work_dir: Path
    uid: int | None = None  # None: the server's own uid, inside a user namespace (a server not run as root)
    env: dict[str, str] = field(default_factory=dict)

    def inside(self, path: Path) -> Path:
        """Where a path in the job's directory appears to the child."""
        return JOB_ROOT / Path(path).relative_to(self.work_dir)


def job_uid(job_id: int, lane: int = COMPILE_LANE) -> int | None:
    """The job's own uid on a root server, else None (see Jail.uid)."""
    return JOB_UID_BASE + lane * JOB_UID_SPAN + job_id % JOB_UID_SPAN if os.geteuid() == 0 else None


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The child's whole environment: nothing of the server's but the operator's Kiln tool locations."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(JOB_ROOT), "TMPDIR": "/tmp", "LANG": "C.UTF-8",
           "USER": "kiln-job", "LOGNAME": "kiln-job", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    for name in ("KILN_CROSS_DIR", "KILN_MAX_MODEL_BYTES"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return {**env, **(extra or {})}


def prepare(work_dir: Path, uid: int | None) -> None:
    """A fresh job directory the child's uid owns (its tmp/ is the child's /tmp)."""
    shutil.rmtree(work_dir, ignore_errors=True)
    (work_dir / "tmp").mkdir(parents=True)
    if uid is not None:
        for path in (work_dir, work_dir / "tmp"):
            os.chown(path, uid, uid)
            path.chmod(0o700)


def _read_only_paths() -> list[Path]:
    """Host directories the child needs read-only besides /usr: the Python install, the venv, Kiln's source
    (an editable install lives outside the venv), and the operator's cross-runtime directory."""
    wanted = [Path(sys.base_prefix), Path(sys.prefix), Path(modelkiln.__file__).resolve().parents[1]]
    if os.environ.get("KILN_CROSS_DIR"):
        wanted.append(Path(os.environ["KILN_CROSS_DIR"]))
    paths: list[Path] = []
    for path in sorted({p.resolve() for p in wanted if p.exists()}, key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(p) for p in [Path("/usr"), *paths]):
            paths.append(path)
    return paths


def _ancestors(paths: Iterable[Path]) -> list[Path]:
    """Every directory above the given ones, parents first: created world-traversable (bwrap would copy a
    0700 /root's mode, and a job uid could not reach a Python installed under it)."""
    seen: list[Path] = []
    for path in paths:
        for parent in reversed(path.parents[:-1]):
            if parent not in seen:
                seen.append(parent)
    return seen


def bwrap_argv(argv: Sequence[str], jail: Jail) -> list[str]:
    """The bubblewrap command line that runs argv in the jail."""
    args = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--clearenv", "--hostname", "kiln-job"]
    if jail.uid is None:
        args.append("--unshare-user")
    args += ["--ro-bind", "/usr", "/usr"]
    for name in _TOP_LEVEL:
        top = Path("/", name)
        if top.is_symlink():
            args += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            args += ["--ro-bind", str(top), str(top)]
    for name in _ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    # The job's /tmp first: a Python or venv installed under /tmp is then shown on top of it, not hidden by it.
    args += ["--bind", str(jail.work_dir / "tmp"), "/tmp"]
    extra = _read_only_paths()
    system = [p for p in _SYS if p.exists()]
    for parent in _ancestors([*extra, *system]):
        args += ["--perms", "0755", "--dir", str(parent)]
    for path in [*extra, *system]:
        args += ["--ro-bind", str(path), str(path)]
    args += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm",  # POSIX semaphores (joblib)
             "--bind", str(jail.work_dir), str(JOB_ROOT), "--chdir", str(JOB_ROOT)]
    for name, value in jail.env.items():
        args += ["--setenv", name, value]
    if jail.uid is not None:  # drop root before anything of the job's runs: its own uid, no capabilities
        args += ["--", "setpriv", f"--reuid={jail.uid}", f"--regid={jail.uid}", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    return [*args, "--", *argv]


class Child:
    """A running sandbox: its merged stdout+stderr as text lines, and how it ended (exit code, peak memory)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.peak_rss_bytes = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdout(self):
        return self.proc.stdout

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        """The exit code once it ended (-N: killed by signal N), reaped here with its resource usage."""
        if self.proc.returncode is None:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)  # Popen will not reap it again
                self.peak_rss_bytes = usage.ru_maxrss * 1024  # the largest process of the sandbox
        return self.proc.returncode

    def wait(self, timeout_s: float) -> int | None:
        deadline = time.monotonic() + timeout_s
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.returncode


def start(argv: Sequence[str], limits: Limits, jail: Jail | None = None) -> Child:
    """Start argv limited (and jailed, if jail is given), stdout+stderr merged into one text pipe."""
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
        if jail is not None and jail.uid is not None:  # counted per uid: only a uid of the job's own is capped
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))

    command = bwrap_argv(argv, jail) if jail is not None else list(argv)
    return Child(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1,
                                  env=jail.env if jail is not None else None, preexec_fn=preexec,
                                  cwd=jail.work_dir if jail is not None else None))


def kill(child: Child, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the child's whole process group, then SIGKILL it if it has not exited within grace_s. A jailed
    child's tools are in its PID namespace, which ends with it."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            pass
        if child.wait(wait_s) is not None:
            break
    try:  # the leader is gone; take any tool it left running in its group
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# What Python, C++, libc, OpenBLAS and the dynamic loader print when an allocation fails (compared lower-case).
_OUT_OF_MEMORY = ("memoryerror", "bad_alloc", "cannot allocate memory", "out of memory", "memory allocation",
                  "failed to map segment")


def describe_exit(returncode: int, limits: Limits, peak_rss_bytes: int = 0, last_lines: Sequence[str] = ()) -> str:
    """The FailureReason of a child that ended without a result. The memory limit is named only
    when the child's own output says an allocation failed (an address-space limit fails allocations; it kills
    nothing)."""
    if 128 < returncode < 128 + 65:  # bwrap reports its child's death by signal N as exit status 128 + N
        returncode = 128 - returncode
    peak = f"; its largest process peaked at {peak_rss_bytes // 2**20} MB" if peak_rss_bytes else ""
    if any(marker in line.lower() for line in last_lines for marker in _OUT_OF_MEMORY):
        return (f"ClientError: the compiler ran out of memory: it needs more memory than this Kiln server allows a "
                f"job ({limits.memory_bytes // 2**20} MB of address space){peak}. Compile a smaller model, or ask "
                "the Kiln operator to raise job_memory_mb.")
    if returncode >= 0:
        return (f"ClientError: the compiler process exited with status {returncode} without a result{peak}. The job log has "
                "its last output; a model whose loading exits the process (a pickle running code) ends this way.")
    sig = signal.Signals(-returncode)
    if sig == signal.SIGXFSZ:
        return (f"ClientError: the compiler wrote a file larger than the job's file-size limit "
                f"({limits.file_size_bytes // 2**20} MB). Compile a smaller model, or ask the Kiln operator to "
                "raise job_file_size_mb.")
    if sig == signal.SIGXCPU:
        return (f"ClientError: the compiler used more than the job's CPU-time limit ({limits.cpu_seconds} s). Pin one backend "
                "with CompilerOptions {\"kiln-backend\": ...}, or compile a smaller model.")
    if sig == signal.SIGKILL:
        return (f"ServerError: the compiler process was killed by signal 9 (SIGKILL) from outside Kiln{peak}: no job "
                "limit of Kiln's kills, so the machine's out-of-memory killer or an operator sent it. Create the job "
                "again; if it recurs, ask the Kiln operator to check the machine's memory.")
    return (f"ClientError: the compiler process was killed by signal {sig.value} ({sig.name}){peak}. The job log has its last "
            "output; this is most likely a crash in a compiler backend: try another with CompilerOptions "
            "{\"kiln-backend\": ...}.")


def probe() -> str | None:
    """Why jailed jobs cannot run on this machine (bwrap missing or refused by the kernel), or None."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed (make system-deps installs it)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    with tempfile.TemporaryDirectory(prefix="kiln-probe-") as tmp:
        work = Path(tmp) / "job"
        uid = job_uid(0)
        prepare(work, uid)
        child = start([sys.executable, "-c", "import modelkiln"], Limits(2**31, 2**20, 60),
                      Jail(work, uid, child_env()))
        out = child.stdout.read() if child.stdout else ""
        code = child.wait(60)
        if code != 0:
            kill(child, grace_s=0)
            return f"a test job could not start in the sandbox (exit status {code}): {out.strip()[-500:]}"
    return None
