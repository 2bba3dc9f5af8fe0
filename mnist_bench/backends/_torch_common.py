"""What backend=torch and Keras on PyTorch share: the PyTorch import, its CPU threads, and the device.

Importing this module imports PyTorch; only the torch-based backends do, so a NumPy run never pays for it.
"""

from __future__ import annotations

import torch

from mnist_bench import machine
from mnist_bench.config import ConfigError, TrainingSpec


def resolve_device(cfg: TrainingSpec) -> tuple[torch.device, str, str]:
    """The torch device for ``cfg.device``, "cpu" or "gpu", and its name; raises ConfigError for gpu without one.

    Sets PyTorch's intra-op threads to ``backend.threads`` first (the process's: each job sets its own)."""
    if cfg.backend.threads is not None:
        torch.set_num_threads(cfg.backend.threads)
    if cfg.device.name != "cpu":
        if torch.cuda.is_available():
            return torch.device("cuda"), "gpu", torch.cuda.get_device_name()
        if cfg.device.name == "gpu":
            build = "a CPU build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no device visible"
            raise ConfigError(
                f"device=gpu but PyTorch sees no GPU ({build}): install a CUDA build of torch on a machine with"
                " one, or use device=cpu or device=auto"
            )
    return torch.device("cpu"), "cpu", machine.cpu_model()
