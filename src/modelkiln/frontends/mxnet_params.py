"""MXNet's two model files, read without the mxnet package: `*-symbol.json` (the graph) and `.params`.

`.params` is NDArray::Save of a list (src/ndarray/ndarray.cc): uint64 magic 0x112, uint64 reserved,
uint64 count, then per array a uint32 magic (V1 0xF993FAC8, V2 0xF993FAC9, V3 0xF993FACA; older files
start straight with a uint32 ndim), V2/V3 an int32 storage type, the shape (int32 ndim + int64 dims;
legacy uint32s), int32 device type + id, int32 dtype flag and the raw little-endian data; then the
names as uint64 count + (uint64 length, bytes) each, prefixed `arg:` or `aux:`.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.errors import CompilationError

LIST_MAGIC = 0x112
V1, V2, V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
DTYPES = {0: "float32", 1: "float64", 2: "float16", 3: "uint8", 4: "int32", 5: "int8", 6: "int64", 7: "bool"}
SAVE_HINT = "save the model again with mx.model.save_checkpoint(prefix, epoch, sym, arg_params, aux_params)."


@dataclass
class Node:
    """One entry of symbol.json's node list."""

    index: int
    op: str
    name: str
    attrs: dict[str, str]
    inputs: list[tuple[int, int]]  # (node index, output index)


@dataclass
class Symbol:
    """The graph of symbol.json: nodes in topological order and the outputs (heads)."""

    nodes: list[Node]
    heads: list[tuple[int, int]]
    mxnet_version: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


def read_symbol(path: Path) -> Symbol:
    """Parse symbol.json; accepts the attribute spellings of every MXNet 1.x (`attrs`, `attr`, `param`)."""
    try:
        raw = json.loads(path.read_text())
        nodes = [
            Node(i, n["op"], n["name"], {k: str(v) for k, v in (n.get("attrs") or n.get("attr") or
                                                                n.get("param") or {}).items()},
                 [(int(e[0]), int(e[1])) for e in n.get("inputs", [])])
            for i, n in enumerate(raw["nodes"])
        ]
        heads = [(int(h[0]), int(h[1])) for h in raw["heads"]]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CompilationError("convert", f"{path.name} is not an MXNet symbol file ({exc!s:.200}).",
                               SAVE_HINT) from None
    version = (raw.get("attrs") or {}).get("mxnet_version")
    return Symbol(nodes, heads, _version_text(version), raw.get("attrs") or {})


def _version_text(version: Any) -> str | None:
    """["int", 10901] -> "1.9.1"."""
    if isinstance(version, list) and len(version) == 2 and str(version[1]).isdigit():
        number = int(version[1])
        return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
    return None


class _Reader:
    """A cursor over the file's bytes that names the file when it runs out."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.pos, self.name = data, 0, name

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise CompilationError(
                "convert", f"{self.name} is truncated or not an MXNet .params file (needed {size} bytes at "
                f"offset {self.pos}, the file has {len(self.data)}).", SAVE_HINT)
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def read_params(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .params file by name, `arg:`/`aux:` prefixes removed."""
    reader = _Reader(path.read_bytes(), path.name)
    magic, _reserved, count = reader.unpack("QQQ")
    if magic != LIST_MAGIC:
        raise CompilationError("convert", f"{path.name} is not an MXNet .params file (magic {magic:#x}, "
                               f"expected {LIST_MAGIC:#x}).", SAVE_HINT)
    arrays = [_read_array(reader) for _ in range(count)]
    (n_names,) = reader.unpack("Q")
    names = []
    for _ in range(n_names):
        (length,) = reader.unpack("Q")
        names.append(reader.take(length).decode("utf-8", "replace"))
    if names and len(names) != len(arrays):
        raise CompilationError("convert", f"{path.name} holds {len(arrays)} arrays but {len(names)} names.",
                               SAVE_HINT)
    names = names or [f"arg:param{i}" for i in range(len(arrays))]
    return {n.split(":", 1)[1] if n.startswith(("arg:", "aux:")) else n: a for n, a in zip(names, arrays)}


def _read_array(reader: _Reader) -> np.ndarray:
    (magic,) = reader.unpack("I")
    if magic in (V2, V3):
        (storage,) = reader.unpack("i")
        if storage != 0:
            raise CompilationError("convert", f"{reader.name} holds a sparse array (storage type {storage}).",
                                   "convert sparse parameters to dense (arr.tostype('default')) and save again.")
    if magic in (V1, V2, V3):
        (ndim,) = reader.unpack("i")
        shape = reader.unpack(f"{max(ndim, 0)}q")
    else:  # the oldest layout: no magic, the first word is ndim, dims are uint32
        ndim = magic
        shape = reader.unpack(f"{ndim}I")
    if ndim <= 0:
        return np.zeros((0,), np.float32)
    _dev_type, _dev_id, flag = reader.unpack("iii")
    if flag not in DTYPES:
        raise CompilationError("convert", f"{reader.name} holds an array of MXNet dtype flag {flag}, "
                               f"which Kiln does not read (it reads {', '.join(DTYPES.values())}).", SAVE_HINT)
    dtype = np.dtype(DTYPES[flag]).newbyteorder("<")
    size = int(np.prod(shape)) * dtype.itemsize
    return np.frombuffer(reader.take(size), dtype).reshape(shape).astype(dtype.newbyteorder("="))


# ---- operator attributes: symbol.json stores every value as a string ("(3, 3)", "True", "1e-05") ----------

def attr_tuple(attrs: dict[str, str], key: str, default: tuple[int, ...] = ()) -> tuple[int, ...]:
    """An integer tuple attribute such as kernel="(3, 3)"; "None" entries (Reshape) read as 0."""
    text = attrs.get(key, "").strip().strip("()[]").strip()
    if not text:
        return default
    return tuple(int(float(v)) if v.strip() not in ("None", "") else 0 for v in text.split(",") if v.strip())


def attr_bool(attrs: dict[str, str], key: str, default: bool) -> bool:
    """A boolean attribute: "True"/"False"/"1"/"0"."""
    text = attrs.get(key)
    return default if text is None else text.strip().lower() in ("true", "1")


def attr_float(attrs: dict[str, str], key: str, default: float) -> float:
    """A float attribute; "None" reads as the default."""
    text = attrs.get(key)
    return default if text is None or text == "None" else float(text)
