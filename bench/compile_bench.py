"""Kiln compile benchmark: compile time, artifact size and CPU latency against onnxruntime and torch.

For each model below (random weights, torch.manual_seed fixed, eval mode), this script
  1. saves it as TorchScript in a model.tar.gz and compiles it with Kiln for ml_c5 (all backends,
     Kiln picks the fastest), recording the wall time of the whole job and each candidate's compile
     time, artifact size, status and Kiln's own latency measurement;
  2. compiles it again with each backend pinned (CompilerOptions {"kiln-backend": ...}), except the
     backend Kiln shipped, whose artifact is the shipped one;
  3. measures the median latency, with 1 and 2 threads, of: the shipped Kiln artifact, each pinned
     backend's artifact, onnxruntime on the same TorchScript exported to ONNX (ORT_ENABLE_ALL), and
     torch eager. Every (model, engine, threads) measurement runs in its own subprocess, because IREE's
     local-task thread count is process-global and fixed when its driver is first made.
Run: .venv/bin/python bench/compile_bench.py [--quick] [--workdir DIR]. Writes bench/RESULTS.md
(not with --quick) and prints the same tables to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

SEED = 0
BACKENDS = ("iree", "openvino", "onnxruntime")
THREADS = (1, 2)
HERE = Path(__file__).resolve().parent


# ---- models -----------------------------------------------------------------------------------
def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, act=None))
        self.skip = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def resnet18() -> nn.Module:
    layers: list[nn.Module] = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn(cin, hidden, 1, act=nn.ReLU6)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6), conv_bn(hidden, cout, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2() -> nn.Module:
    layers: list[nn.Module] = [conv_bn(3, 32, 3, 2, act=nn.ReLU6)]
    cin = 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    return nn.Sequential(*layers, conv_bn(cin, 1280, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000))


class EncoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (h // self.heads) ** 0.5, dim=-1)
        x = self.ln1(x + self.proj((att @ v).transpose(1, 2).reshape(b, s, h)))
        return self.ln2(x + self.ffn(x))


class TinyBert(nn.Module):
    def __init__(self, vocab: int = 1000, hidden: int = 256, heads: int = 4, layers: int = 4, max_len: int = 512) -> None:
        super().__init__()
        self.tok, self.pos, self.ln = nn.Embedding(vocab, hidden), nn.Embedding(max_len, hidden), nn.LayerNorm(hidden)
        self.layers = nn.Sequential(*[EncoderLayer(hidden, heads) for _ in range(layers)])
        self.register_buffer("positions", torch.arange(max_len).unsqueeze(0), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.layers(self.ln(self.tok(ids) + self.pos(self.positions[:, : ids.shape[1]])))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


@dataclass(frozen=True)
class Spec:
    name: str
    build: Callable[[], nn.Module]
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def input_config(self) -> str:
        return json.dumps([{"shape": list(self.shape), "dtype": self.dtype}])

    def model(self) -> nn.Module:
        torch.manual_seed(SEED)
        return self.build().eval()

    def example(self) -> np.ndarray:
        rng = np.random.default_rng(SEED)
        if self.dtype == "int64":
            return rng.integers(0, 1000, size=self.shape).astype(np.int64)
        return rng.standard_normal(self.shape).astype(np.float32)


SPECS = {s.name: s for s in (
    Spec("resnet18", resnet18, (1, 3, 224, 224)), Spec("mobilenet_v2", mobilenet_v2, (1, 3, 224, 224)),
    Spec("bert_tiny", TinyBert, (1, 128), "int64"), Spec("mlp_b1", mlp, (1, 784)), Spec("mlp_b64", mlp, (64, 784)),
)}


# ---- records ----------------------------------------------------------------------------------
@dataclass
class CompileRecord:
    model: str
    variant: str  # "shipped" (all backends, Kiln chooses) or the pinned backend
    wall_s: float
    selected: str = ""
    artifact_bytes: int = 0
    candidates: list[dict] = field(default_factory=list)  # backend, status, compile_s, size_bytes, latency_ms, reason
    error: str = ""


@dataclass
class Latency:
    model: str
    engine: str  # kiln (shipped), kiln-<backend>, ort, torch
    threads: int
    median_ms: float | None  # median of all timed runs, pooled over the rounds
    runs: int = 0
    round_medians: list[float] = field(default_factory=list)
    error: str = ""


# ---- compile ----------------------------------------------------------------------------------
def prepare(spec: Spec, work: Path) -> Path:
    """TorchScript model.tar.gz and the same TorchScript exported to ONNX, under work/<model>/."""
    from modelkiln.frontends.pytorch import OPSET
    d = work / spec.name
    d.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(spec.example())
    with torch.no_grad():
        traced = torch.jit.trace(spec.model(), example)
    traced.save(str(d / "model.pth"))
    with tarfile.open(d / "model.tar.gz", "w:gz") as tar:
        tar.add(d / "model.pth", arcname="model.pth")
    torch.onnx.export(torch.jit.load(str(d / "model.pth")), (example,), str(d / "model.onnx"),
                      input_names=["input0"], opset_version=OPSET, dynamo=False)
    return d


def compile_variant(spec: Spec, d: Path, variant: str) -> CompileRecord:
    from modelkiln.compiler import CompileJob, compile_job
    options = None if variant == "shipped" else json.dumps({"kiln-backend": variant})
    out = d / f"kiln-{variant}"
    job = CompileJob(d / "model.tar.gz", "PYTORCH", out, spec.input_config, "ml_c5", compiler_options=options)
    start = time.perf_counter()
    try:
        report = compile_job(job)
    except Exception as exc:  # record and go on: one failing model must not end the benchmark
        return CompileRecord(spec.name, variant, round(time.perf_counter() - start, 1), error=f"{type(exc).__name__}: {exc}"[:500])
    cands = [{"backend": c.backend, "status": c.status, "compile_s": c.compile_s, "size_bytes": c.size_bytes,
              "latency_ms": c.latency_ms, "reason": c.reason[:200]} for c in report.candidates]
    return CompileRecord(spec.name, variant, round(time.perf_counter() - start, 1), report.selected or "",
                         (out / "model.tar.gz").stat().st_size, cands)


# ---- latency (each measurement in a fresh process) --------------------------------------------
def make_runner(engine: str, spec: Spec, path: Path, threads: int) -> Callable[[np.ndarray], object]:
    if engine == "torch":
        torch.set_num_threads(threads)
        model, x_t = spec.model(), torch.from_numpy(spec.example())

        def run_torch(_: np.ndarray) -> object:
            with torch.inference_mode():
                return model(x_t)
        return run_torch
    if engine == "ort":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})
    from modelkiln.runtime import Model
    kiln = Model(path, threads=threads)
    return lambda x: kiln.run([x])


def measure(engine: str, spec: Spec, path: Path, threads: int, min_runs: int, min_s: float) -> list[float]:
    run, x = make_runner(engine, spec, path, threads), spec.example()
    for _ in range(3):
        run(x)
    times: list[float] = []
    deadline = time.perf_counter() + min_s
    while len(times) < 2000 and (len(times) < min_runs or time.perf_counter() < deadline):
        start = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def measure_in_subprocess(engine: str, spec: Spec, path: Path, threads: int, quick: bool) -> list[float] | str:
    """Times in ms of one fresh process's timed runs, or the error that ended it."""
    cmd = [sys.executable, __file__, "--measure", engine, spec.name, str(path), str(threads)] + (["--quick"] if quick else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"exit {proc.returncode}: {tail}"[:300]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_model(spec: Spec, paths: dict[str, Path], rounds: int, quick: bool, log: Callable[[str], None]) -> list[Latency]:
    """Each (engine, threads) in `rounds` fresh processes, the engines interleaved so that a change in
    the machine's load during the run falls on all of them alike; the samples are pooled."""
    samples: dict[tuple[str, int], list[list[float]]] = {(e, t): [] for e in paths for t in THREADS}
    errors: dict[tuple[str, int], str] = {}
    for r in range(rounds):
        for (engine, t), got in samples.items():
            if (engine, t) in errors:
                continue
            result = measure_in_subprocess(engine, spec, paths[engine], t, quick)
            if isinstance(result, str):
                errors[(engine, t)] = result
            else:
                got.append(result)
            log(f"{spec.name} {engine} {t}t round {r + 1}: "
                + (result if isinstance(result, str) else f"{statistics.median(result):.3f} ms ({len(result)} runs)"))
    out = []
    for (engine, t), got in samples.items():
        pooled = [x for run in got for x in run]
        out.append(Latency(spec.name, engine, t, round(statistics.median(pooled), 3) if pooled else None, len(pooled),
                           [round(statistics.median(run), 3) for run in got], errors.get((engine, t), "")))
    return out


# ---- report -----------------------------------------------------------------------------------
MS = "{:.3g}"  # latencies: 3 significant digits


def _f(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def tables(compiles: list[CompileRecord], lats: list[Latency]) -> str:
    lines = ["### Compile (ml_c5, all backends; Kiln ships the fastest verified)", "",
             "| model | shipped | job wall s | " + " | ".join(f"{b} compile s / MiB / Kiln-timed ms / status" for b in BACKENDS)
             + " | pinned job wall s (" + ", ".join(BACKENDS) + ") |", "|---" * (4 + len(BACKENDS)) + "|"]
    for c in (c for c in compiles if c.variant == "shipped"):
        by = {x["backend"]: x for x in c.candidates}
        cells = [f"{_f(x['compile_s'], '{:.1f}')} / {_f(x['size_bytes'] and x['size_bytes'] / 2**20)} / "
                 f"{_f(x['latency_ms'], MS)} / {x['status']}" if x else "-" for x in (by.get(b) for b in BACKENDS)]
        pinned = {p.variant: p for p in compiles if p.model == c.model and p.variant != "shipped"}
        pins = ", ".join("(shipped)" if b == c.selected else (_f(pinned[b].wall_s, "{:.1f}") if b in pinned and not pinned[b].error
                         else "failed") for b in BACKENDS)
        lines.append(f"| {c.model} | {c.selected or 'FAILED: ' + c.error[:120]} | {c.wall_s:.1f} | " + " | ".join(cells) + f" | {pins} |")
    engines = ["kiln"] + [f"kiln-{b}" for b in BACKENDS] + ["ort", "torch"]
    lat = {(x.model, x.engine, x.threads): x for x in lats}
    lines += ["", "### Median latency, ms (lower is better)", "",
              "| model | threads | Kiln shipped | " + " | ".join(engines[1:]) + " | fastest | Kiln/ORT |", "|---" * (len(engines) + 4) + "|"]
    shipped = {c.model: c.selected for c in compiles if c.variant == "shipped"}
    for model in dict.fromkeys(x.model for x in lats):
        for t in THREADS:
            row = {e: lat.get((model, e, t)) for e in engines}
            ms = {e: r.median_ms for e, r in row.items() if r and r.median_ms is not None}
            cells = [_f(ms.get(e), MS) if e in ms else ("ERR" if row[e] else "-") for e in engines]
            cells[0] += f" ({shipped.get(model, '?')})"
            ratio = ms["kiln"] / ms["ort"] if "kiln" in ms and "ort" in ms else None
            fastest = min(ms, key=ms.__getitem__) if ms else "-"
            lines.append(f"| {model} | {t} | " + " | ".join(cells) + f" | {fastest} | {_f(ratio, '{:.3f}')} |")
    errors = [f"- {x.model} {x.engine} {x.threads}t: {x.error}" for x in lats if x.error]
    errors += [f"- compile {c.model} {c.variant}: {c.error}" for c in compiles if c.error]
    return "\n".join(lines + (["", "Errors:", *errors] if errors else []))


def machine() -> str:
    def sh(cmd: list[str]) -> str:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    from importlib.metadata import version
    pkgs = ", ".join(f"{p} {version(p)}" for p in ("torch", "onnxruntime", "openvino", "iree-base-compiler", "iree-base-runtime"))
    cpu = next((ln.split(":", 1)[1].strip() for ln in sh(["lscpu"]).splitlines() if ln.startswith("Model name")), "?")
    mem = next((ln.split()[1] for ln in sh(["free", "-g"]).splitlines() if ln.startswith("Mem:")), "?")
    return "\n".join([f"- Date (UTC): {sh(['date', '-u'])}", f"- CPU: {cpu} (`lscpu`), {os.cpu_count()} cores; "
                      f"{mem} GiB memory (`free -g` total)", f"- Load average at the end of the run: {Path('/proc/loadavg').read_text().strip()}",
                      f"- Packages: {pkgs}; Python {sys.version.split()[0]}"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="MLP only, few runs: a smoke check (does not write RESULTS.md)")
    ap.add_argument("--workdir", type=Path, help="keep models and artifacts here (default: a temporary folder)")
    ap.add_argument("--measure", nargs=4, metavar=("ENGINE", "MODEL", "PATH", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    min_runs, min_s, rounds = (5, 0.3, 1) if args.quick else (20, 1.0, 3)
    if args.measure:
        engine, model, path, threads = args.measure
        print(json.dumps(measure(engine, SPECS[model], Path(path), int(threads), min_runs, min_s)))
        return
    specs = [SPECS["mlp_b1"]] if args.quick else list(SPECS.values())
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:  # artifacts: ~100s of MiB
        work = args.workdir or Path(tmp)
        compiles: list[CompileRecord] = []
        lats: list[Latency] = []
        start = time.perf_counter()
        for spec in specs:
            d = prepare(spec, work)
            shipped = compile_variant(spec, d, "shipped")
            compiles.append(shipped)
            print(f"[{time.perf_counter() - start:6.0f}s] {spec.name}: shipped {shipped.selected or shipped.error} "
                  f"in {shipped.wall_s}s", flush=True)
            for b in BACKENDS:
                if b != shipped.selected:
                    compiles.append(compile_variant(spec, d, b))
                    print(f"[{time.perf_counter() - start:6.0f}s] {spec.name}: pinned {b} {compiles[-1].error or 'ok'} "
                          f"in {compiles[-1].wall_s}s", flush=True)
            paths = {"ort": d / "model.onnx", "torch": d / "model.pth"}
            if not shipped.error:
                paths["kiln"] = d / "kiln-shipped" / "model.tar.gz"
            for b in BACKENDS:
                artifact = d / ("kiln-shipped" if b == shipped.selected else f"kiln-{b}") / "model.tar.gz"
                if artifact.is_file():
                    paths[f"kiln-{b}"] = artifact
            lats += measure_model(spec, paths, rounds, args.quick,
                                  lambda msg: print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True))
        total = time.perf_counter() - start
    text = tables(compiles, lats)
    print("\n" + text + f"\n\nTotal benchmark wall time: {total:.0f} s")
    raw = json.dumps({"compiles": [asdict(c) for c in compiles], "latency": [asdict(x) for x in lats]}, indent=1)
    if not args.quick:
        (HERE / "RESULTS.md").write_text(
            "# Kiln compile benchmark\n\nGenerated by `bench/compile_bench.py` (`make bench`, or "
            "`.venv/bin/python bench/compile_bench.py`; `--quick` for an MLP-only smoke check).\n\n"
            f"{machine()}\n- Total benchmark wall time: {total:.0f} s\n\n{text}\n\n"
            f"<details><summary>Raw records (JSON)</summary>\n\n```json\n{raw}\n```\n</details>\n")
        print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
