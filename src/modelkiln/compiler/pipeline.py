"""The compile pipeline: fetch -> convert -> compile -> verify -> select -> package.

Where the target is this host's kind of CPU, every eligible backend is compiled, verified and timed,
and the fastest that verifies ships. Elsewhere the catalog's order decides: the first candidate that
verifies (under emulation, or by the checks listed in its report) ships. The order is the catalog's for the
model's kind (tree ensembles have their own, Treelite first); a backend that takes none of the forms the
frontend produced (ONNX, ONNX-ML, Treelite) is skipped with the reason.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelkiln import __version__
from modelkiln.compiler import emulation
from modelkiln.compiler.archive import extract_model
from modelkiln.compiler.backends import BACKENDS, Backend, BackendOutput
from modelkiln.compiler.package import build_meta, write_artifact
from modelkiln.compiler.report import Candidate, Report
from modelkiln.compiler.verify import (
    KILN_ARCH_ELF, TOLERANCE, Check, compare, embedded_elf_arches, host_can_run, median_latencies_ms, sample_inputs,
)
from modelkiln.errors import CompilationError, KilnError
from modelkiln.frontends import ConvertedModel, check_framework, check_framework_version, frontend_for
from modelkiln.runtime.executors import Executor, open_executor
from modelkiln.runtime.model import host_arch
from modelkiln.targets import CompilerOptions, Target, parse_compiler_options, resolve

Progress = Callable[[str, str], None]  # (stage, message)


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


@dataclass
class _Context:
    target: Target
    options: CompilerOptions
    model: ConvertedModel
    feeds: dict[str, np.ndarray]
    expected: list[np.ndarray]  # the source framework's outputs on feeds
    native: bool
    progress: Progress
    executors: dict[str, Executor] = dataclasses.field(default_factory=dict)  # verified, on this host


def validate(job: CompileJob) -> tuple[Target, CompilerOptions]:
    """The checks that need no model file: framework, target, options. Raises ValidationError."""
    check_framework(job.framework)
    check_framework_version(job.framework, job.framework_version)
    options = parse_compiler_options(job.compiler_options)
    target = resolve(options, device=job.target_device, platform_=job.target_platform)
    return target, options


def compile_job(job: CompileJob, progress: Progress = lambda stage, msg: None) -> Report:
    """Run the whole pipeline; write output_dir/model.tar.gz and output_dir/report.json."""
    target, options = validate(job)
    stages: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kiln-") as tmp:
        work = Path(tmp)
        with _stage("fetch", stages, progress, f"unpacking {job.model.name}"):
            model_dir = extract_model(job.model, work / "model")
        with _stage("convert", stages, progress, f"reading the {job.framework} model"):
            model = frontend_for(job.framework)(model_dir, job.data_input_config, options.input_dtype,
                                                options.recorded)
            feeds = sample_inputs(model.inputs)
            expected = model.reference(feeds)
        native = host_can_run(target)
        ctx = _Context(target, options, model, feeds, expected, native, progress)
        order = target.backends_for(trees=model.tree_model is not None)
        candidates = [Candidate(name, BACKENDS[name].version()) for name in order]
        with _stage("compile", stages, progress, f"{len(candidates)} candidate(s) for {target.name}"):
            for cand in candidates:
                if not native and any(c.status == "verified" for c in candidates):
                    cand.status, cand.reason = "not tried", "an earlier backend in the catalog's order verified"
                    continue
                _try_candidate(ctx, cand, work / cand.backend)
        with _stage("select", stages, progress, "timing the verified candidates" if native else "choosing"):
            _time_candidates(ctx, candidates)
            winner, how = _select(candidates, ctx)
        report = Report(
            framework=model.framework, framework_version=model.framework_version,
            target={"name": target.name, "arch": target.arch, "triple": target.triple, "mcpu": target.mcpu,
                    "mattr": list(target.mattr), "device_type": target.device_type, "about": target.about},
            inputs=[i.as_meta() for i in model.inputs], outputs=[o.as_meta() for o in model.outputs],
            candidates=candidates, selected=winner.backend, selection=how, converters=model.converters,
            notes=[n for n in (target.note, *model.notes, _version_note(job, model)) if n], stages_s=stages,
            kiln_version=__version__,
        )
        with _stage("package", stages, progress, f"writing {job.output_dir / 'model.tar.gz'}"):
            meta = json.loads((work / winner.backend / "compiled.meta").read_text())
            artifact, digest = write_artifact(work / winner.backend, meta["Backend"]["Files"], meta,
                                              report.to_json(), job.output_dir)
        report.artifact, report.artifact_sha256 = str(artifact), digest
        (job.output_dir / "report.json").write_text(json.dumps(report.to_json(), indent=2))
    return report


def _try_candidate(ctx: _Context, cand: Candidate, workdir: Path) -> None:
    """Compile, verify and (natively) time one backend; record everything on cand, never raise."""
    backend = BACKENDS[cand.backend]
    reason = backend.unsupported_reason(ctx.target, ctx.options) or _form_reason(backend, ctx.model)
    if reason:
        cand.status, cand.reason = "skipped", reason
        return
    workdir.mkdir(parents=True)
    ctx.progress("compile", f"{cand.backend} {cand.version}")
    start = time.perf_counter()
    try:
        output = backend.compile(_form(backend, ctx.model), ctx.target, ctx.options, workdir)
    except CompilationError as exc:
        cand.status, cand.reason = "failed", exc.message
        return
    except Exception as exc:  # a backend's own bug fails that candidate only; the others may still ship
        cand.status, cand.reason = "failed", f"internal error in {cand.backend}: {_brief(exc)}"
        return
    cand.compile_s = round(time.perf_counter() - start, 2)
    cand.size_bytes = sum((workdir / f).stat().st_size for f in output.files)
    cand.command, cand.notes = output.command, output.notes
    meta = build_meta(ctx.target, ctx.model, backend, output, ctx.options)
    (workdir / "compiled.meta").write_text(json.dumps(meta))
    ctx.progress("verify", f"{cand.backend}: running against {ctx.model.framework}")
    try:
        if ctx.native:
            executor = open_executor(workdir, meta)
            cand.check = compare(executor.run(_ordered(ctx)), ctx.expected, TOLERANCE[ctx.options.precision],
                                 f"host ({host_arch()})")
            if cand.check.passed:
                ctx.executors[cand.backend] = executor
        else:
            cand.check = _verify_foreign(ctx, backend, output, meta, workdir)
    except Exception as exc:  # a crash in one candidate's runtime must not end the job
        cand.check = Check("error", "host", TOLERANCE[ctx.options.precision], detail=_brief(exc))
    cand.status = "verified" if cand.check.passed else "rejected"
    if not cand.check.passed:
        cand.reason = cand.check.detail or (
            f"max rel err {cand.check.max_rel_err:.2e} > tolerance {cand.check.tolerance:.0e}"
        )


def _time_candidates(ctx: _Context, candidates: list[Candidate]) -> None:
    """Time every verified candidate on this host, all cores, as the runtime runs by default."""
    if not ctx.executors:
        return
    latencies = median_latencies_ms(ctx.executors, _ordered(ctx))
    for cand in candidates:
        if cand.backend in latencies:
            cand.latency_ms, cand.threads = round(latencies[cand.backend], 3), os.cpu_count()
    ctx.executors.clear()


def _verify_foreign(ctx: _Context, backend: Backend, output: BackendOutput, meta: dict, workdir: Path) -> Check:
    """Check a candidate this host cannot run natively: emulate it, or check what can be checked."""
    tolerance = TOLERANCE[ctx.options.precision]
    inputs = _ordered(ctx)
    if backend.emulated_in_python:  # the target arch's Python runs Kiln's runtime on the artifact
        python = emulation.find_python_emulator(ctx.target.arch, backend.runtime_requirement())
        if isinstance(python, emulation.PythonEmulator):
            outputs = emulation.run_runtime(python, workdir, meta, inputs)
            return compare(outputs, ctx.expected, tolerance, python.describe())
        if not backend.portable:  # native code for another CPU: check a build of it for this host
            return _host_twin_check(ctx, backend, workdir / output.files[0], python)
        check = compare(open_executor(workdir, meta).run(inputs), ctx.expected, tolerance,
                        f"host ({host_arch()}), same bytes")
        return _not_on_target(check, f"{python}; the identical {output.files[0]} ran on this host's {backend.name}")
    emulator = emulation.find_emulator(ctx.target.arch)
    if isinstance(emulator, emulation.Emulator):
        outputs = emulation.run_iree(emulator, workdir / output.files[0], meta["Backend"]["Entry"], inputs,
                                     len(ctx.model.outputs))
        return compare(outputs, ctx.expected, tolerance, emulator.describe())
    return _host_twin_check(ctx, backend, workdir / output.files[0], emulator)


def _host_twin_check(ctx: _Context, backend: Backend, module: Path, why_not: str) -> Check:
    """For code no runtime here can execute: compile the same input for this host with the same
    backend and options, and check that build instead. The target's module itself is not run."""
    twin = resolve(dataclasses.replace(ctx.options, mcpu="x86-64", mattr=()),
                   platform_={"Os": "LINUX", "Arch": "X86_64"})
    with tempfile.TemporaryDirectory(prefix="kiln-twin-") as tmp:
        out = backend.compile(_form(backend, ctx.model), twin, ctx.options, Path(tmp))
        meta = build_meta(twin, ctx.model, backend, out, ctx.options)
        check = compare(open_executor(Path(tmp), meta).run(_ordered(ctx)), ctx.expected,
                        TOLERANCE[ctx.options.precision], f"host twin ({host_arch()})")
    machine, elf_class = KILN_ARCH_ELF[ctx.target.arch]
    kernels = embedded_elf_arches(module.read_bytes())
    if kernels != {(machine, elf_class)}:
        return Check("mismatch", "static check", check.tolerance,
                     detail=f"the module's kernels are {sorted(kernels)}, expected only {machine} ELF{32 * elf_class}")
    return _not_on_target(
        check, f"{why_not}; instead the same model was compiled by {backend.name} with the same options "
        f"for {host_arch()} and that build ran here, and the {ctx.target.arch} module's kernels were "
        f"checked to be {machine} ELF{32 * elf_class} code",
    )


def _not_on_target(check: Check, instead: str) -> Check:
    if check.status != "verified":
        return check
    return dataclasses.replace(check, status="not run on target arch", detail=f"checked instead: {instead}")


def _select(candidates: list[Candidate], ctx: _Context) -> tuple[Candidate, str]:
    ok = [c for c in candidates if c.status == "verified"]
    if not ok:
        summary = "; ".join(f"{c.backend}: {c.status} ({c.reason})" for c in candidates)
        raise CompilationError(
            "verify", f"no backend produced an artifact that matches {ctx.model.framework}'s outputs: {summary}",
            "fix the error named for each backend, or pin a backend with CompilerOptions {\"kiln-backend\": ...}.",
        )
    if len(ctx.target.backends) == 1 and ctx.options.backend:
        winner, how = ok[0], "pinned by CompilerOptions kiln-backend"
    elif ctx.native:
        winner = min(ok, key=lambda c: c.latency_ms or float("inf"))
        how = f"fastest verified candidate, timed on this host with {winner.threads} threads"
    else:
        winner, how = ok[0], f"first verified candidate in the catalog's order for {ctx.target.arch}"
    winner.status = "selected"
    return winner, how


def _version_note(job: CompileJob, model: ConvertedModel) -> str:
    """Say so when the FrameworkVersion asked for and the version the files record differ."""
    asked, found = job.framework_version, model.framework_version
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


def _form(backend: Backend, model: ConvertedModel):
    """The model in the form backend compiles: the Treelite model or the ONNX graph."""
    return model.tree_model if "treelite" in backend.forms else model.onnx_model


def _ordered(ctx: _Context) -> list[np.ndarray]:
    return [ctx.feeds[i.name] for i in ctx.model.inputs]


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:400]


@contextmanager
def _stage(name: str, stages: dict[str, float], progress: Progress, message: str) -> Iterator[None]:
    progress(name, message)
    start = time.perf_counter()
    try:
        yield
    except KilnError:
        raise
    except Exception as exc:  # anything else is a Kiln bug: still say which stage, never a backtrace
        raise CompilationError(name, f"internal error: {exc.__class__.__name__}: {_brief(exc)}",
                               "please report this with the model; the job log has details.") from exc
    finally:
        stages[name] = round(time.perf_counter() - start, 2)
