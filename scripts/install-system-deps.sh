#!/usr/bin/env bash
# Install the Debian packages Kiln needs (Debian 12 "bookworm"), then prove each works (check-system.sh).
#   qemu-user-static + libc6/libstdc++6/libgcc-s1-arm64-cross: run aarch64 IREE runtimes and the arm64
#     Python userland that `make cross-runtimes` unpacks, to verify ARM artifacts;
#   gcc, gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf and their C libraries and headers (libc6-dev*,
#     which --no-install-recommends would leave out): Treelite's C for tree models, TVM's host code for GPU
#     boards, the fmaxf/fminf that ARMv7 IREE modules link;
#   postgresql: the job store's tests run a real server; openssl: TLS certificates for the auth tests;
#   mesa-vulkan-drivers (lavapipe) + libvulkan1: a real Vulkan driver on the CPU that runs Vulkan (Mali,
#     Intel graphics) artifacts for verification; vulkan-tools: its vulkaninfo proves the driver loads;
#   bubblewrap + util-linux (setpriv): the sandbox each `kiln serve` job's compile runs in;
#   chromium: the headless browser the web console's tests drive through Playwright (never `playwright install`).
set -euo pipefail
packages=(openssl qemu-user-static libc6-arm64-cross libstdc++6-arm64-cross libgcc-s1-arm64-cross postgresql
          gcc libc6-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
          libvulkan1 mesa-vulkan-drivers vulkan-tools bubblewrap util-linux chromium)
missing=()
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
echo "installing Debian packages: ${missing[*]}"
log=$(mktemp "${TMPDIR:-/tmp}/kiln-apt.XXXXXX.log")
install() { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"; }
# A flaky mirror gets one retry; apt's output is shown only when both tries fail.
install >"$log" 2>&1 || { sleep 5; install >>"$log" 2>&1; } || { tail -30 "$log" >&2; exit 1; }
rm -f "$log"
