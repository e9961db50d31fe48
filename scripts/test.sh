#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: set-up, the real Debian kernels
# (fetched once with apt-get download and cached under ~/.cache/fastlkm/corpus), then
# pytest.  Extra arguments go to pytest.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$here/scripts/setup.sh" test
python "$here/scripts/corpus.py"
# the patched kernel the kernel tests boot (tests/kbuild): built once per machine, cached
fastlkm kernel build
cd "$here"
ruff check src tests scripts benchmarks fuzz
python -m pytest "$@"
