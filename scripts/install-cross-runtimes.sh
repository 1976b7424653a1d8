#!/usr/bin/env bash
# Unpack the aarch64 wheel of iree-base-runtime (the same version as the installed compiler) so that
# Kiln can run aarch64 artifacts under qemu-user. Usage: install-cross-runtimes.sh PYTHON DEST
set -euo pipefail
python=$1; dest=$2
version=$("$python" -c 'import importlib.metadata as m; print(m.version("iree-base-runtime"))')
tool="$dest/aarch64/iree/_runtime_libs/iree-run-module"
if [ -x "$tool" ] && [ "$(cat "$dest/aarch64/VERSION" 2>/dev/null)" = "$version" ]; then exit 0; fi
rm -rf "$dest/aarch64" "$dest/wheels"
mkdir -p "$dest/wheels"
"$python" -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.11 \
  --platform manylinux_2_28_aarch64 "iree-base-runtime==$version" -d "$dest/wheels" \
  || "$python" -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.11 \
  --platform manylinux_2_28_aarch64 "iree-base-runtime==$version" -d "$dest/wheels"
"$python" -m zipfile -e "$dest"/wheels/iree_base_runtime-*aarch64*.whl "$dest/aarch64"
chmod +x "$dest"/aarch64/iree/_runtime_libs/iree-*
echo "$version" > "$dest/aarch64/VERSION"
rm -rf "$dest/wheels"
