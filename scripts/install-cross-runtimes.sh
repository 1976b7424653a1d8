#!/usr/bin/env bash
# Unpack what Kiln needs to run aarch64 artifacts under qemu-user for verification:
#   DEST/aarch64       the aarch64 wheel of iree-base-runtime (same version as the installed compiler);
#   DEST/aarch64-root  an arm64 Python 3.11 userland: Debian bookworm's arm64 python3.11 and the
#                      libraries it links, unpacked from their .debs (not installed: nothing on this
#                      system changes), plus site/ with the aarch64 wheels of numpy, onnxruntime and
#                      openvino at the versions installed with PYTHON.
# and, given WHEELHOUSE, this machine's wheels of numpy and onnxruntime (and what they require) at the same
# versions: the modelkiln-runtime tests install the device wheel into a fresh venv from them, offline.
# Idempotent: each part is skipped when its VERSION stamp matches. Needs apt-get and dpkg-deb (Debian 12).
# Usage: install-cross-runtimes.sh PYTHON DEST [WHEELHOUSE]
set -euo pipefail
python=$1; dest=$2; wheelhouse=${3:-}
mkdir -p "$dest"

version() { "$python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1"; }
retry() { "$@" || { echo "retrying: $*" >&2; sleep 5; "$@"; }; }  # a flaky mirror gets one retry

# --- iree-run-module for aarch64 ----------------------------------------------------------------------
iree_runtime() {
  local version tool
  version=$(version iree-base-runtime)
  tool="$dest/aarch64/iree/_runtime_libs/iree-run-module"
  if [ -x "$tool" ] && [ "$(cat "$dest/aarch64/VERSION" 2>/dev/null)" = "$version" ]; then return 0; fi
  rm -rf "$dest/aarch64" "$dest/wheels"
  mkdir -p "$dest/wheels"
  retry "$python" -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.11 \
    --platform manylinux_2_28_aarch64 "iree-base-runtime==$version" -d "$dest/wheels"
  "$python" -m zipfile -e "$dest"/wheels/iree_base_runtime-*aarch64*.whl "$dest/aarch64"
  chmod +x "$dest"/aarch64/iree/_runtime_libs/iree-*
  echo "$version" > "$dest/aarch64/VERSION"
  rm -rf "$dest/wheels"
}

# --- arm64 Python 3.11 + the portable backends' runtimes -----------------------------------------------
# python3.11 and the shared libraries of the stdlib modules and wheels that Kiln's runtime imports.
DEBS=(libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libsqlite3-0
      libuuid1 libcrypt1 libncursesw6 libtinfo6 libreadline8 libpython3.11-minimal libpython3.11-stdlib
      python3.11-minimal)
WHEELS=(numpy onnxruntime openvino)
# bookworm's glibc is 2.36: any manylinux tag up to it runs (openvino's aarch64 wheel is manylinux_2_35).
PLATFORMS=()
for glibc in 36 35 34 31 28 27 17; do PLATFORMS+=(--platform "manylinux_2_${glibc}_aarch64"); done
PLATFORMS+=(--platform manylinux2014_aarch64)

python_root() {
  local root="$dest/aarch64-root" pins=() stamp work w deb
  for w in "${WHEELS[@]}"; do pins+=("$w==$(version "$w")"); done
  stamp="bookworm python3.11 ${pins[*]}"
  if [ -x "$root/usr/bin/python3.11" ] && [ "$(cat "$root/VERSION" 2>/dev/null)" = "$stamp" ]; then return 0; fi
  work=$(mktemp -d "$dest/.aarch64-root.XXXXXX")
  trap "rm -rf '$work'" EXIT

  # A private apt state (lists, cache, empty dpkg status) with arm64 as the only architecture, on the
  # system's sources: the host's dpkg architectures and package lists are left as they are.
  local apt=(apt-get -q -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache"
             -o "Dir::State::status=$work/apt/status" -o APT::Architecture=arm64
             -o APT::Architectures=arm64 -o Acquire::Languages=none)
  [ "$(id -u)" -ne 0 ] || apt+=(-o APT::Sandbox::User=root)
  mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/debs" "$work/wheels" "$work/root/site"
  : > "$work/apt/status"
  local hint="could not fetch Debian bookworm's arm64 packages: the apt sources must serve bookworm main for arm64"
  retry "${apt[@]}" -qq update || { echo "$hint" >&2; exit 1; }
  (cd "$work/debs" && retry "${apt[@]}" -qq download "${DEBS[@]}") || { echo "$hint" >&2; exit 1; }
  for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
  rm -rf "$work"/root/usr/share/{doc,man,lintian,locale}

  retry "$python" -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.11 \
    "${PLATFORMS[@]}" "${pins[@]}" -d "$work/wheels"
  for w in "$work"/wheels/*.whl; do "$python" -m zipfile -e "$w" "$work/root/site"; done
  # Bytecode for the stdlib and the wheels, compiled here (the .pyc format is per Python version, not per
  # CPU): importing from source under emulation would cost seconds on every verification.
  "$python" -m compileall -q -j 0 "$work/root/usr/lib/python3.11" "$work/root/site" >/dev/null || true

  # qemu-user shows the guest the host's x86 /proc/cpuinfo, with which onnxruntime's cpuinfo crashes at
  # import; -L <root> makes the guest read this ARM description of the same number of CPUs instead.
  mkdir -p "$work/root/proc"
  local n cpu
  n=$(getconf _NPROCESSORS_CONF 2>/dev/null || echo 1)
  for ((cpu = 0; cpu < n; cpu++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$cpu"
  done > "$work/root/proc/cpuinfo"

  rm -rf "$root"
  mv "$work/root" "$root"
  echo "$stamp" > "$root/VERSION"
  rm -rf "$work"
  trap - EXIT
}

# --- this machine's numpy + onnxruntime wheels, for a device-like venv (tests/runtime/test_runtime_dist.py) -----
host_wheels() {
  local dir=$1 pins=() w tmp
  for w in numpy onnxruntime; do pins+=("$w==$(version "$w")"); done
  if [ "$(cat "$dir/VERSION" 2>/dev/null)" = "${pins[*]}" ]; then return 0; fi
  tmp=$(mktemp -d "$(dirname "$dir")/.wheelhouse.XXXXXX")
  chmod 755 "$tmp"
  retry "$python" -m pip download --quiet --only-binary=:all: -d "$tmp" "${pins[@]}"
  echo "${pins[*]}" > "$tmp/VERSION"
  rm -rf "$dir"
  mv "$tmp" "$dir"
}

iree_runtime
python_root
[ -z "$wheelhouse" ] || { mkdir -p "$(dirname "$wheelhouse")"; host_wheels "$wheelhouse"; }
