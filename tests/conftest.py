"""Shared fixtures: small real models built here with torch/onnx, and compiled artifacts of them."""
from __future__ import annotations

import glob
import inspect
import itertools
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
import sqlalchemy as sa
import torch
from torch import nn

from modelkiln.compiler import CompileJob, compile_job

CNN_SHAPE = (1, 3, 32, 32)
NATIVE_X86_DEVICES = ("ml_c5", "ml_m5")  # skylake-avx512: tests assert their candidates ran and were timed here


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test that compiles for ml_c5/ml_m5 says what this host's CPU lacks, when it lacks anything:
    those tests expect the AVX-512 code they build to run natively here."""
    report = yield
    if report.failed and call.when == "call":
        lacking = _host_lacks_for(item)
        if lacking:
            report.sections.append(("host CPU", lacking))
    return report


def _host_lacks_for(item: pytest.Item) -> str:
    from modelkiln.runtime.model import host_arch, host_cpu_flags
    from modelkiln.targets.catalog import entry_for_device

    try:
        source = inspect.getsource(item.function)  # type: ignore[attr-defined]
    except (AttributeError, OSError, TypeError):
        return ""
    for device in NATIVE_X86_DEVICES:
        if device not in source and "x86_artifact" not in getattr(item, "fixturenames", ()):
            continue
        target = entry_for_device(device)
        missing = sorted(set(target.features) - host_cpu_flags()) if host_arch() == "x86_64" else ["x86-64"]
        if missing:
            return (f"this host cannot run {device} ({target.mcpu}) code natively: it lacks {', '.join(missing)}; "
                    f"{device} candidates are then checked as foreign code, not verified and timed here")
    return ""


class SmallCnn(nn.Module):
    """Conv-BN-ReLU blocks, a depthwise conv, pooling and a linear head: the ops real vision nets use."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.MaxPool2d(2), nn.Conv2d(16, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.features(x)), dim=1)


class TwoInTwoOut(nn.Module):
    """Two inputs of different shapes, two outputs: exercises input naming and ordering."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 4)
        self.b = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x) + self.b(y), torch.tanh(self.a(x))


def tar_gz(path: Path, *files: Path) -> Path:
    """A model.tar.gz holding files at its top level."""
    with tarfile.open(path, "w:gz") as tar:
        for f in files:
            tar.add(f, arcname=f.name)
    return path


def torchscript(module: nn.Module, example: tuple, path: Path) -> Path:
    torch.manual_seed(0)
    with torch.no_grad():
        torch.jit.trace(module.eval(), example).save(str(path))
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Path:
    """A folder of small real models: cnn.pth, cnn.onnx, two.pth and their tar.gz archives."""
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    cnn = SmallCnn().eval()
    for m in cnn.modules():  # non-trivial BN statistics, so folding them is actually checked
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(*CNN_SHAPE)
    torchscript(cnn, (x,), d / "cnn.pth")
    torch.onnx.export(cnn, (x,), str(d / "cnn.onnx"), input_names=["data"], output_names=["prob"],
                      opset_version=17, dynamo=False)
    torchscript(TwoInTwoOut(), (torch.randn(2, 8), torch.randn(2, 5)), d / "two.pth")
    tar_gz(d / "cnn_pth.tar.gz", d / "cnn.pth")
    tar_gz(d / "cnn_onnx.tar.gz", d / "cnn.onnx")
    tar_gz(d / "two_pth.tar.gz", d / "two.pth")
    return d


def compile_cnn(models: Path, out: Path, **kwargs):
    job = CompileJob(model=models / "cnn_onnx.tar.gz", framework="ONNX", output_dir=out,
                     data_input_config='{"data": [1, 3, 32, 32]}', **kwargs)
    return compile_job(job)


@pytest.fixture(scope="session")
def x86_artifact(models, tmp_path_factory):
    """The small CNN compiled for ml_c5: (report, output folder)."""
    out = tmp_path_factory.mktemp("ml_c5")
    return compile_cnn(models, out, target_device="ml_c5"), out


@pytest.fixture(scope="session")
def aarch64_artifact(models, tmp_path_factory):
    """The small CNN compiled for rasp4b (verified under qemu-user): (report, output folder)."""
    out = tmp_path_factory.mktemp("rasp4b")
    return compile_cnn(models, out, target_device="rasp4b"), out


def onnx_model(path: Path, nodes, inputs, outputs, initializers=()) -> Path:
    """Save a hand-built ONNX graph (IR 10, opset 17: what onnxruntime 1.31 loads)."""
    graph = onnx.helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


# ---- a throwaway PostgreSQL server (job store tests, and kiln serve on PostgreSQL) ----------------------

_databases = itertools.count()


def _postgres_bindir() -> Path | None:
    """The newest Debian PostgreSQL's bin folder (/usr/lib/postgresql/<major>/bin), if installed."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    found.sort(key=lambda p: int(re.search(r"/(\d+)/bin/", p).group(1)))  # type: ignore[union-attr]
    return Path(found[-1]).parent if found else None


def _run(args: list[str], log: Path | None = None) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if done.returncode:
        tail = log.read_text()[-2000:] if log and log.exists() else ""
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{tail}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL cluster in a temp dir, listening on a unix socket only; yields a URL without a database."""
    bindir = _postgres_bindir()
    assert bindir is not None, "PostgreSQL is not installed (make system-deps installs Debian's postgresql)"
    # A short path: a unix socket's path must fit in 107 bytes. Owned by `postgres` when we are root,
    # because PostgreSQL refuses to run as root.
    root = Path(tempfile.mkdtemp(prefix="kiln-pg-"))
    data, sockets, log = root / "data", root / "sock", root / "server.log"
    sockets.mkdir()
    as_owner: list[str] = []
    if os.geteuid() == 0:
        as_owner = ["runuser", "-u", "postgres", "--"]
        for path in (root, sockets):
            shutil.chown(path, "postgres", "postgres")
    _run([*as_owner, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync",
          "-E", "UTF8", "--locale=C"])
    # Durability off: this cluster lives for one test session. No TCP: nothing to collide with other runs.
    options = (f"-k {sockets} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
               "-c full_page_writes=off -c max_connections=200")
    _run([*as_owner, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
          "start"], log)
    try:
        yield f"postgresql+psycopg://postgres@/{{database}}?host={sockets}"
    finally:
        _run([*as_owner, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], log)
        shutil.rmtree(root, ignore_errors=True)


def new_postgres_database(server_url: str) -> str:
    """A fresh empty database on the session's server; its URL."""
    name = f"kiln_{os.getpid()}_{next(_databases)}"
    engine = sa.create_engine(server_url.format(database="postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE template0")
    engine.dispose()
    return server_url.format(database=name)


# ---- a real S3-compatible server (moto): the S3 object store backend ------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """http://127.0.0.1:<port> of a moto S3 server subprocess, stopped when the session ends."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            pytest.fail(f"moto server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("moto server did not start listening within 30 s")
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def runtime_wheel(tmp_path_factory) -> Path:
    """The modelkiln-runtime wheel, built as `make runtime-wheel` builds it (into a temp folder)."""
    tmp = tmp_path_factory.mktemp("runtime-wheel")
    script = Path(__file__).parents[1] / "scripts" / "build_runtime_wheel.py"
    done = subprocess.run([sys.executable, str(script), "--dist", str(tmp / "dist"), "--build", str(tmp / "build")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])
