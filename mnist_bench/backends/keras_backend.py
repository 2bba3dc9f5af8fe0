"""backend=keras: keras.Sequential([Dense(10)]) trained by model.fit (_keras_model.py), on the engine
``backend.keras_backend`` names: tensorflow (the default), jax or torch.

Keras reads its engine once, from $KERAS_BACKEND when it is first imported, and a sweep may run jobs of
both engines in one process (Hydra's basic launcher runs them one after another; a joblib worker runs
several). So every job loads Keras on its own engine before it touches Keras (``load``):
- Keras not imported yet: $KERAS_BACKEND is set to the job's engine, then Keras is imported.
- Keras imported on another engine: ``keras.config.set_backend`` re-imports the whole keras package on the
  job's engine, and _keras_model, whose classes subclass the old package's, is reloaded over the new one.
  Nothing of a job's Keras outlives its fit, so no object of the old package is used again.
$KERAS_BACKEND and ~/.keras/keras.json therefore never choose a run's engine: its config does.

This module imports no framework: TensorFlow is imported only for the tensorflow engine, JAX only for jax,
PyTorch only for torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from types import ModuleType

from mnist_bench.backends.base import BackendUnavailable, EpochCallback, FitResult, TrainData
from mnist_bench.config import TrainingSpec

if importlib.util.find_spec("keras") is None:  # either engine's extra installs it
    raise BackendUnavailable(
        "backend=keras needs Keras, which is not installed: pip install 'mnist-bench[tf]' (or '[jax]' for"
        " backend.keras_backend=jax; '.[tf]' in a checkout)"
    )

_MODEL = "mnist_bench.backends._keras_model"
# Each engine: the module that imports it (quietly, with its settings) and what installs it.
_ENGINES = {
    "tensorflow": ("mnist_bench.backends._tf_common", "TensorFlow", "tf"),
    "jax": ("mnist_bench.backends._jax_common", "JAX", "jax"),
    "torch": ("mnist_bench.backends._torch_common", "PyTorch", "torch"),
}


def _unavailable(engine: str, err: ImportError) -> BackendUnavailable:
    _, library, extra = _ENGINES[engine]
    job = "backend=keras" if engine == "tensorflow" else f"backend=keras backend.keras_backend={engine}"
    install = f"pip install 'mnist-bench[{extra}]' (or '.[{extra}]' in a checkout)"
    return BackendUnavailable(f"{job} needs {library} and Keras; {err.name} is not installed: {install}")


def _common(engine: str) -> ModuleType:
    """_tf_common or _jax_common: the engine imported as the harness's other backends import it."""
    try:
        return importlib.import_module(_ENGINES[engine][0])
    except ModuleNotFoundError as err:
        raise _unavailable(engine, err) from err


def check_engine(engine: str) -> None:
    """Raises BackendUnavailable, naming the extra to install, when ``engine`` does not import here."""
    _common(engine)


def load(engine: str) -> ModuleType:
    """_keras_model on Keras running ``engine``; see the module docstring for how."""
    _common(engine)  # first: TF's log level, JAX's float64 mode, before Keras imports them
    keras = sys.modules.get("keras")
    if keras is None:
        os.environ["KERAS_BACKEND"] = engine
    elif keras.config.backend() != engine:
        with warnings.catch_warnings():  # its warning: objects made before it are unusable (none are kept)
            warnings.simplefilter("ignore")
            keras.config.set_backend(engine)
    try:
        model = importlib.import_module(_MODEL)
    except ModuleNotFoundError as err:
        raise _unavailable(engine, err) from err
    if model.keras is not sys.modules["keras"]:
        model = importlib.reload(model)
    return model


def _device(cfg: TrainingSpec) -> tuple[AbstractContextManager, str, str]:
    """Where the run's tensors and variables go (a context), "cpu" or "gpu", and the device's name."""
    common = _common(cfg.backend.keras_backend)
    if cfg.backend.keras_backend == "jax":
        import jax  # imported by _jax_common above

        device, kind, name = common.resolve_device(cfg)
        return jax.default_device(device), kind, name
    if cfg.backend.keras_backend == "torch":
        _, kind, name = common.resolve_device(cfg)
        return _keras_device(kind), kind, name
    kind, name = common.resolve_device(cfg)
    return common.placement(kind), kind, name


@contextmanager
def _keras_device(kind: str) -> Iterator[None]:
    """keras.device's scope, entered once Keras is loaded: Keras on PyTorch otherwise takes CUDA where it sees it."""
    import keras

    with keras.device("gpu" if kind == "gpu" else "cpu"):
        yield


class KerasBackend:
    """keras.Sequential + SGD trained by model.fit, one call per epoch, on the configured engine."""

    def resolve_device(self, cfg: TrainingSpec) -> tuple[str, str]:
        load(cfg.backend.keras_backend)  # Keras itself too: its import is set-up, like every framework's
        return _device(cfg)[1:]

    def fit(self, data: TrainData, cfg: TrainingSpec, on_epoch: EpochCallback) -> FitResult:
        model = load(cfg.backend.keras_backend)
        placement, _, _ = _device(cfg)
        return model.fit(data, cfg, on_epoch, placement)


def create() -> KerasBackend:
    return KerasBackend()
