"""The work of profile and inference jobs, run inside the forked child (child.py). Only here are numpy, the
runtime and a backend imported, and only after the cold-load clock starts."""
from __future__ import annotations

import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

LAYER_RUNS = 20  # runs under the backend's profiler (slower than plain runs: kept apart from the latency runs)
MAX_LAYERS = 500  # the slowest ones are reported


def profile(directory: Path, runs: int, emulated: bool) -> Dict[str, Any]:
    """ColdLoadMs (imports + first load, in this fresh process), WarmLoadMs (a second load), latency over
    `runs` runs after 3 warm-ups, peak resident memory, and per-layer timings where the backend gives them."""
    start = time.perf_counter()
    from modelkiln.runtime import Model
    model = Model(directory)
    cold_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    Model(directory)
    warm_ms = (time.perf_counter() - start) * 1e3
    feeds = drawn_inputs(model)
    for _ in range(3):
        model.run(feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.run(feeds)
        times.append((time.perf_counter() - start) * 1e3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    layers, source = layer_timings(model, feeds)
    notes = ["inputs: drawn at random (seed 0) in the artifact's input shapes and types",
             "PeakMemoryBytes: the peak resident memory of the process that loaded and ran the model, "
             "the Python interpreter and numpy included"]
    if emulated:
        notes.append("emulated: these timings are qemu-user's on another CPU, not the device's")
    return {"Backend": model.backend, "Precision": str(model.meta.get("Precision", "float32")),
            "ColdLoadMs": round(cold_ms, 3), "WarmLoadMs": round(warm_ms, 3), "Runs": runs,
            "Latency": latency(times), "PeakMemoryBytes": int(peak), "Layers": layers, "LayerSource": source,
            "Emulated": emulated, "Notes": notes}


def infer(directory: Path, inputs_npz: Path, outputs_npz: Path, emulated: bool) -> Dict[str, Any]:
    import numpy as np
    from modelkiln.runtime import Model
    model = Model(directory)
    with np.load(inputs_npz, allow_pickle=False) as data:
        feeds = {name: data[name] for name in data.files}
    if len(model.input_names) == 1 and len(feeds) == 1:
        feeds = {model.input_names[0]: next(iter(feeds.values()))}  # one input: its name in the file may differ
    start = time.perf_counter()
    outputs = model.run(feeds)
    run_ms = (time.perf_counter() - start) * 1e3
    np.savez(outputs_npz, **dict(zip(model.output_names, outputs)))
    return {"Backend": model.backend, "RunMs": round(run_ms, 3), "Emulated": emulated,
            "Outputs": [{"Name": n, "Shape": [int(d) for d in o.shape], "Dtype": str(o.dtype)}
                        for n, o in zip(model.output_names, outputs)]}


def drawn_inputs(model: Any) -> Dict[str, Any]:
    import numpy as np
    rng = np.random.default_rng(0)
    feeds = {}
    for name, shape, dtype in zip(model.input_names, model.input_shapes, model.input_dtypes):
        dims = [1 if d < 0 else d for d in shape]
        kind = np.dtype(dtype).kind
        feeds[name] = (rng.standard_normal(dims).astype(dtype) if kind == "f"
                       else np.zeros(dims, dtype=dtype))  # integer inputs are ids or indices: 0 is always valid
    return feeds


def latency(times: List[float]) -> Dict[str, float]:
    ordered = sorted(times)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))], 4)
    return {"P50Ms": pct(50), "P90Ms": pct(90), "P99Ms": pct(99), "MeanMs": round(statistics.fmean(times), 4),
            "MinMs": round(ordered[0], 4), "MaxMs": round(ordered[-1], 4)}


def layer_timings(model: Any, feeds: Dict[str, Any]) -> tuple:
    """(layers, how they were measured): the backend's own profiler, slowest first."""
    backend = model.backend
    path = model.directory / model.meta["Backend"]["Files"][0]
    if backend == "onnxruntime":
        layers = _onnxruntime_layers(path, feeds)
        source = f"onnxruntime's profiler (SessionOptions.enable_profiling), mean of {LAYER_RUNS} runs per node"
    elif backend == "openvino":
        layers = _openvino_layers(path, feeds, str(model.meta.get("Precision", "float32")))
        source = f"OpenVINO's performance counters (PERF_COUNT), mean of {LAYER_RUNS} runs per executed node"
    else:
        return [], f"{backend} gives no per-layer timings from a release build"
    total = sum(x["Ms"] for x in layers) or 1.0
    for x in layers:
        x["Share"] = round(x["Ms"] / total, 4)
    layers.sort(key=lambda x: -x["Ms"])
    return layers[:MAX_LAYERS], source


def _onnxruntime_layers(path: Path, feeds: Dict[str, Any]) -> List[Dict[str, Any]]:
    import onnxruntime as ort
    with tempfile.TemporaryDirectory(prefix="kiln-profile-") as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(LAYER_RUNS):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: Dict[str, Dict[str, Any]] = {}
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            node = name[:-len("_kernel_time")]
            entry = totals.setdefault(node, {"Name": node, "OpType": str(event.get("args", {}).get("op_name", "")),
                                             "Ms": 0.0})
            entry["Ms"] += float(event.get("dur", 0)) / 1e3 / LAYER_RUNS
    return [dict(x, Ms=round(x["Ms"], 5)) for x in totals.values()]


def _openvino_layers(path: Path, feeds: Dict[str, Any], precision: str) -> List[Dict[str, Any]]:
    import openvino as ov
    hint = {"bfloat16": "bf16", "float16": "f16"}.get(precision, "f32")
    compiled = ov.Core().compile_model(str(path), "CPU", {"PERF_COUNT": True, "INFERENCE_PRECISION_HINT": hint})
    request = compiled.create_infer_request()
    totals: Dict[str, Dict[str, Any]] = {}
    for _ in range(LAYER_RUNS):
        request.infer(feeds)
        for info in request.profiling_info:
            if str(info.status).endswith("EXECUTED") and not str(info.status).endswith("NOT_EXECUTED"):
                entry = totals.setdefault(info.node_name, {"Name": info.node_name, "OpType": info.node_type, "Ms": 0.0})
                entry["Ms"] += info.real_time.total_seconds() * 1e3 / LAYER_RUNS
    return [dict(x, Ms=round(x["Ms"], 5)) for x in totals.values()]
