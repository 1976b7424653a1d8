"""Build the device distribution: dist/modelkiln_runtime-<version>-py3-none-any.whl (`make runtime-wheel`).

Stages packaging/runtime/pyproject.toml and README.md, src/modelkiln/runtime and src/modelkiln/agent (once the
agent exists) into build/runtime-wheel, without src/modelkiln/__init__.py, whose imports and Python 3.11
requirement belong to the server; `modelkiln` is then a namespace package. VERSION is __version__ from
src/modelkiln/__init__.py, the main package's. pip builds the wheel with the setuptools of the Python running this
script (no build isolation, no index: it builds offline).
"""
from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "agent")


def kiln_version() -> str:
    """__version__ of src/modelkiln/__init__.py, read without importing it."""
    tree = ast.parse((ROOT / "src" / "modelkiln" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__version__" for t in node.targets):
            return str(ast.literal_eval(node.value))
    raise SystemExit("src/modelkiln/__init__.py sets no __version__")


def stage(build: Path) -> Path:
    """The source tree pip builds the wheel from."""
    shutil.rmtree(build, ignore_errors=True)
    (build / "src" / "modelkiln").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / "packaging" / "runtime" / name, build / name)
    (build / "VERSION").write_text(kiln_version() + "\n")
    for package in PACKAGES:
        source = ROOT / "src" / "modelkiln" / package
        if source.is_dir():
            shutil.copytree(source, build / "src" / "modelkiln" / package,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if not (build / "src" / "modelkiln" / "agent").is_dir():
        # No agent yet: no `kiln` command either, rather than one that fails on import.
        pyproject = build / "pyproject.toml"
        pyproject.write_text(re.sub(r"\n\[project\.scripts\]\n[^\[]*", "\n", pyproject.read_text()))
        print("note: src/modelkiln/agent does not exist: the wheel has no agent and no kiln command", file=sys.stderr)
    return build


def build_wheel(dist: Path, build: Path) -> Path:
    """Stage and build; the wheel's path."""
    stage(build)
    wheel = dist / f"modelkiln_runtime-{kiln_version()}-py3-none-any.whl"
    wheel.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--wheel-dir", str(dist), str(build)], check=True)
    if not wheel.is_file():
        raise SystemExit(f"pip wheel did not write {wheel}")
    return wheel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="folder for the wheel (default: dist/)")
    parser.add_argument("--build", type=Path, default=ROOT / "build" / "runtime-wheel",
                        help="staging folder, replaced (default: build/runtime-wheel)")
    args = parser.parse_args()
    print(build_wheel(args.dist.resolve(), args.build.resolve()))


if __name__ == "__main__":
    main()
