"""Where mnist-bench reads its configs and keeps its caches, decided once."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "MNIST_BENCH_DATA_DIR"
CACHE_DIR_ENV = "MNIST_BENCH_CACHE_DIR"


def conf_dir() -> Path:
    """The packaged config tree: inside the installed package, or conf/ beside it in a checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return installed if installed.is_dir() else package.parent / "conf"


def cache_dir(explicit: str | None = None) -> Path:
    """The cache root: ``explicit`` (a config key), else $MNIST_BENCH_CACHE_DIR, else the XDG user cache."""
    chosen = explicit or os.environ.get(CACHE_DIR_ENV)
    if chosen:
        return Path(chosen).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "mnist-bench"
