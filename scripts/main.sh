#!/usr/bin/env bash
# The main job on its default: set-up, then the lookup benchmark on the running kernel
# (or, where no modules are installed, on the Debian 6.12 snapshot shipped with fastlkm).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$here/scripts/setup.sh"
fastlkm bench "$@"
