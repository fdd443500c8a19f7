"""``python -m gpu_check``: the GPU check's command line (scripts/gpu-check runs it)."""

import sys

from gpu_check import main

sys.exit(main())
