"""``python -m mnist_bench.check``: the same as ``mnist-bench check``."""

import sys

from mnist_bench.check.cli import main

if __name__ == "__main__":
    sys.exit(main())
