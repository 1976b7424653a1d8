"""The sandboxed child that does one job's work: `python -m modelkiln.executor.job_main SPEC.json`.

fetch the model from the object store -> compile_job (the same pipeline as `kiln compile`) -> upload the
artifact -> write RESULT.json. Progress lines go to stdout, which the runner copies into the job log.
Every failure the user can act on ends in RESULT.json as {"ok": false, "reason": ...}; anything else is a
crash, reported by the runner from the exit status.
"""
from __future__ import annotations

import errno
import hashlib
import json
import resource
import sys
import traceback
from pathlib import Path
from typing import Any

from modelkiln.errors import CompilationError, KilnError, ValidationError
from modelkiln.executor.spec import JobSpec, artifact_name


def run(spec: JobSpec) -> dict[str, Any]:
    from modelkiln.compiler.pipeline import CompileJob, compile_job
    from modelkiln.storage import download_file, open_store, parse_s3_uri, upload_file

    store = open_store(spec.objects_url)
    work = Path(spec.work_dir)
    source = parse_s3_uri(spec.input_uri)
    local_model = work / (source.key.rsplit("/", 1)[-1] or "model.tar.gz")
    _say(f"fetch: downloading {spec.input_uri}")
    try:
        download_file(store, spec.account_id, source.bucket, source.key, local_model)
    except KilnError as exc:
        raise CompilationError("fetch", f"cannot read InputConfig.S3Uri {spec.input_uri}: {exc}",
                               "upload the model there, or correct S3Uri, and create the job again") from None
    report = compile_job(
        CompileJob(model=local_model, framework=spec.framework, output_dir=work / "out",
                   data_input_config=spec.data_input_config, framework_version=spec.framework_version,
                   target_device=spec.target_device,
                   target_platform=spec.target_platform, compiler_options=spec.compiler_options),
        progress=lambda stage, message: _say(f"{stage}: {message}"),
    )
    artifact = work / "out" / "model.tar.gz"
    destination = parse_s3_uri(spec.output_location).join(artifact_name(spec))
    _say(f"upload: writing {destination}")
    upload_file(store, spec.account_id, artifact, destination.bucket, destination.key,
                content_type="application/gzip", sse_kms_key_id=spec.kms_key_id)
    derived = {i["name"]: i["shape"] for i in report.inputs}
    _say(f"done: {report.selected} selected ({report.selection})")
    return {"ok": True, "artifact_uri": str(destination), "artifact_digest": _sha256(artifact),
            "derived_data_input_config": json.dumps(derived), "report": report.to_json()}


def failure_reason(exc: KilnError) -> str:
    """A FailureReason in Neo's style: ClientError for what the user must change, naming the stage and the fix."""
    if isinstance(exc, ValidationError):
        return f"ClientError: {exc.field}: {exc.message}"
    if isinstance(exc, CompilationError):
        return f"ClientError: {exc.stage}: {exc.message}" + (f" Fix: {exc.hint}" if exc.hint else "")
    return f"ClientError: {exc}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _reason(exc: Exception) -> str:
    if isinstance(exc, KilnError):
        _say(f"error: {exc}")
        return failure_reason(exc)
    if isinstance(exc, MemoryError) or "failed to map segment" in str(exc):  # the latter: a library load
        return (f"ClientError: the model needs more memory than this Kiln server allows a job "
                f"({_limit_mb(resource.RLIMIT_AS)}); compile a smaller model or ask the operator to raise "
                "job_memory_mb")
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return (f"ClientError: the compile wrote a file larger than this Kiln server allows a job "
                f"({_limit_mb(resource.RLIMIT_FSIZE)}); compile a smaller model or ask the operator to raise "
                "job_file_size_mb")
    traceback.print_exception(exc, file=sys.stdout)  # a Kiln bug: the trace goes to the log, not to the user
    return (f"ServerError: Kiln failed unexpectedly ({type(exc).__name__}: {exc}). This is a Kiln bug, not a "
            "problem with your request; the job log has the details for the operator.")


def _limit_mb(which: int) -> str:
    soft, _ = resource.getrlimit(which)
    return "no limit" if soft == resource.RLIM_INFINITY else f"{soft // 2**20} MB"


def _say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str]) -> int:
    spec = JobSpec(**json.loads(Path(argv[1]).read_text()))
    try:
        result = run(spec)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a FailureReason, see _reason
        result = {"ok": False, "reason": _reason(exc)}
    spec.result_path.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
