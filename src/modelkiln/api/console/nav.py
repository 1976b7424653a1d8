"""The console's navigation: one entry per section, shown when the server has what the section needs.

Extension point: devices and profile jobs (another issue) are listed here already, hidden until Services
carries a device registry; their views go in a module beside views.py and their routes in __init__.routes().
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from modelkiln.api.services import Services


@dataclass(frozen=True)
class Section:
    title: str
    path: str
    available: Callable[[Services], bool]


def _has_devices(services: Services) -> bool:
    return getattr(services, "devices", None) is not None


SECTIONS = (
    Section("Jobs", "/console/jobs", lambda services: True),
    Section("Devices", "/console/devices", _has_devices),
)


def sections_for(services: Services, sections: tuple[Section, ...] = SECTIONS) -> list[Section]:
    return [s for s in sections if s.available(services)]
