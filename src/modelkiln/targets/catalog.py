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
class Gpu:
    """The GPU a target's model runs on; the Target's arch/mcpu is then its host CPU."""

    api: str  # cuda | vulkan | opencl
    code: str  # cuda: "sm_72"; vulkan: IREE's target profile; opencl: "mali-t860"
    ptx_isa: str | None = None  # cuda: the newest PTX ISA the user's cuda-ver loads; None: the backend's default
    codes: tuple[str, ...] = ()  # the GPU codes this target may be given (CompilerOptions gpu-code)

    @property
    def sm(self) -> int:
        """CUDA compute capability as a number: sm_72 -> 72."""
        return int(self.code.removeprefix("sm_"))


# The CPU features (x86 /proc/cpuinfo flags, ARM mattr) that compute a reduced precision natively. int8 runs on
# every CPU (VNNI and dot-product instructions only speed it up); without these, bf16/f16 is emulated or f32.
NATIVE_PRECISION = {"bfloat16": frozenset({"avx512_bf16", "amx_bf16", "amx_tile", "bf16"}),
                    "float16": frozenset({"avx512_fp16", "amx_fp16", "fullfp16"})}


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
    device_type: str = "cpu"  # compiled.meta TargetDeviceType: cpu | gpu (CUDA) | vulkan | opencl | coreml
    gpu: Gpu | None = None
    os: str = "LINUX"
    about: str = ""
    note: str = ""

    def computes_natively(self, precision: str) -> bool:
        """Whether the target's CPU has instructions for precision (see NATIVE_PRECISION)."""
        needs = NATIVE_PRECISION.get(precision)
        return needs is None or bool(needs & set(self.features))

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
    host = platforms[f"{os}/{arch}"]
    if accelerator:
        if "unsupported" in host:
            return Unsupported(name, host["unsupported"])
        accel = catalog["accelerators"][accelerator]
        if "unsupported" in accel:
            return Unsupported(name, accel["unsupported"])
        if host["arch"] not in accel["hosts"]:
            return Unsupported(name, accel["other_hosts"])
        # The host's CPU (arch, mcpu, os, triple); its backends and note are for CPU code, not the GPU's.
        cpu = {k: v for k, v in host.items() if k in ("arch", "mcpu", "os", "triple")}
        gpu = {k: v for k, v in accel.items() if k in ("gpu",)}
        return _entry(name, {**cpu, **gpu, "about": f"{accel['about']}, {host.get('about', name)} host"}, os=os)
    return _entry(name, host, os=os)


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
                     "tree_backends": tree_backends, "triple": _triple(target, options),
                     "gpu": _gpu(target, options), "note": _gpu_note(target, options)})


def _gpu(target: Target, options: CompilerOptions) -> Gpu | None:
    """The GPU with Neo's gpu-code and cuda-ver applied; either on a CPU target is an error, not ignored."""
    code, cuda_ver = options.recorded.get("gpu-code"), options.recorded.get("cuda-ver")
    prefix = "OutputConfig.CompilerOptions"
    if target.gpu is None:
        for key, value in (("gpu-code", code), ("cuda-ver", cuda_ver)):
            if value is not None:
                raise ValidationError(f"{prefix}.{key}", f"applies to GPU targets; {target.name} is a CPU target")
        return None
    table = load_catalog()["gpu"][target.gpu.api]
    if code is not None and code not in target.gpu.codes:
        raise ValidationError(f"{prefix}.gpu-code", f"{code!r} is not a GPU code Kiln builds for {target.name}; "
                                                    f"known: {', '.join(target.gpu.codes)}")
    if code is None and not target.gpu.code:
        raise ValidationError(f"{prefix}.gpu-code", f"is required for {target.name}: name the GPU architecture, "
                                                    "e.g. {\"gpu-code\": \"sm_72\"}")
    ptx_isa = None
    if cuda_ver is not None:
        if target.gpu.api != "cuda":
            raise ValidationError(f"{prefix}.cuda-ver", f"applies to NVIDIA targets; {target.name} is {target.gpu.api}")
        versions = table["ptx_isa"]
        if str(cuda_ver) not in versions:
            raise ValidationError(f"{prefix}.cuda-ver", f"{cuda_ver!r} is not a CUDA release Kiln knows; "
                                                        f"known: {', '.join(versions)}")
        ptx_isa = versions[str(cuda_ver)]
        code = code or target.gpu.code
        needed = table["min_ptx_isa"][code]
        if _version(ptx_isa) < _version(needed):
            raise ValidationError(f"{prefix}.cuda-ver", f"CUDA {cuda_ver} loads PTX up to ISA {ptx_isa}, but {code} "
                                                        f"code needs PTX {needed}: raise cuda-ver or pick an older gpu-code")
    return Gpu(target.gpu.api, code or target.gpu.code, ptx_isa, target.gpu.codes)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _gpu_note(target: Target, options: CompilerOptions) -> str:
    """Neo's trt-ver is recorded; say plainly that TensorRT is not part of the artifact."""
    trt = options.recorded.get("trt-ver")
    if trt is None:
        return target.note
    if target.gpu is None or target.gpu.api != "cuda":
        raise ValidationError("OutputConfig.CompilerOptions.trt-ver", f"applies to NVIDIA targets; {target.name} is not one")
    return " ".join(n for n in (target.note, f"trt-ver {trt} was recorded and is not needed: the artifact does not use "
                                             "TensorRT.") if n)


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
    gpu = table.get("gpu")
    if gpu is not None:
        api = load_catalog()["gpu"][gpu["api"]]
        table = {**table, "backends": api["backends"], "tree_backends": []}  # GPU code only: trees are CPU models
    if table.get("coreml"):  # coremltools converts the source model itself: no ONNX backend applies
        table = {**table, "backends": [], "tree_backends": []}
    return Target(
        name=name,
        arch=table["arch"],
        triple=table.get("triple", arch["triple"]),
        mcpu=table["mcpu"],
        features=tuple(arch["cpus"][table["mcpu"]]),
        backends=tuple(table.get("backends", arch["backends"])),
        tree_backends=tuple(table.get("tree_backends", arch.get("tree_backends", ()))),
        device_type="coreml" if table.get("coreml") else load_catalog()["gpu"][gpu["api"]]["device_type"] if gpu else "cpu",
        gpu=Gpu(gpu["api"], gpu.get("code", ""), codes=tuple(gpu.get("codes", api["codes"]))) if gpu else None,
        os=table.get("os", os),
        about=table.get("about", ""),
        note=table.get("note", ""),
    )


def _check_enum(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValidationError(field, f"{value!r} is not one of {', '.join(allowed)}")
