"""`kiln serve` / `kiln worker` settings: command-line flag, else KILN_* environment variable, else the config
file (TOML: --config, $KILN_CONFIG, or DATA_DIR/kiln.toml), else the default.

    host = "127.0.0.1"          # KILN_HOST
    port = 8080                 # KILN_PORT
    data_dir = "/var/lib/kiln"  # KILN_DATA_DIR: keys.json, kiln.db, objects/, work/
    store_url = "postgresql+psycopg://kiln@db/kiln"   # KILN_STORE_URL (default: SQLite in data_dir)
    objects_url = "http://minio:9000?region=us-east-1" # KILN_OBJECTS_URL (default: data_dir/objects)
    scheduler = "tls://scheduler:8786"                 # KILN_SCHEDULER (default: a LocalCluster)
    tls_ca_file = "/etc/kiln/ca.pem"                   # KILN_TLS_CA_FILE: Dask TLS (an external scheduler)
    tls_cert = "/etc/kiln/node.pem"                    # KILN_TLS_CERT
    tls_key = "/etc/kiln/node-key.pem"                 # KILN_TLS_KEY
    workers = 2                 # KILN_WORKERS: LocalCluster worker processes (one job each at a time)
    job_memory_mb = 8192        # KILN_JOB_MEMORY_MB: address-space limit of a job's sandbox process
    job_file_size_mb = 4096     # KILN_JOB_FILE_SIZE_MB: largest file a job may write
    max_active_jobs = 20        # KILN_MAX_ACTIVE_JOBS: unfinished jobs per account (more: ResourceLimitExceeded)
    device_lease_s = 30         # KILN_DEVICE_LEASE_S: a device job fails when its agent is silent this long
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelkiln.errors import ValidationError

ENV_PREFIX = "KILN_"
CONFIG_NAME = "kiln.toml"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"  # loopback unless the operator opens it on purpose
    port: int = 8080
    data_dir: Path = Path("kiln-data")
    store_url: str = ""
    objects_url: str = ""
    scheduler: str = ""
    tls_ca_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    workers: int = max(1, (os.cpu_count() or 2) // 2)
    job_memory_mb: int = 8192
    job_file_size_mb: int = 4096
    max_active_jobs: int = 20
    device_lease_s: int = 30

    @property
    def job_store_url(self) -> str:
        return self.store_url or f"sqlite:///{(self.data_dir / 'kiln.db').resolve()}"

    @property
    def object_store_url(self) -> str:
        return self.objects_url or str((self.data_dir / "objects").resolve())

    @property
    def keys_path(self) -> Path:
        return self.data_dir / "keys.json"


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def load_settings(flags: Mapping[str, Any], env: Mapping[str, str] = os.environ,
                  config: Path | None = None) -> Settings:
    """Settings from flags (None = not given), then the environment, then the config file, then defaults."""
    values: dict[str, Any] = {}
    for name in FIELDS:
        if flags.get(name) is not None:
            values[name] = flags[name]
        elif env.get(ENV_PREFIX + name.upper()):
            values[name] = env[ENV_PREFIX + name.upper()]
    config = config or (Path(env["KILN_CONFIG"]) if env.get("KILN_CONFIG") else None)
    data_dir = Path(values.get("data_dir") or Settings.data_dir)
    if config is None and (data_dir / CONFIG_NAME).is_file():
        config = data_dir / CONFIG_NAME
    for name, value in (_read_config(config) if config else {}).items():
        values.setdefault(name, value)
    return Settings(**{name: _convert(name, value) for name, value in values.items()})


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValidationError("--config", f"cannot read {path}: {exc}") from None
    unknown = set(data) - set(FIELDS)
    if unknown:
        raise ValidationError("--config", f"{path} sets unknown keys {sorted(unknown)}; known: {sorted(FIELDS)}")
    return data


def _convert(name: str, value: Any) -> Any:
    kind = FIELDS[name].type
    try:
        if kind == "int":
            number = int(value)
            if number < (0 if name == "port" else 1):
                raise ValueError("must be positive")
            return number
        if kind == "Path":
            return Path(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(name, f"{value!r} is not valid: {exc}") from None
