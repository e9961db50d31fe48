"""``python -m fastlkm``: the command line (the kernel build's KSYMHASH step runs it so)."""

import sys

from fastlkm.cli import main

sys.exit(main())
