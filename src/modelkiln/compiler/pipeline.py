"""The compile pipeline: fetch -> convert -> compile -> verify -> select -> package.

Where the target is this host's kind of CPU, every eligible backend is compiled, verified and timed,
and the fastest that verifies ships. Elsewhere the catalog's order decides: the first candidate that
verifies (under emulation, or by the checks listed in its report) ships. The order is the catalog's for the
model's kind (tree ensembles have their own, Treelite first); a backend that takes none of the forms the
frontend produced (ONNX, ONNX-ML, Treelite) is skipped with the reason.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from modelkiln import __version__
from modelkiln.compiler import calibration, check_inputs, coreml
from modelkiln.compiler.accuracy import CLASSIFIER_BUDGET, OTHER_BUDGET
from modelkiln.compiler.archive import extract_model
from modelkiln.compiler.backends import BACKENDS, Backend
from modelkiln.compiler.package import build_meta, write_artifact
from modelkiln.compiler.report import Candidate, Report
from modelkiln.compiler.routes import (
    CheckContext, Progress, accuracy_under_emulation, brief, check_accuracy, check_samples, model_form, native_precisions, ordered,
    verify_foreign, verify_gpu,
)
from modelkiln.compiler.verify import HOPELESS, SPEC_ONLY, TOLERANCE, Check, host_can_run, median_latencies_ms
from modelkiln.errors import CompilationError, KilnError, ValidationError
from modelkiln.frontends import ConvertedModel, check_framework, check_framework_version, frontend_for
from modelkiln.runtime.executors import kernels_note, open_executor
from modelkiln.runtime.model import host_arch
from modelkiln.targets import CompilerOptions, Target, parse_compiler_options, resolve
from modelkiln.targets.options import AUTO, FIELD as OPTIONS_FIELD, FORWARD_ARGS

@dataclass
class CompileJob:
    """One compilation, in the SageMaker request's own terms."""

    model: Path  # model.tar.gz (or a bare model file / folder, for the CLI)
    framework: str
    output_dir: Path
    data_input_config: str | None = None
    target_device: str | None = None
    target_platform: dict[str, str] | None = None
    compiler_options: str | None = None
    framework_version: str | None = None  # InputConfig.FrameworkVersion, checked against what Kiln can read
    calibration: Path | None = None  # the .npz CompilerOptions kiln-calibration names, fetched by the caller
    # kiln-profile-on: every verified candidate is also packaged here (CANDIDATES_DIR/<key>/model.tar.gz), for
    # the service to time on the device; `kiln compile` has no devices and leaves it None
    candidates_dir: Path | None = None


def validate(job: CompileJob) -> tuple[Target, CompilerOptions]:
    """The checks that need no model file: framework, target, options. Raises ValidationError."""
    check_framework(job.framework)
    check_framework_version(job.framework, job.framework_version)
    options = parse_compiler_options(job.compiler_options)
    if FORWARD_ARGS in options.recorded and job.framework.upper() != "PYTORCH":
        raise ValidationError(f"{OPTIONS_FIELD}.{FORWARD_ARGS}",
                              f"binds a TorchScript forward()'s non-tensor parameters; {job.framework} models have none")
    if options.calibration and job.calibration is None:
        raise ValidationError(f"{OPTIONS_FIELD}.kiln-calibration", "names an S3 object, which the Kiln service fetches; "
                              "`kiln compile` reads a local file: give it with --calibration FILE")
    if options.profile_on and job.candidates_dir is None:
        raise ValidationError(f"{OPTIONS_FIELD}.kiln-profile-on", "names a device registered with a Kiln server, "
                              "which times the candidates there; `kiln compile` has none: compile through the "
                              "service, or time the artifact on the device with `kiln profile`")
    target = resolve(options, device=job.target_device, platform_=job.target_platform)
    return target, options


def compile_job(job: CompileJob, progress: Progress = lambda stage, msg: None) -> Report:
    """Run the whole pipeline; write output_dir/model.tar.gz and output_dir/report.json."""
    target, options = validate(job)
    stages: dict[str, float] = {}
    if target.device_type == "coreml":
        return _compile_coreml(job, target, options, stages, progress)
    with tempfile.TemporaryDirectory(prefix="kiln-") as tmp:
        work = Path(tmp)
        with _stage("fetch", stages, progress, f"unpacking {job.model.name}"):
            model_dir = extract_model(job.model, work / "model")
        with _stage("convert", stages, progress, f"reading the {job.framework} model"):
            model = frontend_for(job.framework)(model_dir, job.data_input_config, options.input_dtype,
                                                options.recorded)
            inputs = check_inputs.prepare(model, model_dir)
        native = host_can_run(target)
        ctx = CheckContext(target, options, model, inputs, native, progress)
        order = target.backends_for(trees=model.tree_model is not None)
        _check_gpu_takes(target, model)
        candidates = _candidates(order, target, options, native)
        if any(c.precision != "float32" for c in candidates):
            with _stage("calibrate", stages, progress, "samples for int8 ranges and accuracy figures"):
                ctx.precision_data = calibration.prepare(model, model_dir, job.calibration, options.calibration or "")
        with _stage("compile", stages, progress, f"{len(candidates)} candidate(s) for {target.name}"):
            for cand in candidates:
                if not native and not job.candidates_dir and any(c.check and c.check.ran for c in candidates):
                    cand.status, cand.reason = "not tried", "an earlier backend in the catalog's order verified"
                    continue
                _try_candidate(ctx, cand, work / cand.key)
        with _stage("select", stages, progress, "timing the verified candidates" if native else "choosing"):
            _time_candidates(ctx, candidates)
            winner, how = _select(candidates, ctx)
        report = Report(
            framework=model.framework, framework_version=model.framework_version,
            target={"name": target.name, "arch": target.arch, "triple": target.triple, "mcpu": target.mcpu,
                    "mattr": list(target.mattr), "device_type": target.device_type, "about": target.about},
            inputs=[i.as_meta() for i in model.inputs], outputs=[o.as_meta() for o in model.outputs],
            candidates=candidates, selected=winner.key, selection=how, converters=model.converters,
            notes=[n for n in (target.note, *model.notes, _version_note(job, model.framework_version),
                               _precision_note(target, winner)) if n], stages_s=stages,
            kiln_version=__version__, check_inputs=inputs.described, precision=_precision_record(ctx),
        )
        with _stage("package", stages, progress, f"writing {job.output_dir / 'model.tar.gz'}"):
            meta = json.loads((work / winner.key / "compiled.meta").read_text())
            artifact, digest = write_artifact(work / winner.key, meta["Backend"]["Files"], meta,
                                              report.to_json(), job.output_dir)
            if job.candidates_dir:
                _write_candidates(work, candidates, report, job.candidates_dir)
        report.artifact, report.artifact_sha256 = str(artifact), digest
        (job.output_dir / "report.json").write_text(json.dumps(report.to_json(), indent=2))
    return report


def _write_candidates(work: Path, candidates: list[Candidate], report: Report, folder: Path) -> None:
    """Every verified candidate as an artifact of its own (kiln-profile-on: the device picks among them)."""
    for cand in candidates:
        if cand.status in ("passed", "selected"):
            meta = json.loads((work / cand.key / "compiled.meta").read_text())
            write_artifact(work / cand.key, meta["Backend"]["Files"], meta, report.to_json(), folder / cand.key)


def _compile_coreml(job: CompileJob, target: Target, options: CompilerOptions, stages: dict[str, float],
                    progress: Progress) -> Report:
    """Core ML: coremltools converts the source model itself (not the ONNX form), and prediction needs macOS,
    so the package's spec is checked against the request and the report says numerics were not run."""
    labels = options.recorded.get("class_labels")
    with tempfile.TemporaryDirectory(prefix="kiln-") as tmp:
        work = Path(tmp)
        with _stage("fetch", stages, progress, f"unpacking {job.model.name}"):
            model_dir = extract_model(job.model, work / "model")
        with _stage("convert", stages, progress, f"converting the {job.framework} model with coremltools"):
            inputs = coreml.parse_inputs(job.data_input_config, job.framework)
            result = coreml.convert(model_dir, job.framework, inputs, labels, work / "out")
        with _stage("verify", stages, progress, "checking the Core ML package's spec"):
            checked = coreml.validate(work / "out", result, inputs, labels)
        version = result.converters.get("coremltools", "")
        size = sum(f.stat().st_size for f in (work / "out").rglob("*") if f.is_file())
        cand = Candidate("coremltools", version, status="selected", compile_s=result.seconds, size_bytes=size,
                         check=Check(SPEC_ONLY, "spec check on this host (Core ML needs macOS)",
                                     TOLERANCE.get(options.precision, TOLERANCE["float32"]), detail=checked), command=result.command, notes=result.notes)
        report = Report(
            framework=job.framework, framework_version=result.framework_version,
            target={"name": target.name, "arch": target.arch, "triple": "", "mcpu": target.mcpu, "mattr": [],
                    "device_type": target.device_type, "about": target.about},
            inputs=result.inputs, outputs=result.outputs, candidates=[cand], selected=cand.backend,
            selection="the only route to Core ML", converters=result.converters, stages_s=stages,
            notes=[n for n in (target.note, _version_note(job, result.framework_version)) if n],
            kiln_version=__version__,
        )
        meta = {"Requirements": {"TargetDevice": target.name, "TargetDeviceType": "coreml", "Os": target.os},
                "Model": {"Inputs": result.inputs, "Outputs": result.outputs},
                "Backend": {"Name": "coremltools", "Version": version, "Files": result.files,
                            "Runtime": "Core ML (iOS 15 / macOS 12 or newer)"},
                "Source": {"Framework": job.framework, "FrameworkVersion": result.framework_version,
                           "Converters": result.converters},
                "Kiln": {"Version": __version__}}
        with _stage("package", stages, progress, f"writing {job.output_dir / 'model.tar.gz'}"):
            artifact, digest = write_artifact(work / "out", result.files, meta, report.to_json(), job.output_dir)
        report.artifact, report.artifact_sha256 = str(artifact), digest
        (job.output_dir / "report.json").write_text(json.dumps(report.to_json(), indent=2))
    return report


def _check_gpu_takes(target: Target, model: ConvertedModel) -> None:
    """GPU targets compile neural nets only: tree ensembles and ONNX-ML operators (scikit-learn's linear models,
    scalers) are CPU code. Refused at the "target" stage, naming the CPU route."""
    if not target.gpu:
        return
    what = ("tree ensembles" if model.tree_model is not None else
            "ONNX-ML operators (scikit-learn's estimators)" if model.forms == {"onnx-ml"} else "")
    if what:
        raise CompilationError("target", f"{target.name} runs models on its GPU, and {what} ({model.framework}) "
                               "are compiled for CPUs only",
                               "compile for the device's CPU: a TargetPlatform without Accelerator.")


def _candidates(order: list[str], target: Target, options: CompilerOptions, native: bool) -> list[Candidate]:
    """Backend x precision. kiln-precision auto: float32 for every backend, and each reduced precision a backend
    takes for the target and its CPU computes natively (where this host can time and measure it); otherwise the
    one precision asked for."""
    if options.precision != AUTO:
        return [Candidate(name, BACKENDS[name].version(), precision=options.precision) for name in order]
    reduced = [p for p in native_precisions(target) if p != "float32"] if native else []
    return [Candidate(name, BACKENDS[name].version(), precision=p) for name in order for p in ("float32", *reduced)
            if p == "float32" or BACKENDS[name].unsupported_reason(target, replace(options, precision=p)) is None]


def _try_candidate(ctx: CheckContext, cand: Candidate, workdir: Path) -> None:
    """Compile, verify and (natively) time one backend in one precision; record everything on cand, never raise."""
    backend = BACKENDS[cand.backend]
    options = replace(ctx.options, precision=cand.precision)
    ctx = replace(ctx, options=options)  # the checks see this candidate's precision; executors stay shared
    reason = (backend.unsupported_reason(ctx.target, options) or _form_reason(backend, ctx.model)
              or _reduced_reason(ctx, cand))
    if reason:
        cand.status, cand.reason = "skipped", reason
        return
    workdir.mkdir(parents=True)
    ctx.progress("compile", f"{cand.key} {cand.version}")
    start = time.perf_counter()
    try:
        output = backend.compile(model_form(backend, ctx.model), ctx.target, options, workdir,
                                 ctx.precision_data if cand.precision == "int8" else None)
    except CompilationError as exc:
        cand.status, cand.reason = "failed", exc.with_fix
        return
    except Exception as exc:  # a backend's own bug fails that candidate only; the others may still ship
        cand.status, cand.reason = "failed", f"internal error in {cand.backend}: {brief(exc)}"
        return
    cand.compile_s = round(time.perf_counter() - start, 2)
    cand.size_bytes = sum((workdir / f).stat().st_size for f in output.files)
    cand.command, cand.notes = output.command, output.notes
    meta = build_meta(ctx.target, ctx.model, backend, output, options)
    (workdir / "compiled.meta").write_text(json.dumps(meta))
    ctx.progress("verify", f"{cand.key}: running against {ctx.model.framework}")
    try:
        # Reduced precision is judged by accuracy on the evaluation samples, where the artifact can run them.
        reduced = ctx.precision_data is not None and cand.precision != "float32"
        if ctx.native:
            executor = open_executor(workdir, meta)
            if ran := kernels_note(executor):
                cand.notes.append(ran)
            cand.check = (check_accuracy(ctx, lambda samples: [executor.run(s) for s in samples],
                                         f"host ({host_arch()})", output)
                          if reduced else check_samples(ctx, executor.run, f"host ({host_arch()})"))
            if cand.check.passed:
                ctx.executors[cand.key] = executor
        elif ctx.target.gpu:
            cand.check = verify_gpu(ctx, backend, output, meta, workdir)
        elif reduced and backend.emulated_in_python:
            cand.check = accuracy_under_emulation(ctx, backend, output, meta, workdir)
        else:
            cand.check = verify_foreign(ctx, backend, output, meta, workdir)
    except Exception as exc:  # a crash in one candidate's runtime must not end the job
        cand.check = Check("error", "host", TOLERANCE.get(cand.precision, 0.0), detail=brief(exc))
    cand.status = "passed" if cand.check.passed else "rejected"
    if not cand.check.passed:
        cand.reason = cand.check.detail or (
            f"max rel err {cand.check.max_rel_err:.2e} > tolerance {cand.check.tolerance:.0e}"
        )


def _time_candidates(ctx: CheckContext, candidates: list[Candidate]) -> None:
    """Time every verified candidate on this host, all cores, as the runtime runs by default."""
    if not ctx.executors:
        return
    timing = median_latencies_ms(ctx.executors, ordered(ctx, ctx.inputs.samples[0]))
    fastest = min(timing.latencies_ms.values())
    for cand in candidates:
        if cand.key in timing.latencies_ms:
            cand.latency_ms, cand.threads = round(timing.latencies_ms[cand.key], 3), os.cpu_count()
        if cand.key in timing.timed_once:
            cand.notes.append(f"timed on one run only: {cand.latency_ms / fastest:.1f}x the fastest candidate's "
                              f"time, beyond {HOPELESS:g}x it cannot win, so it was not timed further")
    ctx.executors.clear()


def _select(candidates: list[Candidate], ctx: CheckContext) -> tuple[Candidate, str]:
    """The fastest (natively) or first (catalog order) candidate that passed, preferring one whose artifact ran
    over one only checked by proxy; kiln-require-run refuses a proxy."""
    passed = [c for c in candidates if c.status == "passed"]
    ran = [c for c in passed if c.check and c.check.ran]
    ok = ran or passed
    if passed and not ran and ctx.options.require_run:
        checks = "; ".join(f"{c.backend}: {c.check.status} ({c.check.detail})" for c in passed if c.check)
        raise CompilationError(
            "verify", f"no artifact for {ctx.target.name} could run on its target's architecture here, and "
            f"CompilerOptions kiln-require-run is true; what was checked instead: {checks}",
            "drop kiln-require-run to ship an artifact checked by these proxies, or choose a target whose "
            "artifacts Kiln can run (see `kiln targets`, column \"Checked by\").")
    if not ok:
        summary = "; ".join(f"{c.backend}: {c.status} ({c.reason})" for c in candidates)
        uncompiled = all(c.status in ("failed", "skipped") for c in candidates)
        gpu = ctx.target.gpu if uncompiled else None
        raise CompilationError(
            "verify", f"no backend produced an artifact that matches {ctx.model.framework}'s outputs: {summary}",
            (f"no {gpu.api} compiler here takes this model (the operators named above); compile it for the "
             "device's CPU instead (a TargetPlatform without Accelerator), or replace those operators."
             if gpu else "") or
            (f"give {calibration.CALIBRATION_FILE} with real inputs in the archive (or kiln-calibration), relax "
             "kiln-accuracy, or ask for kiln-precision auto, which keeps the float32 candidates."
             if all(c.check and c.check.accuracy for c in candidates if c.status == "rejected")
             and any(c.status == "rejected" for c in candidates) else "") or
            "fix the error named for each backend, or pin a backend with CompilerOptions {\"kiln-backend\": ...}.",
        )
    if len(ctx.target.backends) == 1 and ctx.options.backend and len(ok) == 1:
        winner, how = ok[0], "pinned by CompilerOptions kiln-backend"
    elif ctx.native:
        winner = min(ok, key=lambda c: c.latency_ms or float("inf"))
        how = f"fastest verified candidate, timed on this host with {winner.threads} threads"
    else:
        where = f"the {ctx.target.gpu.api} GPU" if ctx.target.gpu else ctx.target.arch
        winner, how = ok[0], f"first verified candidate in the catalog's order for {where}"
    winner.status = "selected"
    return winner, how


def _reduced_reason(ctx: CheckContext, cand: Candidate) -> str | None:
    """Why a reduced-precision candidate cannot be judged here: int8 accuracy is measured where it runs."""
    if cand.precision == "int8" and not ctx.native and (ctx.target.gpu or not BACKENDS[cand.backend].emulated_in_python):
        return (f"int8 accuracy is measured by running the artifact, and {cand.backend}'s {ctx.target.name} code "
                "runs neither on this host nor under its emulation")
    return None


def _precision_record(ctx: CheckContext) -> dict:
    """What report.json says of precision: what was asked, and where calibration and accuracy data came from."""
    data = ctx.precision_data
    record = {"asked": ctx.options.precision,
              "budget": ctx.options.accuracy.describe() if ctx.options.accuracy else
              f"default: {CLASSIFIER_BUDGET.describe()} for classifier-like outputs, {OTHER_BUDGET.describe()} "
              "for the others"}
    if data is not None:
        record |= {"data": data.data, "calibration_samples": len(data.calibration),
                   "evaluation_samples": len(data.evaluation), "synthetic": data.synthetic}
    return record


def _precision_note(target: Target, winner: Candidate) -> str:
    """Timed here; say so where the target's CPU lacks the instructions that made int8 fast on this host."""
    if winner.precision == "int8" and target.arch == "x86_64" and not {"avx512_vnni", "avx_vnni"} & set(target.features):
        return (f"int8 was timed on this host, which has VNNI instructions; {target.name}'s CPU ({target.mcpu}) has "
                "none, so int8 gains less there.")
    return ""


def _version_note(job: CompileJob, found: str | None) -> str:
    """Say so when the FrameworkVersion asked for and the version the files record differ."""
    asked = job.framework_version
    if asked and found and not found.startswith(asked) and not asked.startswith(found):
        return f"FrameworkVersion {asked} was given, but the model files say they were written by {found}."
    return ""


def _form_reason(backend: Backend, model: ConvertedModel) -> str | None:
    """Why backend cannot take this model in any form the frontend produced, or None."""
    if set(backend.forms) & model.forms:
        return None
    if "treelite" in backend.forms:
        return f"{backend.name} compiles tree ensembles only (XGBoost, scikit-learn forests)"
    if "onnx-ml" in model.forms:
        ops = sorted({n.op_type for n in model.onnx_model.graph.node if n.domain == "ai.onnx.ml"})
        return f"{backend.name} does not implement the ONNX-ML operators {', '.join(ops)}"
    return f"no ONNX form of this model for {backend.name}: " + next(
        (n for n in model.notes if n.startswith("No ONNX twin")), "the frontend produced none")


@contextmanager
def _stage(name: str, stages: dict[str, float], progress: Progress, message: str) -> Iterator[None]:
    progress(name, message)
    start = time.perf_counter()
    try:
        yield
    except KilnError:
        raise
    except Exception as exc:  # anything else is a Kiln bug: still say which stage, never a backtrace
        raise CompilationError(name, f"internal error: {exc.__class__.__name__}: {brief(exc)}",
                               "please report this with the model; the job log has details.") from exc
    finally:
        stages[name] = round(time.perf_counter() - start, 2)
