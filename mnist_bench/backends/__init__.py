"""Backends by name: ``backend=NAME`` loads the module registered as NAME in the entry point group
``mnist_bench.backends``. pyproject.toml registers the built-in ones there; an installed package registers its
own the same way (README, "Your own backend"). A name registered nowhere, as in a checkout whose installed
metadata predates a built-in backend, is looked for as ``mnist_bench.backends.NAME_backend``.

Each backend module defines ``create() -> Backend``, and may define ``Options``, a dataclass of its own keys
(``backend.options``, checked with the rest of the config). An installed backend's ``conf/backend/NAME.yaml``
lies in a ``conf/`` folder beside its module, which hydra_plugins/mnist_bench_backends puts on Hydra's search
path. Modules are imported lazily, so a NumPy run never imports TensorFlow, JAX or PyTorch.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import time
from dataclasses import fields
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from mnist_bench.backends.base import Backend
from mnist_bench.config import KERAS_BACKENDS, BackendConfig, ConfigError, TrainingSpec

ENTRY_POINT_GROUP = "mnist_bench.backends"
_BUILT_IN_PACKAGE = f"{__name__}."
# What a bench or gate label's "+" suffix asks for: tf+xla, keras+xla, torch+compile.
COMPILERS = ("xla", "compile")
_made_ready: set[str] = set()  # the backends (Keras: per engine) this process has imported and set up


@functools.cache
def registered() -> dict[str, EntryPoint]:
    """The backends installed packages register, by name (read once a process)."""
    return {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}


def module_name(name: str) -> str:
    point = registered().get(name)
    return point.module if point is not None else f"{_BUILT_IN_PACKAGE}{name}_backend"


def is_built_in(name: str) -> bool:
    return module_name(name).startswith(_BUILT_IN_PACKAGE)


def installed_config_dirs() -> list[Path]:
    """The ``conf/`` folders of the installed, not built-in, backends: each holds its ``backend/NAME.yaml``.
    Found without importing the backend (only its package's ``__init__``, where the module is inside one)."""
    folders = []
    for name in registered():
        if is_built_in(name):
            continue
        spec = importlib.util.find_spec(module_name(name))
        if spec is not None and spec.origin:
            folders.append(Path(spec.origin).parent / "conf")
    return list(dict.fromkeys(folders))


def _module(name: str) -> ModuleType:
    return importlib.import_module(module_name(name))


def get(name: str) -> Backend:
    """The backend registered under ``name``; raises ImportError naming what to install."""
    return _module(name).create()


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


def options(backend: BackendConfig) -> object | None:
    """``backend.options`` as its backend's ``Options`` dataclass (None for a backend that declares none);
    raises ConfigError, in one line naming the key, for an option the backend does not have or a bad value."""
    # The built-in backends declare none: nothing to import for them.
    schema = None if is_built_in(backend.name) else getattr(_module(backend.name), "Options", None)
    if schema is None:
        if backend.options:
            raise ConfigError(
                f"backend.options is not allowed with backend={backend.name}: it declares no options"
                " (backend.options holds the keys of an installed backend whose module defines Options)"
            )
        return None
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), backend.options))
    except ConfigKeyError as err:
        allowed = ", ".join(f.name for f in fields(schema))
        raise ConfigError(
            f"unknown key 'backend.options.{err.key}': backend={backend.name} has no such option; allowed: {allowed}"
        ) from None
    except Exception as err:  # OmegaConf's type errors: the message's first line, with the key
        message = str(err).splitlines()[0]
        raise ConfigError(f"backend.options.{getattr(err, 'key', '')}: {message}") from None


def split_label(label: str) -> tuple[str, str | None, str | None]:
    """A label's backend name, Keras engine (None: the default) and compiler (None, ``xla`` or ``compile``):
    ``numpy``, ``tf+xla``, ``torch+compile``, ``keras[jax]`` (Keras on its JAX engine), as bench, check and the
    benchmark suite name them."""
    backend, _, compiler = label.partition("+")
    name, _, engine = backend.removesuffix("]").partition("[")
    return name, engine or None, compiler if compiler in COMPILERS else None


def unavailable(label: str) -> str | None:
    """Why the backend a label names cannot run here (its framework, or Keras' engine, does not import), or
    None when it can."""
    name, engine, _ = split_label(label)
    try:
        module = _module(name)
        if name == "keras":
            module.check_engine(engine or KERAS_BACKENDS[0])
    except ImportError as err:
        return f"backend {label} unavailable: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    return None
