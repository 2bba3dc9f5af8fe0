"""Backends by name: ``backend=NAME`` loads ``mnist_bench.backends.NAME_backend``.

Each backend module defines ``create() -> Backend``. Adding a backend means one module here and
one ``conf/backend/NAME.yaml``; importing lazily keeps TensorFlow out of NumPy runs.
"""

from __future__ import annotations

import importlib
import time

from mnist_bench.backends.base import Backend
from mnist_bench.config import KERAS_BACKENDS, TrainingSpec

_made_ready: set[str] = set()  # the backends (Keras: per engine) this process has imported and set up


def get(name: str) -> Backend:
    """The backend registered under ``name``; raises ImportError naming what to install."""
    return importlib.import_module(f"mnist_bench.backends.{name}_backend").create()


def ready(spec: TrainingSpec) -> tuple[Backend, str, str, float]:
    """The spec's backend with its framework imported, its device ("cpu" or "gpu") and the device's name, and
    the seconds that took if this is the process's first use of that backend (for Keras, of that engine), else 0.

    A framework's import is paid once per process, not per job (TensorFlow's took 6-7 s here, JAX's 1.8 s), so
    a job's wall time leaves it out and counts it as start-up, the same way for every backend."""
    key = f"{spec.backend.name}[{spec.backend.keras_backend}]" if spec.backend.name == "keras" else spec.backend.name
    start = time.perf_counter()
    backend = get(spec.backend.name)
    device, device_name = backend.resolve_device(spec)
    first = key not in _made_ready
    _made_ready.add(key)
    return backend, device, device_name, time.perf_counter() - start if first else 0.0


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
