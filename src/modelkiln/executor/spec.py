"""What the runner hands a job's sandboxed child (as spec.json), and where the child leaves its result."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class JobSpec:
    account_id: str
    input_uri: str
    framework: str
    output_location: str
    objects_url: str
    work_dir: str
    data_input_config: str | None = None
    framework_version: str | None = None
    target_device: str | None = None
    target_platform: dict[str, str] | None = None
    compiler_options: str | None = None
    kms_key_id: str | None = None

    @property
    def result_path(self) -> Path:
        return Path(self.work_dir) / "result.json"

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))


def artifact_name(spec: JobSpec) -> str:
    """Neo's naming: the input archive's name with the target appended, e.g. model-ml_c5.tar.gz."""
    stem = spec.input_uri.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    platform = spec.target_platform or {}
    target = spec.target_device or "_".join(platform[k] for k in ("Os", "Arch", "Accelerator") if k in platform)
    return f"{stem or 'model'}-{target.lower()}.tar.gz"
