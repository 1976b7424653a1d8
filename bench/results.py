"""bench/RESULTS.md holds one generated section per benchmark script; a run replaces only its own section,
so the other script's results and the hand-written "Reading" notes stay."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).parent / "RESULTS.md"


def replace_section(name: str, text: str, path: Path = RESULTS) -> None:
    """Put text between <!-- name:start --> and <!-- name:end --> in path, appending the section if absent."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    current = path.read_text() if path.exists() else ""
    if start in current and end in current:
        before, rest = current.split(start, 1)
        after = rest.split(end, 1)[1]
        path.write_text(before + block + after)
    else:
        path.write_text((current.rstrip() + "\n\n" if current.strip() else "") + block + "\n")
    print(f"wrote the {name} section of {path}")


@dataclass
class Rounds:
    """One benchmark cell's timed rounds, each {"times": [ms, ...], "foreign": other processes' load in cores}."""

    median_ms: float | None  # the fastest clean round's median
    min_ms: float | None  # the fastest run of the clean rounds
    runs: int  # timed runs in the clean rounds
    clean: bool  # False: no round had other processes under the clean limit (the least contended one counts)
    rounds: list[tuple[float, float]] = field(default_factory=list)  # every round's (median ms, load in cores)


def summarize_rounds(results: list[dict], clean_below: float) -> Rounds:
    """The cell's figures from its rounds. Its median is its fastest clean round's: this VM has slow phases of tens
    of seconds in which everything runs ~1.5x slower with no process showing load, so pooled rounds measured the
    phases (measured 2026-12-05: onnxruntime 4.7, 4.8, then 7.6 ms a round)."""
    clean = [x for x in results if x["foreign"] < clean_below] or sorted(results, key=lambda x: x["foreign"])[:1]
    pooled = [v for x in clean for v in x["times"]]
    best = min((statistics.median(x["times"]) for x in clean), default=None)
    return Rounds(round(best, 4) if best is not None else None, round(min(pooled), 4) if pooled else None,
                  len(pooled), bool(clean) and clean[0]["foreign"] < clean_below,
                  [(round(statistics.median(x["times"]), 4), round(x["foreign"], 2)) for x in results])
