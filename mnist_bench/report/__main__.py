"""``python -m mnist_bench.report``: the same as ``mnist-bench report``."""

import sys

from mnist_bench.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
