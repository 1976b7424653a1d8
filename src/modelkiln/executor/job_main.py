"""The sandboxed child that does one job's work: `python -m modelkiln.executor.job_main /job/spec.json`.

compile_job (the same pipeline as `kiln compile`) on the model the supervisor fetched -> the artifact in
output_dir -> RESULT.json. Progress lines go to stdout, which the runner copies into the job log. The child
has no credentials and no network: the supervisor uploads the artifact. Every failure the user can act on
ends in RESULT.json as {"ok": false, "reason": ...}; anything else is a crash, reported by the runner from
the exit status.
"""
from __future__ import annotations

import errno
import json
import resource
import sys
import traceback
from pathlib import Path
from typing import Any

from modelkiln.errors import KilnError, failure_reason
from modelkiln.executor.spec import JobSpec


def run(spec: JobSpec) -> dict[str, Any]:
    from modelkiln.compiler.pipeline import CompileJob, compile_job

    report = compile_job(
        CompileJob(model=Path(spec.model_path), framework=spec.framework, output_dir=Path(spec.output_dir),
                   data_input_config=spec.data_input_config, framework_version=spec.framework_version,
                   target_device=spec.target_device,
                   target_platform=spec.target_platform, compiler_options=spec.compiler_options,
                   calibration=Path(spec.calibration_path) if spec.calibration_path else None,
                   candidates_dir=Path(spec.candidates_dir) if spec.candidates_dir else None),
        progress=lambda stage, message: _say(f"{stage}: {message}"),
    )
    derived = {i["name"]: i["shape"] for i in report.inputs}
    _say(f"done: {report.selected} selected ({report.selection})")
    return {"ok": True, "derived_data_input_config": json.dumps(derived)}


def reason_for(exc: Exception) -> str:
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
    except Exception as exc:  # noqa: BLE001 - every failure becomes a FailureReason, see reason_for
        result = {"ok": False, "reason": reason_for(exc)}
    Path(spec.result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
