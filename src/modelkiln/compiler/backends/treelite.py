"""Treelite backend: a tree ensemble -> C (TL2cgen) -> `compiled.so` for the target, built with GCC
(cross-compiled for ARM, as Neo does).

TL2cgen's C predicts one row per call; Kiln adds `kiln_batch.c` (BATCH_C below), a C entry point that
predicts a whole row-major float32 matrix across threads, so the runtime loads the library with ctypes
alone (runtime/run_treelite.py) and a device needs neither Treelite nor TL2cgen.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import tl2cgen
import treelite

from modelkiln.errors import CompilationError
from modelkiln.targets import CompilerOptions, Target

from .base import BackendOutput

if TYPE_CHECKING:
    from modelkiln.compiler.calibration import PrecisionData

FILE = "compiled.so"
TIMEOUT_S = 1800
# Kiln arch -> GCC driver for it (Debian's cross compilers: gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf)
COMPILERS = {"x86_64": "gcc", "aarch64": "aarch64-linux-gnu-gcc", "armv7": "arm-linux-gnueabihf-gcc"}
DEBIAN_PACKAGES = {"aarch64": "gcc-aarch64-linux-gnu", "armv7": "gcc-arm-linux-gnueabihf"}

BATCH_C = r"""
/* Kiln: predict a row-major float32 matrix with TL2cgen's one-row predict(); NaN = missing. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "header.h"

typedef KILN_LEAF_T leaf_t;
struct job { const float* data; int64_t begin, end; int32_t n_features; leaf_t* out; };

int32_t kiln_num_feature(void) { return get_num_feature(); }
int32_t kiln_outputs_per_row(void) { return N_TARGET * MAX_N_CLASS; }

static void* kiln_rows(void* arg) {
  struct job* j = (struct job*)arg;
  const int64_t per_row = N_TARGET * MAX_N_CLASS;
  union Entry* row = (union Entry*)malloc(sizeof(union Entry) * (j->n_features > 0 ? j->n_features : 1));
  if (!row) return (void*)1;
  for (int64_t i = j->begin; i < j->end; ++i) {
    const float* x = j->data + i * j->n_features;
    for (int32_t f = 0; f < j->n_features; ++f) {
      if (isnan(x[f])) row[f].missing = -1; else row[f].fvalue = x[f];
    }
    leaf_t* r = j->out + i * per_row;
    memset(r, 0, sizeof(leaf_t) * per_row);
    predict(row, 0, r);
  }
  free(row);
  return NULL;
}

/* 0 on success; -1 out of memory; -2 wrong feature count. threads <= 1: on the calling thread. */
int kiln_predict(const float* data, int64_t n_rows, int32_t n_features, leaf_t* out, int32_t threads) {
  if (n_features != get_num_feature()) return -2;
  int64_t chunk = 2048;
  int64_t n = threads > 1 ? (n_rows + chunk - 1) / chunk : 1;
  if (n > threads) n = threads;
  if (n <= 1) { struct job j = {data, 0, n_rows, n_features, out}; return kiln_rows(&j) ? -1 : 0; }
  pthread_t tid[64]; struct job jobs[64]; int created[64] = {0}; int failed = 0;
  if (n > 64) n = 64;
  int64_t step = (n_rows + n - 1) / n;
  for (int64_t t = 0; t < n; ++t) {
    int64_t b = t * step, e = b + step < n_rows ? b + step : n_rows;
    jobs[t] = (struct job){data, b, e, n_features, out};
    if (t > 0) created[t] = pthread_create(&tid[t], NULL, kiln_rows, &jobs[t]) == 0;
  }
  for (int64_t t = 0; t < n; ++t) {  /* the calling thread takes chunk 0, and any a thread could not */
    void* r = NULL;
    if (created[t]) pthread_join(tid[t], &r); else r = kiln_rows(&jobs[t]);
    if (r) failed = 1;
  }
  return failed ? -1 : 0;
}
"""


class TreeliteBackend:
    name = "treelite"
    portable = False  # native code for one architecture
    forms = ("treelite",)
    emulated_in_python = True  # a ctypes library: Kiln's runtime loads it in the target arch's Python

    def version(self) -> str:
        return f"treelite {treelite.__version__}, tl2cgen {tl2cgen.__version__}"

    def runtime_requirement(self) -> str:
        return f"numpy=={version('numpy')}"  # the library is loaded with ctypes; no Treelite on the device

    def unsupported_reason(self, target: Target, options: CompilerOptions) -> str | None:
        if options.precision != "float32":
            return f"kiln-precision {options.precision} does not apply to tree ensembles (thresholds stay exact)"
        compiler = COMPILERS.get(target.arch)
        if compiler is None:
            return f"no C compiler for {target.arch} is known to Kiln"
        if shutil.which(compiler) is None:
            package = DEBIAN_PACKAGES.get(target.arch, compiler)
            return f"the C compiler {compiler} is not installed (make system-deps installs Debian's {package})"
        return None

    def compile(self, model: treelite.Model, target: Target, options: CompilerOptions, workdir: Path,
                data: PrecisionData | None = None) -> BackendOutput:
        source = workdir / "source"
        threads = os.cpu_count() or 1
        try:
            tl2cgen.generate_c_code(model, str(source), params={"parallel_comp": threads, "quantize": 0})
        except Exception as exc:
            raise CompilationError("compile", f"TL2cgen cannot generate C for the model: {str(exc)[:300]}") from None
        leaf = "double" if model.output_type == "float64" else "float"
        (source / "kiln_batch.c").write_text(BATCH_C.replace("KILN_LEAF_T", leaf))
        flags = gcc_flags(target)
        cc = COMPILERS[target.arch]
        sources = sorted(p.name for p in source.glob("*.c"))
        # One translation unit per process: TL2cgen splits the trees over `parallel_comp` files for this.
        compile_one = [cc, *flags, "-fPIC", "-pthread", "-std=gnu99", "-c"]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(lambda name: _gcc([*compile_one, name, "-o", f"{name}.o"], source), sources))
        _gcc([cc, "-shared", "-o", str(workdir / FILE), *(f"{n}.o" for n in sources), "-lm", "-pthread"], source)
        shutil.rmtree(source)
        return BackendOutput(
            files=[FILE],
            command=f"tl2cgen.generate_c_code(model, 'source', params={{'parallel_comp': {threads}}}) && cd source && "
            + f"for f in *.c; do {cc} {shlex.join(flags)} -fPIC -pthread -std=gnu99 -c $f -o $f.o; done && "
            + f"{cc} -shared -o {FILE} *.o -lm -pthread",
            notes=[f"{model.num_tree} trees, {model.num_feature} features, compiled to C by TL2cgen and built with "
                   f"{cc} {' '.join(flags)}."],
        )


def _gcc(cmd: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise CompilationError("compile", f"{cmd[0]} did not finish in {TIMEOUT_S} s on TL2cgen's C.",
                               "reduce the number or depth of trees.") from None
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "error" in line] or proc.stderr.splitlines()
        raise CompilationError("compile", f"{cmd[0]} failed on TL2cgen's C: {(errors or ['?'])[0][:300]}")


def gcc_flags(target: Target) -> list[str]:
    """Optimization and CPU flags for GCC: -march on x86, -mcpu on ARM ("generic": the arch's baseline)."""
    flags = ["-O2"]
    if target.arch == "x86_64":
        flags.append(f"-march={target.mcpu}")
    elif target.mcpu != "generic":
        flags.append(f"-mcpu={target.mcpu}")
    if target.arch == "armv7":
        flags += ["-mfpu=neon-vfpv4", "-mfloat-abi=hard"]
    return flags
