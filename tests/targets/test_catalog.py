"""The target catalog against the SageMaker API's own enums, and resolve()'s validation rules."""
from __future__ import annotations

import itertools

import botocore.session
import pytest

from modelkiln.compiler.backends import BACKENDS
from modelkiln.errors import ValidationError
from modelkiln.targets.catalog import (
    Target,
    Unsupported,
    device_names,
    entry_for_device,
    entry_for_platform,
    load_catalog,
    resolve,
)
from modelkiln.targets.options import CompilerOptions

_MODEL = botocore.session.get_session().get_service_model("sagemaker")


def _enum(shape: str) -> list[str]:
    values = _MODEL.shape_for(shape).enum
    assert values, f"botocore's {shape} enum is empty"
    return list(values)


API_DEVICES = _enum("TargetDevice")
API_OSES = _enum("TargetPlatformOs")
API_ARCHES = _enum("TargetPlatformArch")
API_ACCELERATORS = _enum("TargetPlatformAccelerator")
API_PLATFORMS = list(itertools.product(API_OSES, API_ARCHES, [None, *API_ACCELERATORS]))

X86_DEVICES = ["ml_c4", "ml_c5", "ml_m4", "ml_m5", "lambda", "sbe_c"]
AARCH64_DEVICES = [
    "rasp4b", "rk3399", "imx8qm", "imx8mplus", "ml_c6g", "ml_m6g",
    "jetson_nano", "jetson_tx1", "jetson_tx2", "jetson_xavier",
]
ARMV7_DEVICES = ["rasp3b", "rk3288", "sitara_am57x"]


def _all_targets() -> list[Target]:
    targets = [entry_for_device(d) for d in device_names()]
    targets += [entry_for_platform(*p) for p in API_PLATFORMS]
    return [t for t in targets if isinstance(t, Target)]


# ---- coverage of the API enums ----------------------------------------------------------------------

@pytest.mark.parametrize("device", API_DEVICES)
def test_every_api_device_resolves_or_says_why_not(device):
    entry = entry_for_device(device)
    assert isinstance(entry, Target | Unsupported)
    if isinstance(entry, Unsupported):
        assert entry.name == device
        assert entry.reason.strip()
    else:
        assert entry.name == device
        assert entry.arch in load_catalog()["arch"]


def test_catalog_has_no_device_unknown_to_the_api():
    assert set(device_names()) - set(API_DEVICES) == set()


@pytest.mark.parametrize("os_,arch,accel", API_PLATFORMS)
def test_every_api_platform_resolves_or_says_why_not(os_, arch, accel):
    entry = entry_for_platform(os_, arch, accel)
    assert isinstance(entry, Target | Unsupported)
    expected_name = f"{os_}/{arch}" + (f"/{accel}" if accel else "")
    assert entry.name == expected_name
    if isinstance(entry, Unsupported):
        assert entry.reason.strip()
    else:
        assert entry.os == os_


def test_every_target_mcpu_and_backends_are_known():
    catalog = load_catalog()
    targets = _all_targets()
    assert targets, "the catalog resolves no target at all"
    for target in targets:
        cpus = catalog["arch"][target.arch]["cpus"]
        assert target.mcpu in cpus, f"{target.name}: mcpu {target.mcpu!r} not in {target.arch} cpus"
        assert target.features == tuple(cpus[target.mcpu])
        arch_triple = catalog["arch"][target.arch]["triple"]
        if target.os == "ANDROID":  # the Android triple of the same CPU
            assert target.triple.split("-")[0] == arch_triple.split("-")[0] and "android" in target.triple
        else:
            assert target.triple == arch_triple
        if target.device_type == "coreml":  # coremltools converts the source model: no ONNX backend applies
            assert target.backends == ()
            continue
        assert target.backends, f"{target.name} has no backend"
        for backend in target.backends:
            assert backend in BACKENDS, f"{target.name}: backend {backend!r} is not registered"


def test_catalog_arch_tables_name_only_registered_backends():
    for name, arch in load_catalog()["arch"].items():
        assert arch["backends"], name
        assert set(arch["backends"]) <= set(BACKENDS), name


# ---- promised targets ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "device,arch",
    [(d, "x86_64") for d in X86_DEVICES]
    + [(d, "aarch64") for d in AARCH64_DEVICES]
    + [(d, "armv7") for d in ARMV7_DEVICES],
)
def test_promised_devices_resolve_to_their_arch(device, arch):
    target = resolve(CompilerOptions(), device=device)
    assert isinstance(target, Target)
    assert target.arch == arch
    assert target.name == device
    if arch == "x86_64":
        assert target.mattr == ()
        assert target.triple.startswith("x86_64")
    else:
        assert "+neon" in target.mattr
        assert target.mattr == target.features
    if arch == "armv7" and target.gpu is None:
        assert target.backends == ("iree",)


@pytest.mark.parametrize(
    "platform_,arch",
    [
        ({"Os": "LINUX", "Arch": "X86_64"}, "x86_64"),
        ({"Os": "LINUX", "Arch": "ARM64"}, "aarch64"),
        ({"Os": "LINUX", "Arch": "ARM_EABIHF"}, "armv7"),
    ],
)
def test_promised_platforms_resolve_to_their_arch(platform_, arch):
    target = resolve(CompilerOptions(), platform_=platform_)
    assert target.arch == arch
    assert target.name == f"{platform_['Os']}/{platform_['Arch']}"
    assert target.os == "LINUX"
    if arch == "x86_64":
        assert target.mattr == ()
    else:
        assert "+neon" in target.mattr


def test_every_arm_target_carries_neon_and_x86_none():
    for target in _all_targets():
        if target.arch in ("x86_64", "i686"):
            assert target.mattr == (), target.name
        else:
            assert "+neon" in target.mattr, target.name


def test_default_cpus_of_well_known_devices():
    assert resolve(CompilerOptions(), device="rasp4b").mcpu == "cortex-a72"
    c5 = resolve(CompilerOptions(), device="ml_c5")
    assert c5.mcpu == "skylake-avx512"
    assert "avx512f" in c5.features


# ---- unsupported / unknown / malformed ---------------------------------------------------------------

def test_inferentia_is_refused_with_a_neuron_reason():
    with pytest.raises(ValidationError) as info:
        resolve(CompilerOptions(), device="ml_inf1")
    assert info.value.field == "OutputConfig.TargetDevice"
    assert "Neuron" in info.value.message


@pytest.mark.parametrize("device", ["ml_eia2", "ml_inf2", "ml_trn1"])
def test_unsupported_devices_are_refused(device):
    with pytest.raises(ValidationError) as info:
        resolve(CompilerOptions(), device=device)
    assert info.value.field == "OutputConfig.TargetDevice"
    assert device in info.value.message


def test_unknown_device_is_refused():
    with pytest.raises(ValidationError) as info:
        resolve(CompilerOptions(), device="ml_c99")
    assert info.value.field == "OutputConfig.TargetDevice"
    assert "ml_c99" in info.value.message
    with pytest.raises(ValidationError) as info:
        entry_for_device("not_a_device")
    assert info.value.field == "OutputConfig.TargetDevice"


@pytest.mark.parametrize("level, triple", [(None, "aarch64-linux-android21"), (29, "aarch64-linux-android29"),
                                           ("26", "aarch64-linux-android26")])
def test_android_triple_carries_the_api_level(level, triple):
    options = CompilerOptions(recorded={} if level is None else {"ANDROID_PLATFORM": level})
    target = resolve(options, platform_={"Os": "ANDROID", "Arch": "ARM64"})
    assert (target.os, target.arch, target.triple) == ("ANDROID", "aarch64", triple)
    assert resolve(options, device="qcs605").triple == triple


@pytest.mark.parametrize("level", [19, 99, "latest", True])
def test_android_api_level_out_of_range_is_refused(level):
    with pytest.raises(ValidationError) as info:
        resolve(CompilerOptions(recorded={"ANDROID_PLATFORM": level}), device="qcs605")
    assert info.value.field == "OutputConfig.CompilerOptions.ANDROID_PLATFORM"


def test_unsupported_platform_names_target_platform():
    with pytest.raises(ValidationError) as info:
        resolve(CompilerOptions(), platform_={"Os": "ANDROID", "Arch": "X86"})
    assert info.value.field == "OutputConfig.TargetPlatform"
    with pytest.raises(ValidationError) as info:
        resolve(CompilerOptions(), platform_={"Os": "ANDROID", "Arch": "ARM64", "Accelerator": "NVIDIA"})
    assert info.value.field == "OutputConfig.TargetPlatform"


def test_both_device_and_platform_is_an_error():
    with pytest.raises(ValidationError) as info:
        resolve(CompilerOptions(), device="ml_c5", platform_={"Os": "LINUX", "Arch": "X86_64"})
    assert info.value.field == "OutputConfig"


def test_neither_device_nor_platform_is_an_error():
    with pytest.raises(ValidationError) as info:
        resolve(CompilerOptions())
    assert info.value.field == "OutputConfig"


@pytest.mark.parametrize(
    "platform_,field",
    [
        ({"Os": "LINUX"}, "OutputConfig.TargetPlatform.Arch"),
        ({"Arch": "ARM64"}, "OutputConfig.TargetPlatform.Os"),
        ({"Os": "LINUX", "Arch": "ARM64", "Flavor": "x"}, "OutputConfig.TargetPlatform.Flavor"),
        ({"Os": "WINDOWS", "Arch": "X86_64"}, "OutputConfig.TargetPlatform.Os"),
        ({"Os": "LINUX", "Arch": "MIPS"}, "OutputConfig.TargetPlatform.Arch"),
        ({"Os": "linux", "Arch": "ARM64"}, "OutputConfig.TargetPlatform.Os"),
        ({"Os": "LINUX", "Arch": "ARM64", "Accelerator": "TPU"}, "OutputConfig.TargetPlatform.Accelerator"),
    ],
)
def test_bad_target_platform_names_the_field(platform_, field):
    with pytest.raises(ValidationError) as info:
        resolve(CompilerOptions(), platform_=platform_)
    assert info.value.field == field


# ---- CompilerOptions applied to a target -----------------------------------------------------------

def test_mcpu_override_on_rasp4b():
    cpus = load_catalog()["arch"]["aarch64"]["cpus"]
    target = resolve(CompilerOptions(mcpu="cortex-a53"), device="rasp4b")
    assert target.mcpu == "cortex-a53"
    assert target.features == tuple(cpus["cortex-a53"])
    assert target.arch == "aarch64"
    # A CPU with more features than the default really changes the feature set.
    a76 = resolve(CompilerOptions(mcpu="cortex-a76"), device="rasp4b")
    assert a76.mcpu == "cortex-a76"
    assert "+dotprod" in a76.features
    assert "+dotprod" not in resolve(CompilerOptions(), device="rasp4b").features


def test_mcpu_override_on_x86():
    target = resolve(CompilerOptions(mcpu="znver3"), device="ml_c5")
    assert target.mcpu == "znver3"
    assert "avx512f" not in target.features
    assert target.mattr == ()


def test_unknown_mcpu_lists_known_cpus():
    with pytest.raises(ValidationError) as info:
        resolve(CompilerOptions(mcpu="cortex-z99"), device="rasp4b")
    assert info.value.field == "OutputConfig.CompilerOptions.mcpu"
    assert "cortex-z99" in info.value.message
    for cpu in load_catalog()["arch"]["aarch64"]["cpus"]:
        assert cpu in info.value.message


def test_mcpu_of_another_arch_is_refused():
    with pytest.raises(ValidationError) as info:
        resolve(CompilerOptions(mcpu="skylake-avx512"), device="rasp3b")
    assert info.value.field == "OutputConfig.CompilerOptions.mcpu"


def test_mattr_on_x86_is_refused():
    with pytest.raises(ValidationError) as info:
        resolve(CompilerOptions(mattr=("+avx2",)), device="ml_c5")
    assert info.value.field == "OutputConfig.CompilerOptions.mattr"


def test_mattr_on_arm_adds_features():
    base = resolve(CompilerOptions(), device="rasp3b")
    target = resolve(CompilerOptions(mattr=("+neon", "+fp16")), device="rasp3b")
    assert "+fp16" in target.mattr
    assert target.mattr[: len(base.features)] == base.features
    assert target.mattr.count("+neon") == 1  # merged, not duplicated
    assert target.mcpu == base.mcpu


def test_backend_pin_the_target_cannot_use():
    with pytest.raises(ValidationError) as info:
        resolve(CompilerOptions(backend="onnxruntime"), device="rasp3b")
    assert info.value.field == "OutputConfig.CompilerOptions.kiln-backend"
    assert "iree" in info.value.message


def test_backend_pin_narrows_the_backends():
    assert resolve(CompilerOptions(), device="ml_c5").backends[0] == "onnxruntime"
    assert len(resolve(CompilerOptions(), device="ml_c5").backends) > 1
    target = resolve(CompilerOptions(backend="onnxruntime"), device="ml_c5")
    assert target.backends == ("onnxruntime",)
    assert resolve(CompilerOptions(backend="iree"), device="rasp3b").backends == ("iree",)
