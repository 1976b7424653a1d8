"""Run IREE .vmfb artifacts with iree-base-runtime, on the CPU or the GPU driver the module was built for."""
from __future__ import annotations

from pathlib import Path

import iree.runtime as rt
import numpy as np


class IreeExecutor:
    def __init__(self, module_path: Path, entry: str, threads: int | None, driver: str = "local") -> None:
        if driver == "local":
            # local-sync runs on the calling thread (least overhead); local-task uses a worker pool,
            # sized by IREE's topology flag, which is process-global and read when the driver is first made.
            driver = "local-sync" if threads == 1 else "local-task"
            if driver == "local-task" and threads:
                rt.flags.parse_flags(f"--task_topology_group_count={threads}")
        try:
            self._config = rt.Config(driver)
        except Exception as exc:  # no GPU, or no driver for it: say which device the artifact needs
            raise RuntimeError(f"this artifact runs on IREE's {driver} driver, which found no usable device "
                               f"here ({str(exc).splitlines()[0]})") from None
        self._device = self._config.device
        self._gpu = driver in ("cuda", "vulkan")
        self._context = rt.SystemContext(config=self._config)
        module = rt.VmModule.copy_buffer(self._context.instance, module_path.read_bytes())
        self._context.add_vm_module(module)
        self._function = self._context.modules[module.name][entry]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if self._gpu:  # copy to device memory: importing numpy's memory needs page alignment on Vulkan
            inputs = [rt.asdevicearray(self._device, a) for a in inputs]
        out = self._function(*inputs)
        outs = out if isinstance(out, (list, tuple)) else [out]
        return [self._to_host(o) for o in outs]

    def _to_host(self, array) -> np.ndarray:
        if not self._gpu:
            return np.asarray(array.to_host())
        # DeviceArray.to_host() imports a fresh numpy buffer, which Vulkan refuses unless page-aligned
        # (minImportedHostPointerAlignment): copy through a staging buffer the driver allocates instead.
        view = array._buffer_view
        source = view.get_buffer()
        staging = self._device.allocator.allocate_buffer(
            memory_type=int(rt.MemoryType.HOST_LOCAL | rt.MemoryType.DEVICE_VISIBLE),
            allowed_usage=int(rt.BufferUsage.TRANSFER_TARGET | rt.BufferUsage.MAPPING_SCOPED),
            allocation_size=source.byte_length())
        semaphore = self._device.create_semaphore(0)
        self._device.queue_copy(source, staging, wait_semaphores=rt.HalFence.create_at(semaphore, 0),
                                signal_semaphores=rt.HalFence.create_at(semaphore, 1))
        rt.HalFence.create_at(semaphore, 1).wait()
        return np.array(staging.map().asarray(view.shape, array._get_raw_dtype()))


def device_name(driver: str) -> str | None:
    """The first device IREE's `driver` (cuda, vulkan) finds on this machine, or None when there is none."""
    try:
        devices = rt.get_driver(driver).query_available_devices()
    except Exception:  # no libcuda / no Vulkan loader or ICD: the driver cannot even start
        return None
    return devices[0]["name"] if devices else None


def open(directory: Path, meta: dict, threads: int | None) -> IreeExecutor:
    backend = meta["Backend"]
    return IreeExecutor(directory / backend["Files"][0], backend["Entry"], threads, backend.get("Device", "local"))
