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


def unavailable(name: str) -> str | None:
    """Why backend ``name`` cannot run here (its framework does not import), or None when it can."""
    try:
        importlib.import_module(f"mnist_bench.backends.{name}_backend")
    except ImportError as err:
        return f"backend {name} unavailable: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    return None
