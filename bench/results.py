"""bench/RESULTS.md holds one generated section per benchmark script; a run replaces only its own section,
so the other script's results and the hand-written "Reading" notes stay."""
from __future__ import annotations

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
