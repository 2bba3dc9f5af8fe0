"""mnist-bench: tracked, reproducible benchmarks of one linear MNIST classifier across backends."""

import os

# OpenBLAS's worker threads spin for 2**28 cycles (about 0.1 s here) after each call before they sleep: in a
# sweep's rounds that spin ran beside the next cell's timed epoch and doubled TensorFlow's. 2**22 cycles
# (about 1.6 ms) still spans the gaps between one epoch's calls, and full-batch NumPy epochs timed the same
# (docs/performance.md). OpenBLAS reads it once, as NumPy loads it, so it is set before anything imports
# NumPy; a value already in the environment stays.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "22")
