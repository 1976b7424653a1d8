"""The parts import only what DESIGN.md allows, so the runtime can ship alone and arrows go one way."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "modelkiln"
SHARED = {"modelkiln", "modelkiln.errors", "modelkiln.literal"}  # leaf modules every part may use
ALLOWED = {
    "runtime": {"runtime"},  # nothing else of Kiln: a device installs it alone
    "targets": {"targets"},
    "frontends": {"frontends"},
    # compiler verifies artifacts with the same runtime users run them with
    "compiler": {"compiler", "frontends", "targets", "runtime"},
    "jobs": {"jobs", "targets", "storage"},
    "auth": {"auth"},
    "storage": {"storage"},
    "api": {"api", "jobs", "storage", "auth", "devices"},
    "devices": {"devices", "jobs"},
    # the device agent ships with the runtime (modelkiln-runtime): stdlib, and the runtime in its children
    "agent": {"agent", "runtime"},
    # executor fetches models and writes artifacts through the object store the API serves
    # and queues kiln-profile-on's profile jobs for the account's device
    "executor": {"executor", "jobs", "compiler", "storage", "devices"},
}


def kiln_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "modelkiln" or name.startswith("modelkiln.")}


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_part_imports_only_what_it_may(part):
    allowed = SHARED if part not in ("runtime", "agent") else set()
    for path in sorted((PACKAGE / part).rglob("*.py")):
        for name in kiln_imports(path):
            owner = name.split(".")[1] if name.count(".") else name
            ok = name in allowed or owner in ALLOWED[part]
            assert ok, f"{path.relative_to(PACKAGE)} imports {name}, which {part}/ may not"
