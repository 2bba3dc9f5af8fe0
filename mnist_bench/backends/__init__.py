"""Backends by name: ``backend=NAME`` loads ``mnist_bench.backends.NAME_backend``.

Each backend module defines ``create() -> Backend``. Adding a backend means one module here and
one ``conf/backend/NAME.yaml``; importing lazily keeps TensorFlow out of NumPy runs.
"""

from __future__ import annotations

import importlib

from mnist_bench.backends.base import Backend


def get(name: str) -> Backend:
    """The backend registered under ``name``; raises ImportError naming what to install."""
    return importlib.import_module(f"mnist_bench.backends.{name}_backend").create()
