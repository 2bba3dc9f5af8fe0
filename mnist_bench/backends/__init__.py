"""Backends by name: ``backend=NAME`` loads ``mnist_bench.backends.NAME_backend``.

Each backend module defines ``create() -> Backend``. Adding a backend means one module here and
one ``conf/backend/NAME.yaml``; importing lazily keeps TensorFlow out of NumPy runs.
"""

from __future__ import annotations

import importlib

from mnist_bench.backends.base import Backend
from mnist_bench.config import KERAS_BACKENDS


def get(name: str) -> Backend:
    """The backend registered under ``name``; raises ImportError naming what to install."""
    return importlib.import_module(f"mnist_bench.backends.{name}_backend").create()


def split_label(label: str) -> tuple[str, str | None, bool]:
    """A label's backend name, Keras engine (None: the default) and whether it asks for XLA: ``numpy``,
    ``tf+xla``, ``keras[jax]`` (Keras on its JAX engine), as bench, check and the benchmark suite name them."""
    backend, _, xla = label.partition("+")
    name, _, engine = backend.removesuffix("]").partition("[")
    return name, engine or None, xla == "xla"


def unavailable(label: str) -> str | None:
    """Why the backend a label names cannot run here (its framework, or Keras' engine, does not import), or
    None when it can."""
    name, engine, _ = split_label(label)
    try:
        module = importlib.import_module(f"mnist_bench.backends.{name}_backend")
        if name == "keras":
            module.check_engine(engine or KERAS_BACKENDS[0])
    except ImportError as err:
        return f"backend {label} unavailable: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    return None
