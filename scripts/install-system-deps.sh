#!/usr/bin/env bash
# Install the Debian packages Kiln needs (Debian 12 "bookworm"): qemu-user-static and the arm64
# runtime libraries (libc, libstdc++) that qemu needs to run aarch64 IREE runtimes for verification.
# qemu-user-static also runs the arm64 Python userland that `make cross-runtimes` unpacks (with apt-get
# download and dpkg-deb, which every Debian has) to verify onnxruntime and OpenVINO artifacts.
# postgresql: the job store's tests run a real server; openssl: TLS certificates for the auth tests.
# gcc and its aarch64/armv7 cross compilers build Treelite's C for tree models (compiler/backends/treelite.py)
# and link TVM's host code for GPU boards.
# mesa-vulkan-drivers (lavapipe) + libvulkan1: a real Vulkan driver on the CPU, which runs Vulkan (Mali, Intel
# graphics) artifacts for verification.
set -euo pipefail
packages=(openssl qemu-user-static libc6-arm64-cross libstdc++6-arm64-cross libgcc-s1-arm64-cross postgresql gcc gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libvulkan1 mesa-vulkan-drivers)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
# A flaky mirror gets one retry.
$sudo apt-get update -qq || { sleep 5; $sudo apt-get update -qq; }
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" \
  || { sleep 5; $sudo apt-get update -qq; $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"; }
