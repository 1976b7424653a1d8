"""Darknet's two model files: the `.cfg` (INI-like sections) and the `.weights` (a header, then float32s).

The weights header (darknet's parser.c `load_weights_upto`): int32 major, minor, revision, then `seen`
as int64 when major*10+minor >= 2 (and both < 1000), else int32. The float32 arrays follow in layer order,
each layer taking what its section says it holds (see darknet.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelkiln.errors import CompilationError

CFG_HINT = "check the .cfg against darknet's format ([section] lines followed by key=value lines)."


@dataclass
class Section:
    """One [section] of a .cfg: its kind ("convolutional"...), options as written, and its line number."""

    kind: str
    options: dict[str, str]
    line: int

    def int(self, key: str, default: int) -> int:
        try:
            return int(self.options.get(key, default))
        except ValueError:
            raise CompilationError("convert", f"[{self.kind}] at line {self.line}: {key}={self.options[key]!r} "
                                   "is not an integer.", CFG_HINT) from None

    def float(self, key: str, default: float) -> float:
        try:
            return float(self.options.get(key, default))
        except ValueError:
            raise CompilationError("convert", f"[{self.kind}] at line {self.line}: {key}={self.options[key]!r} "
                                   "is not a number.", CFG_HINT) from None

    def ints(self, key: str) -> list[int]:
        """A comma-separated integer list such as layers=-1,8."""
        try:
            return [int(v) for v in self.options.get(key, "").split(",") if v.strip()]
        except ValueError:
            raise CompilationError("convert", f"[{self.kind}] at line {self.line}: {key}={self.options[key]!r} "
                                   "is not a list of integers.", CFG_HINT) from None


def read_cfg(path: Path) -> list[Section]:
    """The sections of a .cfg in file order; comments (# and ;) and blank lines dropped."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise CompilationError("convert", f"cannot read {path.name}: {exc}.", CFG_HINT) from None
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise CompilationError("convert", f"{path.name} line {number}: {raw.strip()!r} is not a [section].",
                                       CFG_HINT)
            sections.append(Section(line[1:-1].strip().lower(), {}, number))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise CompilationError("convert", f"{path.name} line {number}: {raw.strip()!r} is neither a [section] "
                                   "nor key=value inside one.", CFG_HINT)
    if not sections or sections[0].kind not in ("net", "network"):
        raise CompilationError("convert", f"{path.name} does not start with a [net] section.", CFG_HINT)
    return sections


@dataclass
class Weights:
    """The .weights file: its header and a cursor over the float32 values after it."""

    version: tuple[int, int, int]
    seen: int
    values: np.ndarray
    name: str
    pos: int = 0

    def take(self, count: int, what: str) -> np.ndarray:
        """The next `count` floats; a typed error naming `what` when the file ends first."""
        if self.pos + count > self.values.size:
            raise CompilationError(
                "convert", f"{self.name} is truncated: {what} needs {count} floats at float {self.pos}, but only "
                f"{self.values.size - self.pos} remain.", "the .weights file does not belong to this .cfg, "
                "or was cut short; export both from the same training run.")
        chunk = self.values[self.pos:self.pos + count]
        self.pos += count
        return chunk


def read_weights(path: Path) -> Weights:
    """Parse the header and map the rest as little-endian float32."""
    data = path.read_bytes()
    if len(data) < 16:
        raise CompilationError("convert", f"{path.name} is too short ({len(data)} bytes) to be a darknet "
                               ".weights file.", "export the weights again with darknet.")
    major, minor, revision = np.frombuffer(data[:12], "<i4").tolist()
    wide = major * 10 + minor >= 2 and major < 1000 and minor < 1000
    seen_size = 8 if wide else 4
    seen = int(np.frombuffer(data[12:12 + seen_size], "<i8" if wide else "<i4")[0])
    body = data[12 + seen_size:]
    usable = len(body) // 4 * 4
    return Weights((major, minor, revision), seen, np.frombuffer(body[:usable], "<f4").astype(np.float32),
                   path.name)
