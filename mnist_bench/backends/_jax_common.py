"""What backend=jax and Keras on JAX share: a JAX import with float64 enabled, its CPU threads, and the device.

Importing this module imports JAX; only the JAX-based backends do, so a NumPy run never pays for it.
"""

from __future__ import annotations

import logging
import os

import jax
from jax._src import xla_bridge

from mnist_bench import machine
from mnist_bench.config import ConfigError, TrainingSpec

log = logging.getLogger(__name__)
# JAX logs at INFO each platform it cannot start ("Unable to initialize backend 'tpu'"): not news on a CPU run.
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

_ONE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

# float64 runs need JAX's x64 mode: without it jnp silently computes in float32. Every array this
# harness hands JAX carries its dtype explicitly, so float32 runs stay float32.
jax.config.update("jax_enable_x64", True)


def set_threads(threads: int | None) -> None:
    """One thread for XLA's CPU runtime when ``threads`` is 1; XLA reads its flags once, when JAX first
    computes, so a later job in the same process keeps the first one's (a warning says so)."""
    if threads != 1:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if _ONE_THREAD_FLAGS in flags:
        return
    if xla_bridge.backends_are_initialized():
        log.warning("backend.threads=1 not applied: JAX already runs with its default threads in this process")
        return
    os.environ["XLA_FLAGS"] = f"{flags} {_ONE_THREAD_FLAGS}".strip()


def resolve_device(cfg: TrainingSpec) -> tuple[jax.Device, str, str]:
    """The JAX device for ``cfg.device``, "cpu" or "gpu", and its name; raises ConfigError for gpu without one."""
    set_threads(cfg.backend.threads)
    if cfg.device.name != "cpu":
        try:
            gpu = jax.devices("gpu")[0]
        except RuntimeError:  # no CUDA-enabled jaxlib, or no GPU visible to it
            if cfg.device.name == "gpu":
                raise ConfigError(
                    "device=gpu but JAX sees no GPU: pip install 'mnist-bench[gpu]' on a machine with one,"
                    " or use device=cpu or device=auto"
                ) from None
        else:
            return gpu, "gpu", gpu.device_kind
    return jax.devices("cpu")[0], "cpu", machine.cpu_model()
