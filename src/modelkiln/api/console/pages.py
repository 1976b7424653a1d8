"""What the console's pages show, as plain records built from a Job and its report.json.

report.json is written by the job's sandboxed compile, so it is read as untrusted data: every number is
checked to be a finite number, every text is cut to a bounded length, and a malformed report yields empty
cells rather than an error. (The templates escape everything besides.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelkiln.jobs.model import ACTIVE, STARTING, INPROGRESS, TERMINAL, Job

STAGE_ORDER = ("fetch", "convert", "calibrate", "compile", "select", "package")
MAX_TEXT = 2000
CHART_WIDTH, CHART_LABEL_W, CHART_BAR_W, CHART_ROW_H = 640, 200, 340, 26


# ---- formatting ------------------------------------------------------------------------------------

def fmt_time(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def number(value: Any) -> float | None:
    """A finite number from untrusted JSON, else None (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """Untrusted JSON as bounded text; None and containers become ''."""
    if value is None or isinstance(value, dict | list):
        return ""
    out = str(value)
    return out if len(out) <= limit else out[:limit] + "…"


def _fmt(value: Any, pattern: str) -> str:
    found = number(value)
    return "" if found is None else pattern.format(found)


# ---- the jobs list ---------------------------------------------------------------------------------

def target_of(job: Job) -> str:
    """TargetDevice, or the TargetPlatform as "OS ARCH [ACCELERATOR]"."""
    out = job.output_config
    if out.get("TargetDevice"):
        return str(out["TargetDevice"])
    platform = out.get("TargetPlatform") or {}
    return " ".join(str(platform[k]) for k in ("Os", "Arch", "Accelerator") if platform.get(k))


def run_seconds(job: Job, now: float) -> float | None:
    """How long the compile ran (or has run so far); None before it started."""
    if job.start_time is None:
        return None
    return (job.end_time if job.end_time is not None else now) - job.start_time


@dataclass(frozen=True)
class JobRow:
    """One line of the jobs table; `json()` is what the page's polling script redraws it from."""

    name: str
    status: str
    framework: str
    target: str
    created: str
    finished: str
    duration: str
    active: bool
    can_stop: bool
    can_delete: bool

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "framework": self.framework, "target": self.target,
                "created": self.created, "finished": self.finished, "duration": self.duration,
                "active": self.active, "can_stop": self.can_stop, "can_delete": self.can_delete}


def job_row(job: Job, now: float) -> JobRow:
    return JobRow(
        name=job.name, status=job.status, framework=str(job.input_config.get("Framework", "")),
        target=target_of(job), created=fmt_time(job.creation_time), finished=fmt_time(job.end_time),
        duration=fmt_duration(run_seconds(job, now)), active=job.status in ACTIVE,
        can_stop=job.status in (STARTING, INPROGRESS), can_delete=job.status in TERMINAL)


# ---- one job ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Failure:
    """A FailureReason split into what went wrong and what to change (Kiln's reasons end " Fix: ...")."""

    problem: str
    fix: str


def failure_of(reason: str) -> Failure | None:
    if not reason:
        return None
    problem, _, fix = reason.partition(" Fix: ")
    return Failure(problem, fix)


@dataclass(frozen=True)
class Setting:
    """One line of the request as the job was created: dotted member name and value."""

    name: str
    value: str


def settings_of(config: dict[str, Any], prefix: str = "") -> list[Setting]:
    """A wire config flattened to dotted names (TargetPlatform.Os ...), in the order it was given."""
    rows: list[Setting] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(settings_of(value, name + "."))
        else:
            rows.append(Setting(name, text(value)))
    return rows


@dataclass(frozen=True)
class StageBar:
    """A timed stage of the compile: its slice of the timeline bar (x and width in percent)."""

    name: str
    seconds: str
    x: float
    width: float
    css: str


@dataclass(frozen=True)
class StageRow:
    """A stage in the timeline's legend; seconds is '' for a stage the report has no time for (calibrate when
    no int8 was asked; package, because report.json is written while packaging)."""

    name: str
    seconds: str
    css: str


def _timed(stages_s: Any) -> list[tuple[str, float]]:
    if not isinstance(stages_s, dict):
        return []
    timed = [(text(name, 40), number(seconds)) for name, seconds in stages_s.items()]
    return [(name, s) for name, s in timed if s is not None and s >= 0]


def _css(name: str) -> str:
    return f"stage-{STAGE_ORDER.index(name) if name in STAGE_ORDER else len(STAGE_ORDER)}"


def stage_bars(stages_s: Any) -> list[StageBar]:
    """The timed stages in the order they ran (the report's order), each as wide as its share of the time."""
    timed = _timed(stages_s)
    total = sum(s for _, s in timed)
    bars, x = [], 0.0
    for name, seconds in timed:
        width = 100 * seconds / total if total > 0 else 100 / len(timed)
        bars.append(StageBar(name, fmt_duration(seconds), round(x, 3), round(width, 3), _css(name)))
        x += width
    return bars


def stage_rows(stages_s: Any) -> list[StageRow]:
    """Every usual stage (STAGE_ORDER) and any other the report timed (Core ML's verify), in running order."""
    rows: list[StageRow] = []
    pending = list(STAGE_ORDER)
    for name, seconds in _timed(stages_s):
        if name in pending:  # the usual stages before it that the report has no time for
            at = pending.index(name)
            rows.extend(StageRow(missing, "", _css(missing)) for missing in pending[:at])
            pending = pending[at + 1:]
        rows.append(StageRow(name, fmt_duration(seconds), _css(name)))
    rows.extend(StageRow(missing, "", _css(missing)) for missing in pending)
    return rows


@dataclass(frozen=True)
class CandidateRow:
    """One candidate of report.json: what it is, how it fared, where it was checked, how fast and how close."""

    name: str
    precision: str
    status: str
    selected: bool
    ran: str
    reason: str
    compile_s: str
    size: str
    latency: str
    max_rel_err: str
    accuracy: str


def candidate_rows(report: dict[str, Any]) -> list[CandidateRow]:
    candidates = report.get("candidates")
    if not isinstance(candidates, list):
        return []
    selected = text(report.get("selected"))
    return [_candidate(c, selected) for c in candidates if isinstance(c, dict)]


def _candidate(c: dict[str, Any], selected: str) -> CandidateRow:
    name = text(c.get("name") or c.get("key") or c.get("backend"), 80)
    check = c.get("check") if isinstance(c.get("check"), dict) else {}
    ran = " on ".join(part for part in (text(check.get("status"), 80), text(check.get("ran_on"), 120)) if part)
    reason = text(c.get("reason")) or text(check.get("detail"))
    size = number(c.get("size_bytes"))
    return CandidateRow(
        name=name, precision=text(c.get("precision"), 40), status=text(c.get("status"), 40),
        selected=bool(selected) and name == selected, ran=ran, reason=reason,
        compile_s=_fmt(c.get("compile_s"), "{:.1f} s"), size="" if size is None else f"{size / 1024:.0f} KiB",
        latency=_fmt(c.get("latency_ms"), "{:.3f} ms"), max_rel_err=_fmt(check.get("max_rel_err"), "{:.1e}"),
        accuracy=accuracy_text(check.get("accuracy")))


def accuracy_text(accuracy: Any) -> str:
    """A reduced-precision candidate's accuracy figures, as the report's text rendering words them."""
    if not isinstance(accuracy, dict):
        return ""
    parts = []
    if number(accuracy.get("top1_agreement")) is not None:
        bound = number(accuracy.get("top1_lower_bound"))
        parts.append(f"top-1 agreement {number(accuracy['top1_agreement']):.4f}"
                     + (f" (95% lower bound {bound:.4f})" if bound is not None else ""))
    if number(accuracy.get("cosine")) is not None:
        parts.append(f"cosine {number(accuracy['cosine']):.5f}")
    if number(accuracy.get("max_rel_err")) is not None:
        parts.append(f"max rel err {number(accuracy['max_rel_err']):.2e}")
    if number(accuracy.get("samples")) is not None:
        parts.append(f"{int(number(accuracy['samples']) or 0)} sample(s)")
    if isinstance(accuracy.get("met"), bool):
        parts.append("budget met" if accuracy["met"] else "budget NOT met")
    return ", ".join(parts)


@dataclass(frozen=True)
class Bar:
    """One bar of the latency chart, in the SVG's own units."""

    label: str
    value: str
    y: float
    width: float
    selected: bool


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    width: int
    height: int
    label_width: int
    row_height: int


def latency_chart(report: dict[str, Any]) -> Chart | None:
    """Median latency of every candidate timed on this host, as horizontal bars; None when none was timed."""
    candidates = report.get("candidates") if isinstance(report.get("candidates"), list) else []
    timed = []
    for c in candidates:
        latency = number(c.get("latency_ms")) if isinstance(c, dict) else None
        if latency is not None:
            timed.append((text(c.get("name") or c.get("backend"), 40), latency))
    return bar_chart(timed, "{:.3f} ms", text(report.get("selected")))


def bar_chart(values: list[tuple[str, float]], pattern: str, selected: str = "") -> Chart | None:
    """(label, value) pairs as horizontal bars, the largest CHART_BAR_W long; None when there is none to draw."""
    values = [(label, v) for label, v in values if v >= 0]
    if not values:
        return None
    longest = max(v for _, v in values) or 1.0
    bars = [Bar(label, pattern.format(v), i * CHART_ROW_H, max(1.0, CHART_BAR_W * v / longest), label == selected)
            for i, (label, v) in enumerate(values)]
    return Chart(bars, CHART_WIDTH, len(bars) * CHART_ROW_H, CHART_LABEL_W, CHART_ROW_H)


@dataclass(frozen=True)
class ReportView:
    """What the job page shows of report.json."""

    selected: str
    selection: str
    verified: bool | None
    stages: list[StageBar]
    stage_rows: list[StageRow]
    total: str
    candidates: list[CandidateRow]
    chart: Chart | None
    notes: list[str]
    precision: str


def report_view(report: dict[str, Any]) -> ReportView:
    stages = report.get("stages_s") if isinstance(report.get("stages_s"), dict) else {}
    total = sum(s for s in (number(v) for v in stages.values()) if s is not None and s >= 0)
    return ReportView(
        selected=text(report.get("selected"), 80), selection=text(report.get("selection")),
        verified=report["verified"] if isinstance(report.get("verified"), bool) else None,
        stages=stage_bars(stages), stage_rows=stage_rows(stages), total=fmt_duration(total) if stages else "",
        candidates=candidate_rows(report), chart=latency_chart(report), notes=notes_of(report),
        precision=precision_text(report.get("precision")))


def notes_of(report: dict[str, Any]) -> list[str]:
    """The report's notes, then the selected candidate's own (as `kiln compile` prints them)."""
    notes = [text(n) for n in report.get("notes") or [] if text(n)] if isinstance(report.get("notes"), list) else []
    selected = text(report.get("selected"))
    for c in report.get("candidates") or [] if isinstance(report.get("candidates"), list) else []:
        if isinstance(c, dict) and text(c.get("name")) == selected and isinstance(c.get("notes"), list):
            notes.extend(f"{selected}: {text(n)}" for n in c["notes"] if text(n))
    return notes


def precision_text(precision: Any) -> str:
    if not isinstance(precision, dict):
        return ""
    asked = text(precision.get("asked"), 40)
    data = text(precision.get("data"), 400)
    if not data and asked in ("", "float32"):
        return ""
    return f"asked {asked}" + (f"; accuracy measured on {data}" if data else "")
