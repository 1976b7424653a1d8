"""Resolve a TargetDevice or TargetPlatform (+ CompilerOptions) to a concrete compile target.

The facts live in `catalog.toml`; this module only reads them. To add a device, add a table there.
"""
from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path

from modelkiln.errors import ValidationError
from modelkiln.targets.options import CompilerOptions

CATALOG_PATH = Path(__file__).with_name("catalog.toml")

# Neo's TargetPlatform Arch names -> the catalog's architecture names.
PLATFORM_ARCHES = ("X86_64", "X86", "ARM64", "ARM_EABI", "ARM_EABIHF")
PLATFORM_OSES = ("LINUX", "ANDROID")
PLATFORM_ACCELERATORS = ("INTEL_GRAPHICS", "MALI", "NVIDIA", "NNA")
X86_ARCHES = ("x86_64", "i686")  # features come from mcpu: LLVM derives them
DEFAULT_ANDROID_API = 21  # the oldest API level Neo's docs list for ANDROID_PLATFORM; artifacts run on newer ones
ANDROID_APIS = (21, 35)


@dataclass(frozen=True)
class Target:
    """A concrete target: what to generate code for, and which backends may do it, best first."""

    name: str  # "ml_c5" or "LINUX/ARM64"
    arch: str  # catalog arch: x86_64 | aarch64 | armv7
    triple: str
    mcpu: str
    features: tuple[str, ...]  # ARM: LLVM mattr; x86: host cpu flags needed to run the code
    backends: tuple[str, ...]
    tree_backends: tuple[str, ...] = ()  # the order for tree ensembles (a Treelite form)
    device_type: str = "cpu"
    os: str = "LINUX"
    about: str = ""
    note: str = ""

    def backends_for(self, trees: bool) -> tuple[str, ...]:
        """The backend order for a tree ensemble (trees=True) or any other model."""
        return self.tree_backends if trees else self.backends

    @property
    def mattr(self) -> tuple[str, ...]:
        """LLVM features to pass to code generators (x86 derives them from mcpu)."""
        return () if self.arch in X86_ARCHES else self.features


@dataclass(frozen=True)
class Unsupported:
    """A catalog entry Kiln cannot build for, with the reason a user sees."""

    name: str
    reason: str


@functools.cache
def load_catalog() -> dict:
    """The parsed catalog.toml."""
    with CATALOG_PATH.open("rb") as f:
        return tomllib.load(f)


def device_names() -> list[str]:
    return sorted(load_catalog()["devices"])


def entry_for_device(device: str) -> Target | Unsupported:
    """Catalog entry for a TargetDevice value, before CompilerOptions are applied."""
    devices = load_catalog()["devices"]
    if device not in devices:
        raise ValidationError(
            "OutputConfig.TargetDevice",
            f"unknown TargetDevice {device!r}; known: {', '.join(sorted(devices))}",
        )
    return _entry(device, devices[device])


def entry_for_platform(os: str, arch: str, accelerator: str | None = None) -> Target | Unsupported:
    """Catalog entry for a TargetPlatform (Os, Arch, Accelerator)."""
    _check_enum("OutputConfig.TargetPlatform.Os", os, PLATFORM_OSES)
    _check_enum("OutputConfig.TargetPlatform.Arch", arch, PLATFORM_ARCHES)
    if accelerator is not None:
        _check_enum("OutputConfig.TargetPlatform.Accelerator", accelerator, PLATFORM_ACCELERATORS)
    catalog = load_catalog()
    platforms = catalog["platforms"]
    name = f"{os}/{arch}" + (f"/{accelerator}" if accelerator else "")
    if name in platforms:
        return _entry(name, platforms[name], os=os)
    if accelerator:
        return _entry(name, catalog["accelerators"][accelerator], os=os)
    return _entry(name, platforms[f"{os}/{arch}"], os=os)


class UnsupportedTarget(ValidationError):
    """A well-formed target Kiln cannot build for (e.g. Inferentia): the service accepts the job and fails it
    with this as the FailureReason, as Neo does for what it cannot compile."""


def resolve(
    options: CompilerOptions,
    device: str | None = None,
    platform_: dict[str, str] | None = None,
) -> Target:
    """The concrete Target for a device or platform, with mcpu/mattr overrides applied."""
    if (device is None) == (platform_ is None):
        raise ValidationError(
            "OutputConfig", "give exactly one of TargetDevice and TargetPlatform"
        )
    if device is not None:
        entry = entry_for_device(device)
    else:
        assert platform_ is not None
        for key in platform_:
            if key not in ("Os", "Arch", "Accelerator"):
                raise ValidationError(
                    f"OutputConfig.TargetPlatform.{key}", "unknown member; use Os, Arch, Accelerator"
                )
        for key in ("Os", "Arch"):
            if key not in platform_:
                raise ValidationError(f"OutputConfig.TargetPlatform.{key}", "is required")
        entry = entry_for_platform(platform_["Os"], platform_["Arch"], platform_.get("Accelerator"))
    if isinstance(entry, Unsupported):
        field = "OutputConfig.TargetDevice" if device else "OutputConfig.TargetPlatform"
        raise UnsupportedTarget(field, f"{entry.name} is not supported: {entry.reason}")
    return apply_options(entry, options)


def apply_options(target: Target, options: CompilerOptions) -> Target:
    """Apply mcpu/mattr from CompilerOptions; an unknown CPU name is an error, never a fallback."""
    cpus = load_catalog()["arch"][target.arch]["cpus"]
    mcpu, features = target.mcpu, target.features
    if options.mcpu is not None:
        if options.mcpu not in cpus:
            raise ValidationError(
                "OutputConfig.CompilerOptions.mcpu",
                f"unknown CPU {options.mcpu!r} for {target.arch}; known: {', '.join(sorted(cpus))}",
            )
        mcpu, features = options.mcpu, tuple(cpus[options.mcpu])
    if options.mattr:
        if target.arch in X86_ARCHES:
            raise ValidationError(
                "OutputConfig.CompilerOptions.mattr",
                "x86 features come from mcpu (e.g. skylake-avx512); mattr applies to ARM targets",
            )
        features = tuple(dict.fromkeys(features + options.mattr))
    backends, tree_backends = target.backends, target.tree_backends
    if options.backend is not None:
        eligible = tuple(dict.fromkeys(backends + tree_backends))
        if options.backend not in eligible:
            raise ValidationError(
                "OutputConfig.CompilerOptions.kiln-backend",
                f"backend {options.backend!r} cannot build for {target.name} ({target.arch}); "
                f"eligible: {', '.join(eligible)}",
            )
        backends = tree_backends = (options.backend,)
    return Target(**{**target.__dict__, "mcpu": mcpu, "features": features, "backends": backends,
                     "tree_backends": tree_backends, "triple": _triple(target, options)})


def _triple(target: Target, options: CompilerOptions) -> str:
    """Android triples carry the API level: CompilerOptions ANDROID_PLATFORM (Neo's), else the catalog's default."""
    if target.os != "ANDROID":
        return target.triple
    level = options.recorded.get("ANDROID_PLATFORM", DEFAULT_ANDROID_API)
    if isinstance(level, str) and level.isdigit():
        level = int(level)
    if not isinstance(level, int) or isinstance(level, bool) or not ANDROID_APIS[0] <= level <= ANDROID_APIS[1]:
        raise ValidationError("OutputConfig.CompilerOptions.ANDROID_PLATFORM",
                              f"{level!r} is not an Android API level from {ANDROID_APIS[0]} to {ANDROID_APIS[1]}")
    return f"{target.triple}{level}"


def _entry(name: str, table: dict, os: str = "LINUX") -> Target | Unsupported:
    if "unsupported" in table:
        return Unsupported(name, table["unsupported"])
    arch = load_catalog()["arch"][table["arch"]]
    return Target(
        name=name,
        arch=table["arch"],
        triple=table.get("triple", arch["triple"]),
        mcpu=table["mcpu"],
        features=tuple(arch["cpus"][table["mcpu"]]),
        backends=tuple(table.get("backends", arch["backends"])),
        tree_backends=tuple(table.get("tree_backends", arch.get("tree_backends", ()))),
        os=table.get("os", os),
        about=table.get("about", ""),
        note=table.get("note", ""),
    )


def _check_enum(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValidationError(field, f"{value!r} is not one of {', '.join(allowed)}")
