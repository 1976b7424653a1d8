"""Run IREE .vmfb artifacts with iree-base-runtime."""
from __future__ import annotations

from pathlib import Path

import iree.runtime as rt
import numpy as np


class IreeExecutor:
    def __init__(self, module_path: Path, entry: str, threads: int | None) -> None:
        # local-sync runs on the calling thread (least overhead); local-task uses a worker pool,
        # sized by IREE's topology flag, which is process-global and read when the driver is first made.
        driver = "local-sync" if threads == 1 else "local-task"
        if driver == "local-task" and threads:
            rt.flags.parse_flags(f"--task_topology_group_count={threads}")
        config = rt.Config(driver)
        self._context = rt.SystemContext(config=config)
        module = rt.VmModule.copy_buffer(self._context.instance, module_path.read_bytes())
        self._context.add_vm_module(module)
        self._function = self._context.modules[module.name][entry]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        out = self._function(*inputs)
        outs = out if isinstance(out, list | tuple) else [out]
        return [np.asarray(o.to_host()) for o in outs]


def open(directory: Path, meta: dict, threads: int | None) -> IreeExecutor:
    backend = meta["Backend"]
    return IreeExecutor(directory / backend["Files"][0], backend["Entry"], threads)
