"""modelkiln-runtime, the device distribution: built by the script `make runtime-wheel` runs, installed alone into a
fresh x86-64 venv and into the arm64 Python that runs under qemu-user, where it loads and runs real artifacts; and
its code stays Python 3.8 code (JetPack 5)."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

import modelkiln
from modelkiln.compiler import emulation
from modelkiln.runtime import Model

from ..conftest import CNN_SHAPE

ROOT = Path(__file__).parents[2]
SRC = ROOT / "src" / "modelkiln"
DEVICE_PACKAGES = [p for p in (SRC / "runtime", SRC / "agent") if p.is_dir()]
WHEELHOUSE = Path(sys.prefix) / "share" / "kiln" / "wheelhouse"
# vermin's verdict for the target: the oldest Python the boards have (JetPack 5), all comments parsed as code
# (no "# novm" escapes), annotations not evaluated (they are strings under `from __future__ import annotations`).
VERMIN = [sys.executable, "-c", "import sys; from vermin.main import main; sys.exit(main())",
          "-t=3.8-", "--violations", "--no-parse-comments", "--no-eval-annotations", "--no-tips", "--no-config-file"]
SCRIPT = """\
import json, sys
import numpy as np
from modelkiln.runtime import Model
model = Model(sys.argv[1], threads=1)
np.save(sys.argv[3], model.run(np.load(sys.argv[2]))[0])
"""


def test_wheel_holds_the_runtime_and_agent_but_not_the_server(runtime_wheel):
    assert runtime_wheel.name == f"modelkiln_runtime-{modelkiln.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(runtime_wheel) as whl:
        names = set(whl.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(info).decode()
        scripts = info.replace("METADATA", "entry_points.txt")
        entry_points = whl.read(scripts).decode() if scripts in names else ""
    packages = {n.split("/")[1] for n in names if n.startswith("modelkiln/")}
    assert packages == {p.name for p in DEVICE_PACKAGES}
    assert "modelkiln/__init__.py" not in names  # `modelkiln` is a namespace package on the device
    assert "modelkiln/runtime/versions.py" in names
    assert "Requires-Python: >=3.8" in metadata and "Requires-Dist: numpy>=1.19" in metadata
    for extra in ("onnxruntime", "openvino", "iree", "tvm"):
        assert f"Provides-Extra: {extra}" in metadata
    if (SRC / "agent").is_dir():
        assert "kiln = modelkiln.agent.cli:main" in entry_points


def test_installed_alone_in_a_fresh_venv_it_runs_an_onnxruntime_artifact(runtime_wheel, ort_artifact, tmp_path):
    """Installed from the wheel with its onnxruntime extra, offline (make cross-runtimes downloads the wheelhouse):
    nothing else of Kiln is there, and the artifact's outputs equal this venv's run of it."""
    assert (WHEELHOUSE / "VERSION").is_file(), f"no wheelhouse at {WHEELHOUSE}: run make cross-runtimes"
    base = shutil.which("python3.11") or sys.executable
    venv = tmp_path / "device"
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-index", "--find-links",
                              str(WHEELHOUSE), f"{runtime_wheel}[onnxruntime]"],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    probe = subprocess.run([str(python), "-I", "-c", (
        "import importlib.util as u, importlib.metadata as m, modelkiln, json; print(json.dumps({"
        "'compiler': u.find_spec('modelkiln.compiler') is not None, 'init': getattr(modelkiln, '__file__', None),"
        "'dists': sorted(d.metadata['Name'] for d in m.distributions())}))")],
        capture_output=True, text=True, check=True, timeout=120)
    found = json.loads(probe.stdout)
    assert found["compiler"] is False and found["init"] is None
    assert "modelkiln-runtime" in found["dists"] and "modelkiln" not in found["dists"]

    artifact = ort_artifact[1] / "model.tar.gz"
    x = np.random.default_rng(3).standard_normal(CNN_SHAPE).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run = subprocess.run([str(python), "-I", "-c", SCRIPT, str(artifact), str(tmp_path / "x.npy"),
                          str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), Model(artifact, threads=1).run(x)[0])


def test_installed_into_the_arm64_python_it_runs_an_aarch64_artifact_under_qemu(runtime_wheel, aarch64_artifact,
                                                                                models, tmp_path):
    """The same wheel's files in the aarch64 CPython 3.11 that make cross-runtimes unpacks, with its aarch64 numpy and
    onnxruntime: the rasp4b artifact loads through Model (its checks included) and matches onnxruntime on x86."""
    report, out = aarch64_artifact
    assert report.winner().backend == "onnxruntime"
    emu = emulation.find_python_emulator("aarch64", "onnxruntime")
    assert isinstance(emu, emulation.PythonEmulator), emu
    target = tmp_path / "site"
    # pure Python: this machine's pip installs it for any architecture
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                    str(target), str(runtime_wheel)], check=True, timeout=300)
    x = np.random.default_rng(5).standard_normal(CNN_SHAPE).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": str(tmp_path),
           "PYTHONNOUSERSITE": "1", "PYTHONPATH": f"{target}:{emu.site}"}
    code = "import platform; assert platform.machine() == 'aarch64', platform.machine()\n" + SCRIPT
    run = subprocess.run([emu.qemu, "-L", str(emu.root), str(emu.python), "-c", code, str(out / "model.tar.gz"),
                          str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    import onnxruntime as ort

    expected = ort.InferenceSession(str(models / "cnn.onnx")).run(None, {"data": x})[0]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-6)


def test_device_code_needs_no_python_newer_than_3_8(tmp_path):
    """vermin finds no construct newer than 3.8 in the runtime and the agent; and the same command does fail on a
    file using 3.9/3.10 features, so a pass means something."""
    done = subprocess.run([*VERMIN, *map(str, DEVICE_PACKAGES)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for source in ("def f(x):\n    match x:\n        case 1:\n            return 1\n",
                   "def f():\n    return 'kiln'.removeprefix('k')\n"):
        (tmp_path / "newer.py").write_text(source)
        assert subprocess.run([*VERMIN, str(tmp_path / "newer.py")], capture_output=True, timeout=120).returncode != 0


BUILTIN_GENERICS = ("list", "dict", "tuple", "set", "frozenset", "type")


def _newer_type_syntax(path: Path) -> list[str]:
    """What vermin does not see: `X | Y` in isinstance/issubclass, subscripted builtins (list[int]) outside
    annotations, and annotations using either without `from __future__ import annotations` (evaluated on 3.8)."""
    tree = ast.parse(path.read_text())
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                 any(a.name == "annotations" for a in n.names) for n in tree.body)
    in_annotation = {id(sub) for node in ast.walk(tree) for value in _annotations_of(node) for sub in ast.walk(value)}
    found = []
    for node in ast.walk(tree):
        union = isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)
        generic = isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and \
            node.value.id in BUILTIN_GENERICS
        if id(node) in in_annotation:
            bad = (union or generic) and not future
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("isinstance", "issubclass"):
            bad = len(node.args) == 2 and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)
                                              for n in ast.walk(node.args[1]))
        else:
            bad = generic
        if bad:
            found.append(f"{path}:{node.lineno}")
    return found


def _annotations_of(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        args = node.args
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        return [a.annotation for a in every if a is not None and a.annotation is not None] + \
            ([node.returns] if node.returns else [])
    if isinstance(node, ast.AnnAssign):
        return [node.annotation]
    return []


def test_device_code_evaluates_no_3_9_or_3_10_type_syntax_at_run_time(tmp_path):
    found = [where for package in DEVICE_PACKAGES for path in sorted(package.rglob("*.py"))
             for where in _newer_type_syntax(path)]
    assert not found, f"type syntax Python 3.8 cannot evaluate (typing.Union/List, or a tuple in isinstance): {found}"
    (tmp_path / "newer.py").write_text(
        "from __future__ import annotations\n"
        "def f(x: list[int] | None, flags: int) -> dict[str, int]:\n"  # fine: never evaluated
        "    ok = flags | 4\n"  # fine: an int
        "    Alias = tuple[int, ...]\n"  # 3.9
        "    return isinstance(x, list | tuple)\n")  # 3.10
    assert [w.rsplit(":", 1)[1] for w in _newer_type_syntax(tmp_path / "newer.py")] == ["4", "5"]
    (tmp_path / "newer.py").write_text("def f(x: int | None) -> None:\n    pass\n")  # evaluated at def time
    assert len(_newer_type_syntax(tmp_path / "newer.py")) == 1
