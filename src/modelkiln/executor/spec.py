"""What the runner hands a job's sandboxed child (as /job/spec.json), and where the child leaves its result.

Paths are as the child sees them (inside /job); no object-store location or credential is part of it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from modelkiln.errors import KilnError
from modelkiln.literal import parse_literal


@dataclass(frozen=True)
class JobSpec:
    framework: str
    model_path: str
    output_dir: str
    result_path: str
    data_input_config: str | None = None
    framework_version: str | None = None
    target_device: str | None = None
    target_platform: dict[str, str] | None = None
    compiler_options: str | None = None
    calibration_path: str | None = None  # CompilerOptions kiln-calibration's file, fetched by the supervisor
    candidates_dir: str | None = None  # kiln-profile-on: every verified candidate packaged here for the device

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))


@dataclass(frozen=True)
class ReferenceSpec:
    """An inference job's comparison: the source model as its compile read it, run on the job's inputs."""

    framework: str
    model_path: str
    inputs_path: str  # the inference job's InputS3Uri object
    output_path: str  # where the child writes the source model's outputs (.npz, one array per output name)
    result_path: str
    data_input_config: str | None = None
    compiler_options: str | None = None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))


def artifact_name(input_uri: str, target_device: str | None, target_platform: dict[str, str] | None) -> str:
    """Neo's naming: the input archive's name with the target appended, e.g. model-ml_c5.tar.gz."""
    stem = input_uri.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    platform = target_platform or {}
    target = target_device or "_".join(platform[k] for k in ("Os", "Arch", "Accelerator") if k in platform)
    return f"{stem or 'model'}-{target.lower()}.tar.gz"


def compiler_option(compiler_options: str | None, key: str) -> str | None:
    """A Kiln option of the job's CompilerOptions (validated when the job was created) the supervisor acts on."""
    try:
        options = parse_literal(compiler_options, "OutputConfig.CompilerOptions") if compiler_options else None
    except KilnError:  # checked at CreateCompilationJob: only a changed parser could get here
        return None
    value = options.get(key) if isinstance(options, dict) else None
    return value if isinstance(value, str) else None
