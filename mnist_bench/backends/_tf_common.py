"""What backend=tf and backend=keras share: a quiet TensorFlow import, the runtime set-up (threads,
device), and the loss and test evaluation they both report, so their numbers mean the same thing.

Importing this module imports TensorFlow; only the tf and keras backend modules do, so a NumPy run
never pays for it.
"""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np

from mnist_bench import machine
from mnist_bench.config import Config, ConfigError

# Before TensorFlow loads: its C++ info and warning lines and its Python warnings stay off the terminal
# (except the few absl lines CUDA builds print on machines without a GPU: tensorflow/tensorflow#100442).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logging.getLogger("tensorflow").setLevel(logging.ERROR)

import tensorflow as tf  # noqa: E402  (after the log level above)
from absl import logging as absl_logging  # noqa: E402  (absl comes with TensorFlow)

absl_logging.set_verbosity(absl_logging.ERROR)

log = logging.getLogger(__name__)


def resolve_device(cfg: Config) -> tuple[str, str]:
    """("gpu", its name) or ("cpu", the CPU model) for ``cfg.device``; raises ConfigError for gpu without one.

    Sets TensorFlow's thread pools first: they can only be set before TF starts its runtime.
    With cpu, the GPUs are hidden so that nothing lands on them (nor TF reserves their memory).
    """
    _set_threads(cfg.backend.threads)
    gpus = [] if cfg.device.name == "cpu" else tf.config.get_visible_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "gpu", details.get("device_name", gpus[0].name)
    if cfg.device.name == "gpu":
        hidden = tf.config.list_physical_devices("GPU")
        why = " (an earlier device=cpu run in this process hid them)" if hidden else ""
        raise ConfigError(f"device=gpu but TensorFlow sees no GPU{why}; use device=cpu or device=auto")
    with contextlib.suppress(RuntimeError):  # TF already runs with its GPUs visible: tf.device("/CPU:0") still holds
        tf.config.set_visible_devices([], "GPU")
    return "cpu", machine.cpu_model()


def _set_threads(threads: int | None) -> None:
    """``threads`` for TF's intra-op pool (None: TF's default, every core); one inter-op thread, since the
    model's ops form a single chain and more would only contend for the same cores."""
    if threads is None:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TF already runs in this process (an earlier job): its pools stay as they are
        current = tf.config.threading.get_intra_op_parallelism_threads() or "all cores"
        log.warning("backend.threads=%d not applied: TensorFlow already runs with %s in this process", threads, current)


def placement(device: str) -> tf.device:
    """The device scope a run's tensors and variables are created under."""
    return tf.device("/GPU:0" if device == "gpu" else "/CPU:0")


def one_hot_tensors(x: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Inputs and one-hot targets of one split as tensors on the current device (copied once)."""
    return tf.constant(x), tf.one_hot(labels, n_classes, dtype=x.dtype)


def row_losses(logits: tf.Tensor, y: tf.Tensor, activation: str) -> tf.Tensor:
    """The loss of each row, from the logits: BCE summed over the classes (sigmoid) or cross-entropy (softmax)."""
    if activation == "sigmoid":
        return tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits), axis=1)
    return tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=logits)


def correct_rows(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """How many rows have their largest logit at the label (int32)."""
    hits = tf.equal(tf.argmax(logits, axis=1), tf.argmax(y, axis=1))
    return tf.reduce_sum(tf.cast(hits, tf.int32))


@tf.function
def _loss_sum_and_correct(
    x: tf.Tensor, y: tf.Tensor, weights: tf.Variable, bias: tf.Variable, activation: str
) -> tuple[tf.Tensor, tf.Tensor]:
    logits = x @ weights + bias
    return tf.reduce_sum(row_losses(logits, y, activation)), correct_rows(logits, y)


def evaluate(
    x: tf.Tensor, y: tf.Tensor, weights: tf.Variable, bias: tf.Variable, activation: str
) -> tuple[float, float]:
    """Mean loss and accuracy of the given parameters on one split, in one pass."""
    loss_sum, correct = _loss_sum_and_correct(x, y, weights, bias, activation)
    rows = int(x.shape[0])
    return float(loss_sum) / rows, int(correct) / rows
