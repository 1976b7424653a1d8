"""The console's device pages: the account's devices (what `kiln devices` lists) and its profile and inference
jobs, a profile's latency distribution and per-layer timings as charts.

Profiles are reported by the account's own agents, so they are read as untrusted data like report.json
(pages.number / pages.text). Reads go through the device store with the session's account id only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from modelkiln.api.console.pages import Chart, bar_chart, fmt_time, number, text
from modelkiln.devices.errors import DeviceJobNotFound
from modelkiln.devices.model import ONLINE_WITHIN_S, Device, DeviceJob

MAX_LISTED = 100  # devices and jobs on the page; `kiln devices` and ListDeviceJobs page through the rest
MAX_LAYER_BARS = 25


@dataclass(frozen=True)
class DeviceRow:
    name: str
    status: str
    device_type: str
    arch: str
    cpu: str
    runtimes: str
    last_seen: str
    emulated: str


@dataclass(frozen=True)
class DeviceJobRow:
    name: str
    kind: str
    status: str
    device: str
    created: str
    finished: str


def device_row(device: Device, now: float) -> DeviceRow:
    facts = device.facts if isinstance(device.facts, dict) else {}
    runtimes = facts.get("Runtimes") if isinstance(facts.get("Runtimes"), dict) else {}
    return DeviceRow(device.name, "ONLINE" if now - device.last_seen_time <= ONLINE_WITHIN_S else "OFFLINE",
                     device.device_type, text(facts.get("Arch"), 20), text(facts.get("Cpu"), 80),
                     ", ".join(f"{text(k, 40)} {text(v, 40)}" for k, v in sorted(runtimes.items())),
                     fmt_time(device.last_seen_time), text(facts.get("EmulatedBy"), 200) if facts.get("Emulated") else "")


def job_row(job: DeviceJob) -> DeviceJobRow:
    return DeviceJobRow(job.name, job.kind.lower(), job.status, job.device_name, fmt_time(job.creation_time),
                        fmt_time(job.end_time))


@dataclass(frozen=True)
class ProfileView:
    backend: str
    facts: list[tuple[str, str]]
    latency_chart: Chart | None
    layer_chart: Chart | None
    layer_source: str
    notes: list[str]
    emulated: bool


def profile_view(profile: Any) -> ProfileView | None:
    if not isinstance(profile, dict):
        return None
    latency = profile.get("Latency") if isinstance(profile.get("Latency"), dict) else {}
    points = [(label, number(latency.get(key))) for label, key in
              (("min", "MinMs"), ("p50", "P50Ms"), ("p90", "P90Ms"), ("p99", "P99Ms"), ("max", "MaxMs"))]
    layers = [x for x in profile.get("Layers") or [] if isinstance(x, dict)] if isinstance(profile.get("Layers"), list) else []
    layer_values = [(layer_label(text(x.get("OpType"), 20), text(x.get("Name"), 200)), number(x.get("Ms")))
                    for x in layers[:MAX_LAYER_BARS]]
    memory = number(profile.get("PeakMemoryBytes"))
    facts = [("Backend", f"{text(profile.get('Backend'), 40)} {text(profile.get('Precision'), 20)}"),
             ("Cold load", _ms(profile.get("ColdLoadMs"))), ("Warm load", _ms(profile.get("WarmLoadMs"))),
             ("Runs", text(profile.get("Runs"), 10)), ("Mean", _ms(latency.get("MeanMs"))),
             ("Peak memory", f"{memory / 2**20:.1f} MiB" if memory is not None else "")]
    notes = [text(n) for n in profile.get("Notes") or [] if text(n)] if isinstance(profile.get("Notes"), list) else []
    return ProfileView(text(profile.get("Backend"), 40), facts,
                       bar_chart([(label, v) for label, v in points if v is not None], "{:.4g} ms"),
                       bar_chart([(label, v) for label, v in layer_values if v is not None], "{:.4g} ms"),
                       text(profile.get("LayerSource"), 300), notes, profile.get("Emulated") is True)


def layer_label(op_type: str, name: str, room: int = 30) -> str:
    """"OpType …end of the node name": node names share long prefixes (/features/features.2/...), their ends
    tell layers apart."""
    rest = max(4, room - len(op_type) - 1)
    return f"{op_type} {name if len(name) <= rest else '…' + name[-(rest - 1):]}"


def _ms(value: Any) -> str:
    found = number(value)
    return "" if found is None else f"{found:.3f} ms"


# ---- handlers (Console methods delegate here) -------------------------------------------------------

async def devices_page(console: Any, request: Request) -> Response:
    session = await console.signed_in(request)
    store = console.services.devices
    await run_in_threadpool(store.expire)
    devices, _ = await run_in_threadpool(store.list_devices, session.account_id, MAX_LISTED, None)
    jobs, _ = await run_in_threadpool(store.list_jobs, session.account_id, None, MAX_LISTED, None)
    now = time.time()
    return console.render(request, "devices.html", session, active="/console/devices",
                          devices=[device_row(d, now) for d in devices], jobs=[job_row(j) for j in jobs])


COMPARISON_ROWS = ("Status", "CompilationJobName", "Rule", "Detail", "Reference", "MaxAbsErr", "MaxRelErr", "Cosine",
                   "Top1Agreement")


async def device_job_page(console: Any, request: Request) -> Response:
    session = await console.signed_in(request)
    name = request.path_params["name"]
    store = console.services.devices
    await run_in_threadpool(store.expire)
    try:
        job = await run_in_threadpool(store.get_job, session.account_id, name)
    except DeviceJobNotFound:
        raise HTTPException(404, f"There is no device job {name} in account {session.account_id}.") from None
    result = job.result or {}
    inference = result.get("Inference") if isinstance(result.get("Inference"), dict) else None
    outputs = [o for o in (inference or {}).get("Outputs") or [] if isinstance(o, dict)]
    comparison = result.get("Comparison") if isinstance(result.get("Comparison"), dict) else {}
    return console.render(request, "device_job.html", session, active="/console/devices", job=job,
                          row=job_row(job), request_rows=[(k, text(v, 1024)) for k, v in job.request.items()],
                          profile=profile_view(result.get("Profile")), inference=inference,
                          outputs=[(text(o.get("Name"), 80), text(o.get("Dtype"), 20), text(o.get("Shape"), 200))
                                   for o in outputs], running=job.status in ("PENDING", "RUNNING", "COMPARING"),
                          comparison=[(k, text(comparison[k], 2048)) for k in COMPARISON_ROWS if k in comparison])
