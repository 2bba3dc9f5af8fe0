"""What backend=tf and Keras on TensorFlow share: a quiet TensorFlow import and the runtime set-up (threads,
device); and backend=tf's loss, predicted class and test evaluation, by the same rules as numpy_backend's
(Keras has them in keras.ops, for both its engines: _keras_model.py).

Importing this module imports TensorFlow; only the tf backend and Keras on TensorFlow do, so a NumPy run
never pays for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

import numpy as np

from mnist_bench import machine
from mnist_bench.config import ConfigError, TrainingSpec

# What TensorFlow's CUDA build (the `tensorflow` wheel) writes to fd 2 on a machine where CUDA does not start,
# whatever TF_CPP_MIN_LOG_LEVEL says: at import, absl's notice and cudart_stub's "Could not find cuda drivers"
# (printed before TF's log level applies, tensorflow/tensorflow#100442); when the runtime starts, "failed call
# to cuInit". TensorFlow calls cuInit whatever the device (CUDA_VISIBLE_DEVICES="" or -1 only changes the
# error it reports), so instead of preventing the probe these lines are kept off the terminal. TensorFlow 2.21
# also says, at its first start, that oneDNN's custom operations are on, before TF_CPP_MIN_LOG_LEVEL applies.
NO_CUDA_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers"
    r"|\] failed call to cuInit"
    r"|port\.cc:\d+\] oneDNN custom operations are on"
)


@contextlib.contextmanager
def stderr_without(pattern: re.Pattern[str]) -> Iterator[list[str]]:
    """Run the body with file descriptor 2, where TensorFlow's C++ code logs, into a temporary file, then write
    back every line but those matching pattern, in order; yields the list the dropped lines are put in."""
    dropped: list[str] = []
    try:
        terminal = os.dup(2)
    except OSError:  # no fd 2 (a daemon): nothing reaches a terminal anyway
        yield dropped
        return
    with tempfile.TemporaryFile() as held:
        if sys.stderr:
            sys.stderr.flush()
        os.dup2(held.fileno(), 2)
        try:
            yield dropped
        finally:
            if sys.stderr:
                sys.stderr.flush()
            os.dup2(terminal, 2)
            os.close(terminal)
            held.seek(0)
            for line in held:
                if pattern.search(text := line.decode(errors="replace")):
                    dropped.append(text.rstrip("\n"))
                else:
                    os.write(2, line)


# Before TensorFlow loads: its C++ info and warning lines and its Python warnings stay off the terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logging.getLogger("tensorflow").setLevel(logging.ERROR)

with stderr_without(NO_CUDA_NOISE):
    import tensorflow as tf  # after the log level above
from absl import logging as absl_logging  # noqa: E402  (absl comes with TensorFlow)

absl_logging.set_verbosity(absl_logging.ERROR)

log = logging.getLogger(__name__)


def resolve_device(cfg: TrainingSpec) -> tuple[str, str]:
    """("gpu", its name) or ("cpu", the CPU model) for ``cfg.device``; raises ConfigError for gpu without one.

    Sets TensorFlow's thread pools first: they can only be set before TF starts its runtime.
    With cpu, the GPUs are hidden so that nothing lands on them (nor TF reserves their memory).
    """
    _set_threads(cfg.backend.threads)
    with stderr_without(NO_CUDA_NOISE) as failed:  # the first call in a process starts TF's runtime: cuInit
        gpus = [] if cfg.device.name == "cpu" else tf.config.get_visible_devices("GPU")
        if not gpus and cfg.device.name != "gpu":
            with contextlib.suppress(RuntimeError):  # TF already runs with its GPUs visible: tf.device("/CPU:0") holds
                tf.config.set_visible_devices([], "GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "gpu", details.get("device_name", gpus[0].name)
    if cfg.device.name == "gpu":
        cuda = next((line.partition("] ")[2] for line in failed if "cuInit" in line), "")
        hidden = tf.config.list_physical_devices("GPU")
        why = f" ({cuda})" if cuda else " (an earlier device=cpu run in this process hid them)" if hidden else ""
        raise ConfigError(f"device=gpu but TensorFlow sees no GPU{why}; use device=cpu or device=auto")
    if cfg.device.name == "auto" and failed:
        log.info("device=auto: no GPU (%s), running on the CPU", failed[-1].partition("] ")[2])
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


def probabilities(logits: tf.Tensor, activation: str) -> tf.Tensor:
    """The activated outputs by numpy_backend's formulas, so that they round to the same values.

    The sigmoid is 1 / (1 + e^-z), as in NumPy, not tf.sigmoid: on the seed_numpy starts (seeds 0-4, float64)
    tf.sigmoid rounds 27-55 of the 600,000 entries to exactly 1.0 where NumPy does not, or the other way,
    and 0.5 (1 + tanh(z / 2)) with TF's tanh 180-233; 1 / (1 + e^-z) saturates on exactly NumPy's entries.
    Outputs below the smallest normal float are 0: TF on a CPU flushes them anyway, here on a GPU too.
    """
    p = 1 / (1 + tf.exp(-logits)) if activation == "sigmoid" else tf.exp(tf.nn.log_softmax(logits))
    return tf.where(p < np.finfo(p.dtype.as_numpy_dtype).tiny, tf.zeros_like(p), p)


def predicted_class(logits: tf.Tensor, probabilities: tf.Tensor, predict_from: str) -> tf.Tensor:
    """base.predicted_class in TensorFlow: tf.argmax too returns the lowest index of a tie."""
    return tf.argmax(probabilities if predict_from == "probabilities" else logits, axis=1)


def tied_rows(probabilities: tf.Tensor) -> tf.Tensor:
    """base.tied_rows in TensorFlow: whether each row's largest output appears more than once."""
    top = tf.equal(probabilities, tf.reduce_max(probabilities, axis=1, keepdims=True))
    return tf.reduce_sum(tf.cast(top, tf.int32), axis=1) > 1


def hits_and_ties(logits: tf.Tensor, y: tf.Tensor, activation: str, predict_from: str) -> tuple[tf.Tensor, tf.Tensor]:
    """Per row (bool): whether the predicted class is the label, and whether its top output is tied."""
    p = probabilities(logits, activation)
    hits = tf.equal(predicted_class(logits, p, predict_from), tf.argmax(y, axis=1))
    return hits, tied_rows(p)


def count(rows: tf.Tensor) -> tf.Tensor:
    """How many rows are True (int32)."""
    return tf.reduce_sum(tf.cast(rows, tf.int32))


def evaluate(
    x: tf.Tensor, y: tf.Tensor, weights: tf.Variable | tf.Tensor, bias: tf.Variable | tf.Tensor, cfg: TrainingSpec
) -> tuple[float, float]:
    """Mean loss and accuracy of the given parameters on one split, in one pass."""
    loss_sum, correct = _loss_sum_and_correct(x, y, weights, bias, cfg.activation, cfg.predict_from)
    rows = int(x.shape[0])
    return float(loss_sum) / rows, int(correct) / rows


@tf.function
def _loss_sum_and_correct(
    x: tf.Tensor, y: tf.Tensor, weights: tf.Variable, bias: tf.Variable, activation: str, predict_from: str
) -> tuple[tf.Tensor, tf.Tensor]:
    logits = x @ weights + bias
    hits, _ = hits_and_ties(logits, y, activation, predict_from)
    return tf.reduce_sum(row_losses(logits, y, activation)), count(hits)
