"""What this machine can do, measured: memory read bandwidth and peak sgemm throughput.

One epoch of the linear model must read every training image once and do 4*N*784*10 flops
(forward and weight gradient), so its floor is max(bytes / bandwidth, flops / peak). Each run
tags that floor and logs ``roofline_ratio`` = its median epoch seconds / floor: a number that means
the same on a laptop, on CI and on a workstation.

``mnist-bench roofline`` prints the probe; runs use a copy cached per machine and thread count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from mnist_bench import atomic, machine
from mnist_bench.errors import EXIT_OK, ArgumentParser, run_tool
from mnist_bench.paths import cache_dir

PROG = "mnist-bench roofline"
CACHE_MAX_AGE_SECONDS = 7 * 24 * 3600
_PROBE_BYTES = 256 * 2**20  # larger than any cache, so reads come from memory
_GEMM_SIZE = 1024


@dataclass(frozen=True)
class Roofline:
    read_gb_per_s: float
    sgemm_gflop_per_s: float
    threads: int
    cpu_model: str

    def epoch_floor_seconds(self, n_samples: int, n_features: int, itemsize: int, n_classes: int = 10) -> float:
        """The fastest one epoch could possibly run: memory-bound or compute-bound, whichever is slower."""
        read = n_samples * n_features * itemsize / (self.read_gb_per_s * 1e9)
        compute = 4 * n_samples * n_features * n_classes / (self.sgemm_gflop_per_s * 1e9)
        return max(read, compute)

    def epoch_floor_for(self, x_train: np.ndarray) -> float:
        """The floor of one epoch over these training images."""
        return self.epoch_floor_seconds(*x_train.shape, x_train.itemsize)


def _best_seconds(work, repeats: int) -> float:
    work()  # warm up: page faults, BLAS thread start-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def measure(threads: int, repeats: int = 7) -> Roofline:
    """Probe bandwidth with a matrix-vector product over 256 MB (the forward pass's access
    pattern) and peak compute with a 1024^3 sgemm; best of ``repeats``."""
    rows = _PROBE_BYTES // (4 * 784)
    matrix = np.ones((rows, 784), dtype=np.float32)
    vector = np.ones(784, dtype=np.float32)
    a = np.random.default_rng(0).random((_GEMM_SIZE, _GEMM_SIZE), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        read = _best_seconds(lambda: matrix @ vector, repeats)
        gemm = _best_seconds(lambda: a @ a, repeats)
    return Roofline(
        read_gb_per_s=matrix.nbytes / read / 1e9,
        sgemm_gflop_per_s=2 * _GEMM_SIZE**3 / gemm / 1e9,
        threads=threads,
        cpu_model=machine.cpu_model(),
    )


def _cache_file(threads: int) -> Path:
    key = hashlib.sha256(f"{machine.hostname()}|{machine.cpu_model()}|{threads}".encode()).hexdigest()[:12]
    return cache_dir() / "roofline" / f"{key}.json"


def cached(threads: int) -> Roofline:
    """This machine's roofline for ``threads``, measured once a week at most."""
    path = _cache_file(threads)
    try:
        if time.time() - path.stat().st_mtime < CACHE_MAX_AGE_SECONDS:
            return Roofline(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    roof = measure(threads)
    with contextlib.suppress(OSError):  # a read-only cache only costs a re-measurement next time
        atomic.write(path, json.dumps(asdict(roof)).encode())
    return roof


def main(argv: list[str] | None = None) -> int:
    return run_tool(PROG, lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--threads",
        type=machine.measured_threads,
        default=machine.cpu_count(),
        help="BLAS threads (default: all cores)",
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = parser.parse_args(argv)
    roof = measure(args.threads)
    itemsize = np.dtype(args.dtype).itemsize
    floor = roof.epoch_floor_seconds(60000, 784, itemsize)
    print(f"cpu: {roof.cpu_model}, {args.threads} BLAS threads")
    print(f"read bandwidth: {roof.read_gb_per_s:.1f} GB/s")
    print(f"sgemm peak:     {roof.sgemm_gflop_per_s:.0f} GFLOP/s")
    print(f"epoch floor (60000 x 784 {args.dtype}): {floor * 1000:.1f} ms")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
