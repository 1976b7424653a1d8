"""Compile the corpus for ml_c5, rasp4b and ml_g4dn and write bench/CORPUS.md.

    .venv/bin/python -m corpus.run [NAME ...] [--targets ml_c5,rasp4b] [--timeout S] [--jobs N] [--resume]
    .venv/bin/python -m corpus.run --report    # rewrite CORPUS.md from the recorded results only

Each compile runs through modelkiln.compiler.pipeline.compile_job in its own subprocess with a timeout, so a
crash or a hang fails that compile only. Results are kept per (model, target) under
.venv/share/kiln/corpus/results/ and CORPUS.md is rewritten after each one (--resume skips those done).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from corpus.assemble import CACHE, archive_path, assemble
from corpus.manifest import Entry, load_manifest, select
from corpus.report import write_report

TARGETS = ("ml_c5", "rasp4b", "ml_g4dn")  # x86 (all backends timed), aarch64 under qemu, NVIDIA T4 (IREE CUDA)
RESULTS = CACHE / "results"
TIMEOUT_S = 420


@dataclass
class Result:
    """One compile of one corpus model for one target."""

    model: str
    target: str
    # the selected candidate's check status (verified, checked: ...), or FAILED (<stage>), TIMEOUT, CRASHED,
    # NOT ASSEMBLED
    status: str
    backend: str = ""
    max_rel_err: float | None = None
    compile_s: float | None = None
    failure: str = ""  # the first line of the failure
    candidates: list[dict] = field(default_factory=list)  # backend, status, reason (for grouping causes)

    @property
    def ok(self) -> bool:
        """Compiled and checked: verified, or checked another way where it cannot run here (as Kiln reports)."""
        return self.status == "verified" or self.status.startswith("checked")

    @property
    def not_for_target(self) -> bool:
        """Refused by design at the "target" stage: a kind of model the target does not take (trees on a GPU)."""
        return self.status == "FAILED (target)"


def result_path(model: str, target: str) -> Path:
    return RESULTS / f"{model}@{target}.json"


def load_result(model: str, target: str) -> Result | None:
    path = result_path(model, target)
    return Result(**json.loads(path.read_text())) if path.exists() else None


def _first_line(text: str, limit: int = 400) -> str:
    return (text.strip().splitlines() or [""])[0][:limit]


def compile_one(entry: Entry, target: str) -> Result:
    """Compile entry for target in this process (the child's side): the report, or the failure's first line."""
    from modelkiln.compiler.pipeline import CompileJob, compile_job
    from modelkiln.errors import CompilationError

    with tempfile.TemporaryDirectory(prefix="kiln-corpus-") as out:
        job = CompileJob(model=archive_path(entry.name), framework=entry.framework, output_dir=Path(out),
                         data_input_config=entry.data_input_config, target_device=target,
                         compiler_options=entry.compiler_options)
        start = time.perf_counter()
        try:
            report = compile_job(job)
        except Exception as exc:  # every failure is a result: the corpus is run to find them
            seconds = round(time.perf_counter() - start, 1)
            stage = exc.stage if isinstance(exc, CompilationError) else type(exc).__name__
            text = f"{exc.stage}: {exc.message}" if isinstance(exc, CompilationError) else str(exc) or type(exc).__name__
            return Result(entry.name, target, f"FAILED ({stage})", compile_s=seconds, failure=_first_line(text))
        seconds = round(time.perf_counter() - start, 1)
    winner = report.winner()
    check = winner.check if winner else None
    return Result(entry.name, target, check.status if check else "selected", winner.backend if winner else "",
                  check.max_rel_err if check else None, seconds,
                  candidates=[{"backend": c.backend, "status": c.status, "reason": _first_line(c.reason, 300)}
                              for c in report.candidates])


def run_isolated(entry: Entry, target: str, timeout_s: int) -> Result:
    """compile_one in a fresh process, killed (with its children) after timeout_s."""
    path = result_path(entry.name, target)
    path.unlink(missing_ok=True)
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "corpus.run", "--one", entry.name, target],
                                cwd=Path(__file__).resolve().parent.parent, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return _save(Result(entry.name, target, "TIMEOUT", compile_s=float(timeout_s),
                                failure=f"no result within {timeout_s} s"))
        if path.exists():
            return Result(**json.loads(path.read_text()))
        log.seek(0)
        tail = [ln for ln in log.read().splitlines() if ln.strip()][-1:] or ["no output"]
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        return _save(Result(entry.name, target, "CRASHED", failure=f"{how}: {_first_line(tail[0])}"))


def _save(result: Result) -> Result:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result_path(result.model, result.target).write_text(json.dumps(asdict(result), indent=1))
    return result


def run_corpus(entries: list[Entry], targets: tuple[str, ...], timeout_s: int, jobs: int, resume: bool) -> None:
    """Assemble, then compile every (model, target) not yet done, rewriting CORPUS.md after each."""
    broken = {a.name: a.error for a in assemble(entries, log=lambda m: print(f"assemble {m}", flush=True)) if a.error}
    lock, started = threading.Lock(), time.time()
    todo = [(e, t) for t in targets for e in entries if not (resume and load_result(e.name, t))]
    print(f"{len(todo)} compiles to run ({len(entries)} models x {len(targets)} targets)", flush=True)

    def one(item: tuple[Entry, str]) -> None:
        entry, target = item
        if entry.name in broken:
            result = _save(Result(entry.name, target, "NOT ASSEMBLED", failure=broken[entry.name]))
        else:
            result = run_isolated(entry, target, timeout_s)
        with lock:
            print(f"[{time.time() - started:6.0f}s] {entry.name} {target}: {result.status} {result.backend} "
                  f"{result.compile_s}s {result.failure[:160]}", flush=True)
            write_report(load_manifest(), targets, load_result, timeout_s)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, todo))
    write_report(load_manifest(), targets, load_result, timeout_s)


def main() -> int:
    ap = argparse.ArgumentParser(description="compile the corpus and write bench/CORPUS.md")
    ap.add_argument("names", nargs="*", help="models to compile (default: all)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated TargetDevices")
    ap.add_argument("--timeout", type=int, default=TIMEOUT_S, help="seconds per compile")
    ap.add_argument("--jobs", type=int, default=1, help="compiles at once")
    ap.add_argument("--resume", action="store_true", help="keep results already recorded")
    ap.add_argument("--fast", action="store_true", help="only the fast subset")
    ap.add_argument("--report", action="store_true", help="only rewrite CORPUS.md from the recorded results")
    ap.add_argument("--one", nargs=2, metavar=("NAME", "TARGET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    entries = load_manifest()
    if args.one:
        _save(compile_one(select(entries, [args.one[0]])[0], args.one[1]))
        return 0
    if args.report:
        write_report(entries, tuple(args.targets.split(",")), load_result, args.timeout)
        return 0
    run_corpus(select(entries, args.names, args.fast), tuple(args.targets.split(",")), args.timeout, args.jobs,
               args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
