#!/usr/bin/env bash
# Set up fastlkm on a fresh Debian machine: system packages, then a virtual environment
# in .venv with fastlkm installed (editable) and its test tools.  Idempotent.
# Usage: source scripts/setup.sh [test]     ("test" adds what the test suite needs)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
want_tests=${1:-}

apt_install() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then apt_install python3-venv; fi
if ! command -v gcc >/dev/null; then apt_install gcc python3-dev; fi
if [ "$want_tests" = test ]; then
    # kmod is the oracle; qemu, busybox and cpio boot the real kernel; binutils' readelf
    # checks the ELF reader and writer; xz/zstd/lz4 make test data; dpkg-dev gives apt-get
    # download; libc6-dev builds the static finit_module helper; openssl re-signs modules
    apt_install kmod qemu-system-x86 busybox-static cpio binutils xz-utils zstd lz4 dpkg-dev time \
        libc6-dev openssl
    # fastlkm kernel build: Debian's 6.12 with the patch series (src/fastlkm/data/linux)
    apt_install flex bison libelf-dev bc libssl-dev dwarves make patch ccache
fi
if [ ! -x "$here/.venv/bin/python" ]; then python3 -m venv "$here/.venv"; fi
"$here/.venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "$want_tests" = test ]; then
    "$here/.venv/bin/python" -m pip install -q -e "$here[test]"
else
    "$here/.venv/bin/python" -m pip install -q -e "$here"
fi
export PATH="$here/.venv/bin:$PATH"
