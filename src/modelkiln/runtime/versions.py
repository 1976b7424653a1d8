"""The backend runtime versions an artifact needs (compiled.meta Requirements.Runtime), checked before loading.

compiled.meta says e.g. {"onnxruntime": ">=1.12"}: pip's name of the backend's package and a requirement made of
comma-separated clauses ">=V", "==V" or "==V.*". Kept to that small grammar so that the runtime needs no
`packaging` (it runs on a bare board Python, 3.8 and up).
"""
from __future__ import annotations

import importlib.util
import re
from importlib import metadata

# Other distributions that install the same importable module as pip's name in compiled.meta: Jetson's
# onnxruntime-gpu (NVIDIA's Jetson Zoo wheels), Intel's onnxruntime-openvino, a TVM built from source.
PROVIDERS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml",
                    "onnxruntime-qnn"),
    "openvino": ("openvino", "openvino-nightly"),
    "iree-base-runtime": ("iree-base-runtime", "iree-runtime"),
    "apache-tvm": ("apache-tvm", "tvm"),
}
# The module each package installs: one importable without any distribution metadata (a source build in
# PYTHONPATH) has a version this runtime cannot read, so it is not refused.
MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "iree-base-runtime": "iree.runtime",
           "apache-tvm": "tvm"}


def release(version: str) -> tuple[int, ...]:
    """The numeric release at the start of a version: "1.16.3" -> (1, 16, 3), "0.27.0.post1" -> (0, 27, 0),
    "2024.0.0-14509-34caeefd078" -> (2024, 0, 0). Pre-release tags ("1.17.0rc1") count as their release."""
    numbers = []
    for piece in re.split(r"[+-]", version.strip(), maxsplit=1)[0].split("."):  # "-..."/"+..." is a build tag
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        numbers.append(int(digits.group()))
        if digits.end() != len(piece):
            break
    return tuple(numbers)


def _padded(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def satisfies(version: str, requirement: str) -> bool:
    """Whether `version` meets every clause of `requirement` (">=1.12", "==3.13.0", "==0.27.*"); ValueError for a
    clause outside that grammar (from a newer Kiln), so that it is not misread as met."""
    have = release(version)
    for clause in (c.strip() for c in requirement.split(",") if c.strip()):
        if clause.startswith(">="):
            a, b = _padded(have, release(clause[2:]))
            ok = a >= b
        elif clause.startswith("==") and clause.endswith(".*"):
            prefix = release(clause[2:-2])
            ok = have[:len(prefix)] == prefix
        elif clause.startswith("=="):
            a, b = _padded(have, release(clause[2:]))
            ok = a == b
        else:
            raise ValueError(f"requirement clause {clause!r} is not understood by this runtime")
        if not ok:
            return False
    return True


def installed(package: str) -> tuple[str, str] | None:
    """(distribution, version) of the installed distribution that provides `package`, or None."""
    for dist in PROVIDERS.get(package, (package,)):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def runtime_problem(needs: dict[str, str]) -> str | None:
    """Why the installed backend runtimes cannot run an artifact that needs `needs` (missing, or older than needed:
    the package, both versions and the pip command), or None when they can. Artifacts from before Kiln recorded
    this have no Requirements.Runtime: nothing to check."""
    for package, requirement in needs.items():
        found = installed(package)
        fix = f"pip install '{package}{requirement}'"
        if found is None:
            module = MODULES.get(package)
            if module and _importable(module):
                continue  # importable without metadata (a source build): its version cannot be read here
            return f"this artifact needs {package}{requirement}, which is not installed here: {fix}"
        dist, version = found
        try:
            ok = satisfies(version, requirement)
        except ValueError as exc:
            return (f"this artifact's requirement {package}{requirement} is not understood by this runtime ({exc}): "
                    "pip install --upgrade modelkiln-runtime")
        if not ok:
            return f"this artifact needs {package}{requirement}, but {dist} {version} is installed here: {fix}"
    return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # find_spec imports the parent package ("iree"), which may be absent
        return False
