"""Fetch stage: unpack an untrusted model.tar.gz safely (no traversal, no links, bounded size)."""
from __future__ import annotations

import os
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from modelkiln.errors import CompilationError

HINT = "create the archive with the model file(s) at its top level, e.g. tar -czf model.tar.gz model.onnx"


@dataclass(frozen=True)
class Limits:
    max_bytes: int = int(os.environ.get("KILN_MAX_MODEL_BYTES", 8 << 30))
    max_members: int = 10_000


def extract_model(source: Path, dest: Path, limits: Limits = Limits()) -> Path:
    """Unpack source (model.tar.gz, a bare model file, or a folder) into dest; return the model folder."""
    if source.is_dir():
        return source
    if not source.is_file():
        raise CompilationError("fetch", f"{source} does not exist.", "give the path of model.tar.gz.")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if not tarfile.is_tarfile(source):
            if source.name.endswith((".tar.gz", ".tgz", ".tar")):
                raise CompilationError("fetch", f"{source.name} is not a readable tar archive.", HINT)
            shutil.copy(source, dest / source.name)  # a bare model file: convenient for `kiln compile`
            return dest
        with tarfile.open(source, "r:*") as tar:
            _extract(tar, dest, limits)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise CompilationError("fetch", f"{source.name} is corrupt or truncated ({exc}).", HINT) from None
    return dest


def _extract(tar: tarfile.TarFile, dest: Path, limits: Limits) -> None:
    total = 0
    for count, member in enumerate(tar, start=1):
        if count > limits.max_members:
            raise CompilationError("fetch", f"the archive holds more than {limits.max_members} entries.", HINT)
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise CompilationError("fetch", f"archive entry {member.name!r} points outside the archive.", HINT)
        if member.issym() or member.islnk():
            raise CompilationError("fetch", f"archive entry {member.name!r} is a link; links are refused.", HINT)
        if member.isdir():
            (dest / path).mkdir(parents=True, exist_ok=True)
            continue
        if not member.isfile():
            raise CompilationError("fetch", f"archive entry {member.name!r} is not a regular file.", HINT)
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        reader = tar.extractfile(member)
        assert reader is not None
        with reader, open(target, "wb") as out:
            while chunk := reader.read(1 << 20):
                total += len(chunk)
                if total > limits.max_bytes:
                    raise CompilationError(
                        "fetch", f"the archive unpacks to more than {limits.max_bytes:,} bytes; refused.",
                        "ship a smaller model, or raise KILN_MAX_MODEL_BYTES on the server.",
                    )
                out.write(chunk)
