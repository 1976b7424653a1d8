#!/usr/bin/env bash
# Prove that each system piece Kiln's compiles and tests use really works here, once, after installing it:
# a toolchain compiles, links and runs a tiny program; a runtime loads and computes. Prints one line that
# names the package to install for each piece that does not work, and exits 1 then.
#   check-system.sh system            Debian pieces (after install-system-deps.sh)
#   check-system.sh venv PYTHON CROSS  pieces in the venv and the cross runtimes (after `make cross-runtimes`)
set -uo pipefail
work=$(mktemp -d "${TMPDIR:-/tmp}/kiln-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
failed=0; passed=()

# check NAME FIX COMMAND...: run COMMAND (quietly); on failure print one line: what, the fix, and the
# command's first error line (its last line when none says "error").
check() {
  local name=$1 fix=$2; shift 2
  local out why
  if out=$("$@" 2>&1); then passed+=("$name"); return 0; fi
  failed=1
  why=$(grep -m1 -iE "error|cannot|not found|no such" <<<"$out" || tail -1 <<<"$out")
  echo "system check FAILED: $name does not work here: ${why:-exit status non-zero} -> $fix" >&2
}

cat > "$work/lib.c" <<'C'
#include <math.h>
float kiln_check(float x) { return fmaxf(x, 0.0f) + sqrtf(x * x); }
C
cat > "$work/main.c" <<'C'
#include <math.h>
#include <stdio.h>
int main(void) { printf("%.1f\n", fmaxf(sqrtf(16.0f), 1.0f)); return 0; }
C

# gcc for one architecture: a shared library with libm, then a program run natively or under qemu-user.
toolchain() {
  local cc=$1 qemu=$2 sysroot=$3
  "$cc" -O2 -fPIC -shared "$work/lib.c" -o "$work/lib-$cc.so" -lm || return 1
  "$cc" -O2 "$work/main.c" -o "$work/main-$cc" -lm || return 1
  local ran
  if [ -n "$qemu" ]; then ran=$("$qemu" -L "$sysroot" "$work/main-$cc"); else ran=$("$work/main-$cc"); fi || return 1
  [ "$ran" = "4.0" ] || { echo "the program printed '$ran', not 4.0"; return 1; }
}

# A PostgreSQL cluster in a temp dir: initdb, start on a unix socket, SELECT 1, stop (as `postgres` when root).
postgres() {
  local bindir as_owner=()
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$bindir" ] || { echo "no /usr/lib/postgresql/*/bin"; return 1; }
  mkdir -p "$work/pg"
  if [ "$(id -u)" -eq 0 ]; then as_owner=(runuser -u postgres --); chown postgres "$work" "$work/pg"; fi
  "${as_owner[@]}" "$bindir/initdb" -D "$work/pg/data" -U postgres --auth=trust --no-sync >/dev/null || return 1
  "${as_owner[@]}" "$bindir/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w -t 30 \
    -o "-k $work/pg -c listen_addresses=''" start >/dev/null || { tail -1 "$work/pg/log"; return 1; }
  local one
  one=$("${as_owner[@]}" "$bindir/psql" -h "$work/pg" -U postgres -Atc "SELECT 1" postgres)
  "${as_owner[@]}" "$bindir/pg_ctl" -D "$work/pg/data" -m immediate -w stop >/dev/null
  [ "$one" = "1" ]
}

# lavapipe: the Vulkan loader finds Mesa's CPU device.
lavapipe() {
  local summary
  summary=$(vulkaninfo --summary 2>&1) || { echo "$summary" | tail -1; return 1; }
  grep -q "PHYSICAL_DEVICE_TYPE_CPU" <<<"$summary" || { echo "vulkaninfo lists no CPU device (lavapipe)"; return 1; }
}

# Headless chromium loads a tiny local page and prints its DOM (what the console's browser tests need).
chromium_headless() {
  printf '<!doctype html><p id="kiln">kiln-check</p>' > "$work/page.html"
  local dom
  dom=$(timeout 60 chromium --headless --no-sandbox --disable-gpu --dump-dom "file://$work/page.html" 2>/dev/null) \
    || { echo "chromium --headless --dump-dom failed (exit $?): cannot run chromium"; return 1; }
  grep -q '<p id="kiln">kiln-check</p>' <<<"$dom" || { echo "chromium printed no page: ${dom:0:200}"; return 1; }
}

system_pieces() {
  local install="make system-deps (scripts/install-system-deps.sh) installs it; or apt-get install"
  check "gcc (x86-64)" "$install gcc libc6-dev" toolchain gcc "" ""
  check "aarch64-linux-gnu-gcc + qemu-aarch64-static" \
    "$install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static" \
    toolchain aarch64-linux-gnu-gcc qemu-aarch64-static /usr/aarch64-linux-gnu
  check "arm-linux-gnueabihf-gcc + qemu-arm-static" \
    "$install gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user-static" \
    toolchain arm-linux-gnueabihf-gcc qemu-arm-static /usr/arm-linux-gnueabihf
  check "PostgreSQL server" "$install postgresql" postgres
  check "lavapipe (Vulkan on the CPU)" "$install libvulkan1 mesa-vulkan-drivers vulkan-tools" lavapipe
  check "openssl" "$install openssl" openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj /CN=kiln-check -days 1 -keyout "$work/key.pem" -out "$work/cert.pem"
  check "chromium (headless)" "$install chromium" chromium_headless
}

# ptxas from the nvidia-cuda-nvcc-cu12 wheel assembles a tiny kernel for sm_60.
ptxas() {
  local python=$1 tool
  tool=$("$python" -c 'from modelkiln.compiler.gpu_code import nvcc_file; print(nvcc_file("bin/ptxas") or "")') || return 1
  [ -n "$tool" ] || { echo "nvidia.cuda_nvcc has no bin/ptxas"; return 1; }
  printf '.version 7.0\n.target sm_60\n.address_size 64\n.visible .entry k() { ret; }\n' > "$work/k.ptx"
  "$tool" -arch=sm_60 "$work/k.ptx" -o "$work/k.cubin"
}

# PoCL: pyopencl finds a CPU device, builds a kernel and runs it.
pocl() {
  "$1" - <<'PY'
import numpy as np, pyopencl as cl
device = next(d for p in cl.get_platforms() for d in p.get_devices())
ctx = cl.Context([device]); queue = cl.CommandQueue(ctx)
prog = cl.Program(ctx, "__kernel void twice(__global float *x) { x[get_global_id(0)] *= 2.0f; }").build()
x = np.arange(8, dtype=np.float32)
buf = cl.Buffer(ctx, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=x)
prog.twice(queue, x.shape, None, buf); cl.enqueue_copy(queue, x, buf)
assert (x == 2 * np.arange(8)).all(), x
PY
}

# The cross runtimes under qemu: aarch64 iree-run-module starts; the arm64 Python imports its backends.
aarch64_iree() {
  qemu-aarch64-static -L /usr/aarch64-linux-gnu "$1/aarch64/iree/_runtime_libs/iree-run-module" --help >/dev/null
}
aarch64_python() {
  local root=$1/aarch64-root
  PYTHONHOME="$root/usr" PYTHONPATH="$root/site" qemu-aarch64-static -L "$root" "$root/usr/bin/python3.11" \
    -c "import numpy, onnxruntime, openvino; assert int(numpy.ones(3).sum()) == 3"
}

# The job sandbox: a Python that imports Kiln runs jailed as a job would (executor/sandbox.py).
job_sandbox() {
  "$1" -c 'import sys; from modelkiln.executor.sandbox import probe; why = probe(); print(why or ""); sys.exit(bool(why))'
}

venv_pieces() {
  local python=$1 cross=$2 pip="make setup installs it; or .venv/bin/pip install -e '.[compiler]'"
  check "ptxas (nvidia-cuda-nvcc-cu12)" "$pip" ptxas "$python"
  check "PoCL (pyopencl + pocl-binary-distribution)" "$pip" pocl "$python"
  check "job sandbox (bubblewrap)" \
    "make system-deps installs bubblewrap; the kernel must allow namespaces (in a container: --privileged or a seccomp profile that allows unshare)" \
    job_sandbox "$python"
  check "aarch64 IREE runtime under qemu" "make cross-runtimes (delete $cross/aarch64 to refetch it)" \
    aarch64_iree "$cross"
  check "arm64 Python + numpy/onnxruntime/openvino under qemu" \
    "make cross-runtimes (delete $cross/aarch64-root to refetch it)" aarch64_python "$cross"
}

case ${1:-} in
  system) system_pieces ;;
  venv) venv_pieces "$2" "$3" ;;
  *) echo "usage: $0 system | venv PYTHON CROSS" >&2; exit 2 ;;
esac
[ "$failed" -eq 0 ] || exit 1
echo "system check: $(IFS=,; echo "${passed[*]}" | sed 's/,/, /g') work"
