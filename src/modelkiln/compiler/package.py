"""Package stage: compiled.meta + the backend's files + report.json -> model.tar.gz, written atomically."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

from modelkiln import __version__
from modelkiln.compiler.backends import Backend, BackendOutput
from modelkiln.frontends import ConvertedModel
from modelkiln.targets import CompilerOptions, Target

ARTIFACT = "model.tar.gz"


def build_meta(target: Target, model: ConvertedModel, backend: Backend, output: BackendOutput,
               options: CompilerOptions) -> dict:
    """compiled.meta: what the runtime needs to check the device and run the files (DLR's keys + Kiln's)."""
    requirements = {"TargetDevice": target.name, "TargetDeviceType": target.device_type, "Os": target.os}
    if target.gpu:
        requirements["Gpu"] = {"Api": target.gpu.api, "Code": target.gpu.code, "PtxIsa": target.gpu.ptx_isa}
    if not output.host_independent:
        requirements |= {"Arch": target.arch, "Mcpu": target.mcpu}
        if not backend.portable and target.arch == "x86_64":
            requirements["CpuFlags"] = list(target.features)
    if output.runtime:
        requirements["Runtime"] = dict(output.runtime)
    return {
        "Requirements": requirements,
        "Model": {"Inputs": [i.as_meta() for i in model.inputs], "Outputs": [o.as_meta() for o in model.outputs]},
        "Backend": {"Name": backend.name, "Version": backend.version(), "Files": output.files,
                    "Runtime": backend.runtime_requirement(), **output.entry},
        "Target": {"Name": target.name, "Triple": target.triple, "Mcpu": target.mcpu, "Mattr": list(target.mattr)},
        "Precision": options.precision,
        "Source": {"Framework": model.framework, "FrameworkVersion": model.framework_version,
                   "Converters": model.converters},
        "Kiln": {"Version": __version__},
    }


def write_artifact(workdir: Path, files: list[str], meta: dict, report: dict, output_dir: Path) -> tuple[Path, str]:
    """Write output_dir/model.tar.gz atomically (temp file + rename); return its path and sha256."""
    output_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".model-", suffix=".tar.gz.part", dir=output_dir)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for name in files:
                tar.add(workdir / name, arcname=name)
            for name, doc in (("compiled.meta", meta), ("report.json", report)):
                data = json.dumps(doc, indent=2).encode()
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        digest = hashlib.sha256(Path(tmp_name).read_bytes()).hexdigest()
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp's file is 0600; the artifact is the user's, as any file
        final = output_dir / ARTIFACT
        os.replace(tmp_name, final)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return final, digest


def _umask() -> int:
    """This process's umask, read without changing it (os.umask both sets and gets, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022
