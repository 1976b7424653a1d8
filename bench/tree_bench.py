"""Kiln tree-model benchmark: the Kiln artifact (Treelite + TL2cgen library, and whatever Kiln shipped) against
the framework's own predict and onnxruntime on an onnxmltools/skl2onnx conversion, predicting 10k rows.

Run by hand: .venv/bin/python bench/tree_bench.py [--rows N] [--workdir DIR]; writes its section of bench/RESULTS.md.
Not run by the tests (they compile small trees; tests/compiler/test_treelite.py).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import onnxruntime as ort
import xgboost as xgb
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier, RandomForestRegressor

from modelkiln.compiler import CompileJob, compile_job
from modelkiln.runtime import Model
from results import replace_section  # bench/results.py; scripts run from this folder

HERE = Path(__file__).resolve().parent
FEATURES, TRAIN_ROWS, SEED = 28, 20_000, 0
THREADS = (1, 2)


def data(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, FEATURES)).astype(np.float32)


def labels(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    binary = (x[:, 0] * x[:, 1] + np.sin(x[:, 2]) + 0.3 * x[:, 3] > 0).astype(int)
    return binary, binary + 2 * (x[:, 4] > 0.5) + (x[:, 5] < -1)


def models(folder: Path) -> list[tuple[str, str, Path, object]]:
    """(name, framework, model file, estimator or booster) for each benchmarked model."""
    x = data(TRAIN_ROWS, SEED)
    binary, five = labels(x)
    out = []
    for name, params, y, rounds in [
        ("xgb binary 300x depth 6", {"objective": "binary:logistic", "max_depth": 6}, binary, 300),
        ("xgb 5-class 100x depth 6", {"objective": "multi:softprob", "num_class": 5, "max_depth": 6}, five, 100),
    ]:
        bst = xgb.train({**params, "eta": 0.1, "nthread": os.cpu_count()}, xgb.DMatrix(x, label=y), rounds)
        path = folder / f"{name.split()[1]}.json"
        bst.save_model(str(path))
        out.append((name, "XGBOOST", path, bst))
    for name, est, y in [
        ("sklearn RF clf 100x depth 10", RandomForestClassifier(100, max_depth=10, n_jobs=-1, random_state=0), binary),
        ("sklearn RF reg 100x depth 10", RandomForestRegressor(100, max_depth=10, n_jobs=-1, random_state=0), x[:, 0]),
        ("sklearn HistGB 5-class 100x", HistGradientBoostingClassifier(max_iter=100, random_state=0), five),
    ]:
        est.fit(x, y)
        path = folder / f"{name.split()[1]}_{name.split()[2]}.joblib"
        joblib.dump(est, path)
        out.append((name, "SKLEARN", path, est))
    return out


def framework_predict(obj, threads: int) -> Callable[[np.ndarray], object]:
    if isinstance(obj, xgb.Booster):
        obj.set_param({"nthread": threads})
        return lambda x: obj.inplace_predict(x)
    if hasattr(obj, "n_jobs"):
        obj.n_jobs = threads
    return obj.predict_proba if hasattr(obj, "predict_proba") else obj.predict


def onnx_predict(obj, threads: int) -> Callable[[np.ndarray], object] | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(obj, xgb.Booster):
            from onnxmltools import convert_xgboost
            from onnxmltools.convert.common.data_types import FloatTensorType

            model = convert_xgboost(obj, initial_types=[("data", FloatTensorType([None, FEATURES]))], target_opset=15)
        else:
            from skl2onnx import to_onnx
            from skl2onnx.common.data_types import FloatTensorType

            options = {"zipmap": False} if hasattr(obj, "predict_proba") else None
            model = to_onnx(obj, initial_types=[("data", FloatTensorType([None, FEATURES]))],
                            target_opset={"": 17, "ai.onnx.ml": 3}, options=options)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"data": x})


def median_ms(fn: Callable[[np.ndarray], object], x: np.ndarray, budget_s: float = 2.0, min_runs: int = 10) -> float:
    for _ in range(2):
        fn(x)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def compile_kiln(name: str, framework: str, path: Path, out: Path, pin: str | None):
    archive = path.with_suffix(path.suffix + ".tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(path, arcname=path.name)
    options = f'{{"kiln-backend": "{pin}"}}' if pin else None
    start = time.perf_counter()
    report = compile_job(CompileJob(model=archive, framework=framework, output_dir=out, target_device="ml_c5",
                                    compiler_options=options))
    return report, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kiln-tree-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    x = data(args.rows, SEED + 1)
    rows_out = []
    for name, framework, path, obj in models(work):
        shipped, job_s = compile_kiln(name, framework, path, work / f"{path.stem}-kiln", None)
        if shipped.selected == "treelite":  # the shipped artifact is the Treelite one
            shutil.copytree(work / f"{path.stem}-kiln", work / f"{path.stem}-treelite", dirs_exist_ok=True)
            tl = shipped.winner()
        else:
            tl = compile_kiln(name, framework, path, work / f"{path.stem}-treelite", "treelite")[0].winner()
        for threads in THREADS:
            kiln = Model(work / f"{path.stem}-kiln" / "model.tar.gz", threads=threads)
            treelite_lib = Model(work / f"{path.stem}-treelite" / "model.tar.gz", threads=threads)
            cells = {
                "kiln shipped": median_ms(kiln.run, x),
                "kiln treelite": median_ms(treelite_lib.run, x),
                "framework": median_ms(framework_predict(obj, threads), x),
                "onnxruntime": median_ms(onnx_predict(obj, threads), x),
            }
            rows_out.append((name, threads, shipped.selected, job_s, tl.compile_s, tl.size_bytes, cells))
            print(name, threads, {k: round(v, 2) for k, v in cells.items()}, flush=True)
    write(rows_out, args.rows)


def write(rows_out, n_rows: int) -> None:
    cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout
    lines = [
        "## Tree models (XGBoost, scikit-learn)", "",
        "Generated by `bench/tree_bench.py` (run by hand; a run rewrites this section). Each model is trained here on "
        f"{TRAIN_ROWS} synthetic rows of {FEATURES} features (seed {SEED}), compiled by Kiln for `ml_c5` (every "
        "eligible backend, the fastest verified ships) and once more pinned to Treelite, then each engine predicts "
        f"the same {n_rows} rows: median wall ms of one call after 2 warm-up calls, >= 10 calls and >= 2 s, in one "
        "process. framework = `Booster.inplace_predict` (nthread=N) or the estimator's predict_proba/predict "
        "(n_jobs=N); onnxruntime = the onnxmltools/skl2onnx conversion on onnxruntime (intra_op=N). "
        "A shared VM: treat differences under ~20% as noise.", "",
        f"- Date (UTC): {time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime())}",
        f"- CPU: {cpu.strip() or platform.processor()}, {os.cpu_count()} cores; Python {platform.python_version()}",
        f"- Packages: xgboost {xgb.__version__}, onnxruntime {ort.__version__}", "",
        f"| model | threads | Kiln shipped | job s | treelite compile s / KiB | Kiln shipped ms | Kiln treelite ms "
        f"| framework ms | onnxruntime ms | treelite vs framework |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, threads, selected, job_s, compile_s, size, c in rows_out:
        lines.append(
            f"| {name} | {threads} | {selected} | {job_s:.1f} | {compile_s:.1f} / {size / 1024:.0f} "
            f"| {c['kiln shipped']:.2f} | {c['kiln treelite']:.2f} | {c['framework']:.2f} | {c['onnxruntime']:.2f} "
            f"| {c['framework'] / c['kiln treelite']:.1f}x |")
    replace_section("trees", "\n".join(lines))


if __name__ == "__main__":
    main()
