"""The compile report: every candidate with how it was checked and timed; JSON and a text rendering."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from modelkiln.compiler.verify import Check


@dataclass
class Candidate:
    """One backend's attempt at the target."""

    backend: str
    version: str = ""
    precision: str = "float32"
    status: str = "pending"  # selected | passed (its check: verified or a proxy) | rejected | failed | skipped | not tried
    reason: str = ""
    compile_s: float | None = None
    size_bytes: int | None = None
    latency_ms: float | None = None  # median on this host, when it can run the artifact
    threads: int | None = None
    check: Check | None = None
    command: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The candidate's name: its backend, with the precision when that is not float32 (onnxruntime-int8)."""
        return self.backend if self.precision == "float32" else f"{self.backend}-{self.precision}"


@dataclass
class Report:
    framework: str
    framework_version: str | None
    target: dict
    inputs: list[dict]
    outputs: list[dict]
    candidates: list[Candidate]
    selected: str | None = None
    selection: str = ""  # how the winner was chosen
    converters: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stages_s: dict[str, float] = field(default_factory=dict)
    artifact: str | None = None
    artifact_sha256: str | None = None
    kiln_version: str = ""
    check_inputs: str = ""  # what the candidates and the source model were run on
    # Reduced precision: what was asked, and the data int8 ranges and accuracy figures come from.
    precision: dict = field(default_factory=lambda: {"asked": "float32"})

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        for cand, record in zip(self.candidates, data["candidates"]):
            record["name"] = cand.key
        return {**data, "verified": self.verified}

    def winner(self) -> Candidate | None:
        return next((c for c in self.candidates if c.key == self.selected), None)

    @property
    def verified(self) -> bool:
        """The shipped artifact itself ran on its target's architecture and matched the source."""
        winner = self.winner()
        return bool(winner and winner.check and winner.check.ran)


def render_text(report: Report) -> str:
    """A short human-readable summary for the terminal."""
    t = report.target
    lines = [
        f"Target    {t['name']}: {t['arch']} {t['mcpu']}"
        + (f" {','.join(t['mattr'])}" if t.get("mattr") else "") + (f" ({t['about']})" if t.get("about") else ""),
        f"Model     {report.framework}"
        + (f" {report.framework_version}" if report.framework_version else "")
        + "; inputs " + ", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in report.inputs),
        "Candidates:",
        f"  {'candidate':<20} {'status':<10} {'compile':>8} {'size':>10} {'latency':>10} {'max rel err':>12}  check",
    ]
    for c in report.candidates:
        chk = c.check
        lines.append(
            f"  {c.key:<20} {c.status:<10} "
            f"{_fmt(c.compile_s, '{:.1f}s'):>8} {_fmt(c.size_bytes and c.size_bytes / 1024, '{:.0f}KiB'):>10} "
            f"{_fmt(c.latency_ms, '{:.2f}ms'):>10} {_fmt(chk and chk.max_rel_err, '{:.1e}'):>12}  "
            + (f"{chk.status} ({chk.ran_on})" if chk else "") + (f"  {_accuracy(chk)}" if chk and chk.accuracy and c.status != "rejected" else "")
            + (f"  {c.reason}" if c.reason else "")
        )
    if report.precision.get("data"):
        lines.append(f"Precision {report.precision['asked']}: accuracy measured on {report.precision['data']}")
    winner = report.winner()
    if winner:
        lines.append(f"Selected  {winner.key}: {report.selection}")
    if winner and winner.check:
        chk = winner.check
        lines.append(f"Verified  yes: the artifact ran on {chk.ran_on} and matched" if chk.ran else
                     f"Verified  no: {chk.status} ({chk.detail})")
    for note in report.notes + (winner.notes if winner else []):
        lines.append(f"Note      {note}")
    if report.artifact:
        lines.append(f"Artifact  {report.artifact} (sha256 {report.artifact_sha256})")
    return "\n".join(lines)


def _accuracy(check: Check) -> str:
    acc = check.accuracy
    assert acc is not None
    top1 = (f"top-1 {acc.top1_agreement:.3f} (95% lower bound {acc.top1_lower_bound:.3f}) "
            if acc.top1_agreement is not None and acc.top1_lower_bound is not None else "")
    return f"[{top1}cosine {acc.cosine:.4f}: budget {'met' if acc.met else 'NOT met'}]"


def _fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)
