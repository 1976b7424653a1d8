"""The console's navigation: one entry per section."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    title: str
    path: str


SECTIONS = (Section("Jobs", "/console/jobs"), Section("Devices", "/console/devices"))
