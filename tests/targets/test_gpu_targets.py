"""GPU targets in the catalog: NVIDIA (CUDA), Mali and Intel graphics (Vulkan), Midgard Mali (OpenCL), and
the CompilerOptions that shape them (gpu-code, cuda-ver, trt-ver)."""
from __future__ import annotations

import pytest

from modelkiln.errors import ValidationError
from modelkiln.targets import parse_compiler_options, resolve
from modelkiln.targets.catalog import UnsupportedTarget

CUDA_DEVICES = {"ml_p2": ("sm_37", "x86_64"), "ml_p3": ("sm_70", "x86_64"), "ml_g4dn": ("sm_75", "x86_64"),
                "jetson_nano": ("sm_53", "aarch64"), "jetson_tx1": ("sm_53", "aarch64"),
                "jetson_tx2": ("sm_62", "aarch64"), "jetson_xavier": ("sm_72", "aarch64")}


def _resolve(options: str | None = None, **target):
    return resolve(parse_compiler_options(options), **target)


@pytest.mark.parametrize("device", CUDA_DEVICES)
def test_nvidia_devices_are_cuda_gpus_with_their_board_cpu_as_host(device):
    code, host = CUDA_DEVICES[device]
    target = _resolve(device=device)
    assert target.device_type == "gpu" and target.gpu.api == "cuda" and target.gpu.code == code
    assert target.arch == host
    assert target.backends == ("iree", "tvm") and target.tree_backends == ()


@pytest.mark.parametrize("device,code", [("rk3399", "mali-t860"), ("rk3288", "mali-t760")])
def test_midgard_malis_are_opencl(device, code):
    target = _resolve(device=device)
    assert (target.device_type, target.gpu.api, target.gpu.code, target.backends) == ("opencl", "opencl", code, ("tvm",))


@pytest.mark.parametrize("os_,arch,accel,host", [
    ("LINUX", "ARM64", "MALI", "aarch64"), ("ANDROID", "ARM64", "MALI", "aarch64"),
    ("LINUX", "ARM_EABIHF", "MALI", "armv7"), ("LINUX", "X86_64", "INTEL_GRAPHICS", "x86_64"),
    ("ANDROID", "X86_64", "INTEL_GRAPHICS", "x86_64"),
])
def test_mali_and_intel_graphics_platforms_are_vulkan_on_the_platform_cpu(os_, arch, accel, host):
    target = _resolve(platform_={"Os": os_, "Arch": arch, "Accelerator": accel})
    assert target.device_type == "vulkan" and target.gpu.code == "vp_android_baseline_2022"
    assert target.arch == host and target.os == os_ and target.backends == ("iree",)
    assert target.note == ""  # the host platform's CPU note does not carry over to GPU code


def test_nvidia_platform_takes_gpu_code_and_cuda_ver_as_neo_does():
    target = _resolve('{"gpu-code": "sm_72", "trt-ver": "7.1.3", "cuda-ver": "10.2"}',
                      platform_={"Os": "LINUX", "Arch": "ARM64", "Accelerator": "NVIDIA"})
    assert (target.gpu.code, target.gpu.ptx_isa, target.arch) == ("sm_72", "6.5", "aarch64")
    assert "trt-ver 7.1.3" in target.note and "does not use TensorRT" in target.note


def test_gpu_code_overrides_a_devices_default():
    assert _resolve('{"gpu-code": "sm_61"}', device="ml_p3").gpu.code == "sm_61"


@pytest.mark.parametrize("options,target,field,words", [
    (None, {"platform_": {"Os": "LINUX", "Arch": "X86_64", "Accelerator": "NVIDIA"}}, "gpu-code", "is required"),
    ('{"gpu-code": "sm_72"}', {"device": "ml_c5"}, "gpu-code", "CPU target"),
    ('{"cuda-ver": "10.2"}', {"device": "rasp4b"}, "cuda-ver", "CPU target"),
    ('{"trt-ver": "7.1"}', {"device": "ml_c5"}, "trt-ver", "NVIDIA targets"),
    ('{"gpu-code": "sm_99"}', {"device": "ml_p3"}, "gpu-code", "sm_99"),
    ('{"gpu-code": "sm_70"}', {"device": "rk3399"}, "gpu-code", "known: mali-t760, mali-t860"),
    ('{"cuda-ver": "7.5"}', {"device": "ml_p3"}, "cuda-ver", "not a CUDA release"),
    ('{"cuda-ver": "10.2", "gpu-code": "sm_80"}', {"device": "ml_p3"}, "cuda-ver", "needs PTX 7.0"),
    ('{"cuda-ver": "11.0"}', {"platform_": {"Os": "LINUX", "Arch": "ARM64", "Accelerator": "MALI"}},
     "cuda-ver", "NVIDIA"),
    ('{"gpu-code": "valhall"}', {"platform_": {"Os": "LINUX", "Arch": "X86_64", "Accelerator": "INTEL_GRAPHICS"}},
     "gpu-code", "known: vp_android_baseline_2022"),
])
def test_gpu_options_that_cannot_apply_name_the_field(options, target, field, words):
    with pytest.raises(ValidationError) as err:
        _resolve(options, **target)
    assert err.value.field == f"OutputConfig.CompilerOptions.{field}"
    assert words in err.value.message


@pytest.mark.parametrize("platform_,words", [
    ({"Os": "ANDROID", "Arch": "ARM64", "Accelerator": "NVIDIA"}, "Android has no CUDA driver"),
    ({"Os": "LINUX", "Arch": "ARM_EABIHF", "Accelerator": "NVIDIA"}, "Jetson TK1"),
    ({"Os": "LINUX", "Arch": "X86", "Accelerator": "NVIDIA"}, "32-bit x86"),
    ({"Os": "LINUX", "Arch": "ARM64", "Accelerator": "NNA"}, "vendor's SDK"),
    ({"Os": "LINUX", "Arch": "ARM_EABI", "Accelerator": "MALI"}, "Soft-float"),
])
def test_gpu_platforms_kiln_cannot_build_say_why(platform_, words):
    with pytest.raises(UnsupportedTarget) as err:
        _resolve(platform_=platform_)
    assert words in err.value.message


def test_mali_takes_the_valhall_profile():
    target = _resolve('{"gpu-code": "valhall"}', platform_={"Os": "ANDROID", "Arch": "ARM64", "Accelerator": "MALI"})
    assert target.gpu.code == "valhall" and target.gpu.codes == ("vp_android_baseline_2022", "valhall")
