"""Facts about the machine a run happens on, logged as tags so numbers can be compared honestly."""

from __future__ import annotations

import argparse
import functools
import os
import platform
import resource
import socket
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from types import MappingProxyType


@functools.cache
def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    """Cores this process may use (respects taskset/cgroup affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def measured_threads(text: str) -> int:
    """A --threads option of a tool that measures this machine (roofline, bench): 1 to its cores. More
    threads than cores time their contention, not the machine (--threads 100000 gave 0 GFLOP/s)."""
    cores = cpu_count()
    if not text.isdigit() or not 1 <= int(text) <= cores:
        raise argparse.ArgumentTypeError(f"{text} threads: this machine has {cores} cores; give 1 to {cores}")
    return int(text)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def available_memory_bytes() -> int | None:
    """The memory the kernel says new work can have now without swapping (MemAvailable), None off Linux."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def hostname() -> str:
    return socket.gethostname()


def process_start_ticks(pid: int) -> str | None:
    """When a process started, in clock ticks since boot: tells a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@functools.cache
def pid_namespace() -> str:
    """This process's PID namespace, as the boot it belongs to and the namespace's inode: a pid means the
    same process only to a reader in the same namespace ("" where the OS cannot say)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


@functools.cache
def blas_library() -> str:
    """The BLAS NumPy calls, e.g. ``openblas 0.3.31 (Haswell)``: NumPy's own, not another package's
    (SciPy, loaded by TensorFlow, bundles an OpenBLAS of its own)."""
    import numpy  # noqa: F401  (loads the BLAS so threadpoolctl can see it)
    from threadpoolctl import threadpool_info

    pools = [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]
    numpys = [pool for pool in pools if any(part.startswith("numpy") for part in Path(pool["filepath"]).parts[-3:-1])]
    for pool in numpys or pools:
        return f"{pool.get('internal_api')} {pool.get('version')} ({pool.get('architecture')})"
    return "unknown"


@functools.cache
def package_versions(
    names: tuple[str, ...] = ("numpy", "mlflow", "hydra-core", "tensorflow", "keras", "jax", "jaxlib", "torch"),
) -> Mapping[str, str]:
    """The installed versions of the packages a result depends on. Like the other facts here, asked once a
    process: every job of a sweep tagged them, at 4-6 ms a job for the same answer. Read-only, as every
    caller shares the one cached answer."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return MappingProxyType(versions)


@functools.cache
def harness_version() -> str:
    try:
        return metadata.version("mnist-bench")
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def git_commit() -> str:
    """The commit of the checkout the package runs from, with '+dirty' for local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")
