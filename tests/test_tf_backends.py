"""backend=tf and backend=keras against the NumPy reference, on small synthetic data (see parity.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, hydra_dirs
from needs import import_extra
from parity import COLUMNS, SUMMED_GRADIENT, assert_learns, assert_same_training, config, fit

tf = import_extra("tensorflow", "tf")

from mnist_bench import backends, machine  # noqa: E402  (after the skip: these tests need TensorFlow)
from mnist_bench.backends import _tf_common, base, get  # noqa: E402
from mnist_bench.backends.numpy_backend import probabilities_and_loss  # noqa: E402
from mnist_bench.config import ConfigError  # noqa: E402

# --- parity --------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_tf_matches_numpy_full_batch(activation: str) -> None:
    expected = fit(config("numpy", activation=activation))
    actual = fit(config("tf", activation=activation))
    assert_learns(expected)
    assert_same_training(actual, expected)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_keras_matches_tf_minibatch(activation: str) -> None:
    expected = fit(config("tf", activation=activation, batch_size=64, shuffle=False, epochs=5))
    actual = fit(config("keras", activation=activation, batch_size=64, shuffle=False, epochs=5))
    assert_learns(expected)
    assert_same_training(actual, expected)


def test_momentum_cosine_shuffled_minibatches() -> None:
    """Momentum, a per-step schedule, shuffled batches and a last partial batch (512 = 5 x 100 + 12)."""
    options = {"activation": "softmax", "batch_size": 100, "momentum": 0.9, "lr_schedule": "cosine", "epochs": 5}
    reference = fit(config("numpy", **options))
    tf_run = fit(config("tf", **options))
    assert_learns(reference)
    assert_same_training(tf_run, reference)
    assert_same_training(fit(config("keras", **options)), tf_run)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_summed_weight_gradient_on_raw_pixels(activation: str) -> None:
    """The weight gradient is the batch's row count times the mean one (parity.SUMMED_GRADIENT)."""
    options = {"activation": activation, **SUMMED_GRADIENT}
    reference = fit(config("numpy", **options))
    tf_run = fit(config("tf", **options))
    assert_learns(reference)
    assert_same_training(tf_run, reference)
    assert_same_training(fit(config("keras", **options)), tf_run)
    mean = fit(config("tf", **{**options, "grad_reduction": "mean"}))
    assert not np.allclose(mean.result.weights, tf_run.result.weights, rtol=1e-3)


@pytest.mark.parametrize(("backend", "batch_size"), [("tf", 100), ("keras", 128)])
def test_xla_matches_graph_mode(backend: str, batch_size: int) -> None:
    """tf with a last partial batch (its own shape in the compiled epoch); keras with whole batches only,
    since each batch shape is one more XLA compilation there."""
    options = {"activation": "sigmoid", "batch_size": batch_size, "momentum": 0.5, "epochs": 3}
    assert_same_training(fit(config(backend, xla=True, **options)), fit(config("tf", **options)))


def test_tf_predicts_the_class_numpy_does_where_sigmoids_saturate() -> None:
    """Logits around 37, where a float64 sigmoid starts to round to exactly 1.0: TF's probabilities are 1.0,
    and tie, on the same entries as NumPy's, and both argmaxes give a tie to the lowest class. Logits
    below -708.4, whose sigmoid is a subnormal float, give 0 in both (TF on a CPU flushes subnormals)."""
    rng = np.random.default_rng(0)
    z = rng.normal(36.0, 1.5, (20000, base.NUM_CLASSES))
    z[:, ::2] = rng.normal(0.0, 30.0, (20000, base.NUM_CLASSES // 2))  # and everything else, on half the classes
    z[:100] = rng.uniform(-709.7, -708.5, (100, base.NUM_CLASSES))
    p, _ = probabilities_and_loss(z, np.zeros_like(z), "sigmoid")
    tf_p = _tf_common.probabilities(tf.constant(z), "sigmoid").numpy()
    assert 0.1 < base.tied_rows(p).mean() < 0.9
    assert (p[:100] == 0).all()
    np.testing.assert_array_equal(tf_p == 1.0, p == 1.0)
    np.testing.assert_array_equal(tf_p == 0.0, p == 0.0)
    np.testing.assert_array_equal(_tf_common.tied_rows(tf.constant(tf_p)).numpy(), base.tied_rows(p))
    for rule in ("logits", "probabilities"):
        tf_class = _tf_common.predicted_class(tf.constant(z), tf.constant(tf_p), rule).numpy()
        np.testing.assert_array_equal(tf_class, base.predicted_class(z, p, rule), err_msg=rule)
    tie = tf.constant([[0.0, 1.0, 0.5, 1.0, 1.0]], tf.float64)
    assert _tf_common.predicted_class(tie, tie, "probabilities").numpy().tolist() == [1]


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_probabilities_rule_matches_numpy_on_raw_pixels(activation: str) -> None:
    """The tutorial's rule on every backend, from weights large enough (raw pixels) that outputs tie."""
    options = {"activation": activation, "predict_from": "probabilities", "normalize": False, "lr": 1e-3}
    expected = fit(config("numpy", **options))
    if activation == "sigmoid":
        assert expected.curves["tied_prediction_fraction"].max() > 0.1
    assert_same_training(fit(config("tf", **options)), expected)
    assert_same_training(fit(config("keras", **options)), expected)


def test_keras_runs_in_each_runs_dtype() -> None:
    """Keras keeps global dtype state: a float32 run after a float64 one in the same process is float32."""
    for dtype in ("float64", "float32"):
        run = fit(config("keras", dtype=dtype, batch_size=128, epochs=1))
        assert run.result.weights.dtype == run.result.bias.dtype == np.dtype(dtype)


# --- stopping, warm-up ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["tf", "keras"])
def test_on_epoch_true_stops_after_that_epoch(backend: str) -> None:
    run = fit(config(backend, batch_size=128, epochs=10), stop=lambda m: m.epoch == 3)
    assert run.result.epochs_run == 3
    assert len(run.curves["train_loss"]) == 3


@pytest.mark.parametrize("backend", ["tf", "keras"])
def test_warmup_changes_nothing(backend: str) -> None:
    options = {"batch_size": 100, "momentum": 0.9, "lr_schedule": "linear", "epochs": 2}
    cold = fit(config(backend, warmup_epochs=0, **options))
    warm = fit(config(backend, warmup_epochs=2, **options))
    assert warm.result.warmup_seconds > cold.result.warmup_seconds
    assert_same_training(warm, cold, rtol=0)


# --- device --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["tf", "keras"])
def test_cpu_and_auto_devices(backend: str) -> None:
    expected_auto = "gpu" if tf.config.get_visible_devices("GPU") else "cpu"
    assert get(backend).resolve_device(config(backend, device="auto").spec())[0] == expected_auto
    assert get(backend).resolve_device(config(backend, device="cpu").spec()) == ("cpu", machine.cpu_model())


@pytest.mark.parametrize("backend", ["tf", "keras"])
def test_gpu_without_one_is_a_one_line_config_error(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tf.config, "get_visible_devices", lambda kind=None: [])
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    with pytest.raises(ConfigError) as info:
        get(backend).resolve_device(config(backend, device="gpu").spec())
    message = str(info.value)
    assert message.startswith("device=gpu but TensorFlow sees no GPU") and "device=cpu" in message
    assert "\n" not in message


_GPU_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
import parity as t

out = {{"auto": [t.get(b).resolve_device(t.config(b, device="auto").spec())[0] for b in ("tf", "keras")]}}
for backend in ("tf", "keras"):  # the GPU first: a device=cpu run would hide it from this process
    for device in ("gpu", "cpu"):
        run = t.fit(t.config(backend, device=device, batch_size=64, momentum=0.9, epochs=3))
        out[backend + "-" + device] = {{k: v.tolist() for k, v in run.curves.items()}}
        out[backend + "-" + device]["weights"] = run.result.weights.ravel().tolist()
print(json.dumps(out))
"""


@pytest.mark.gpu
@pytest.mark.skipif(not tf.config.list_physical_devices("GPU"), reason="TensorFlow sees no GPU on this machine")
def test_gpu_matches_cpu() -> None:
    """In a fresh process: this one's CPU-only tests may already have hidden the GPU from TensorFlow."""
    script = _GPU_SCRIPT.format(tests=str(REPO / "tests"))
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["auto"] == ["gpu", "gpu"]
    for backend in ("tf", "keras"):
        gpu, cpu = out[backend + "-gpu"], out[backend + "-cpu"]
        for key in (*COLUMNS, "weights"):
            np.testing.assert_allclose(gpu[key], cpu[key], rtol=1e-7, atol=1e-9, err_msg=f"{backend} {key}")


# --- what a CPU job prints, through the CLI in a fresh process (TF starts its runtime once a process) ----------

# A line of TensorFlow's C++ (absl) log: severity letter, MMDD, then the time.
ABSL_LINE = re.compile(r"^[IWEF]\d{4} ", re.MULTILINE)


@dataclass
class CliJob:
    folder: Path
    uri: str
    args: list[str]
    done: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def tf_cpu_job(mnist_dir: Path, run_cli, tmp_path_factory: pytest.TempPathFactory) -> CliJob:
    """``backend=tf`` on the CPU with no activation given, on a slice of MNIST, into a store of its own."""
    folder = tmp_path_factory.mktemp("tf-cpu-job")
    uri = f"sqlite:///{folder}/mlflow.db"
    args = ["epochs=1", "dataset.train_limit=1000", "dataset.test_limit=500", "progress=none", f"tracking.uri={uri}"]
    args += [*hydra_dirs(folder), "backend.threads=1"]
    return CliJob(folder, uri, args, run_cli(["backend=tf", "device=cpu", *args], folder))


def test_a_cpu_job_prints_nothing_from_tensorflows_cuda_probe(tf_cpu_job: CliJob) -> None:
    assert tf_cpu_job.done.returncode == 0, tf_cpu_job.done.stderr[-3000:]
    printed = tf_cpu_job.done.stderr + tf_cpu_job.done.stdout
    assert "cuInit" not in printed and "cuda drivers" not in printed, printed[-3000:]
    assert not ABSL_LINE.search(printed), printed[-3000:]


def test_resume_takes_the_backends_default_activation_for_the_same_run(tf_cpu_job: CliJob, run_cli, runs_of) -> None:
    """``backend=tf`` ran as tf-softmax; ``backend=tf activation=softmax`` is that run, so resume skips it."""
    (run,) = runs_of(tf_cpu_job.uri)
    assert run.info.run_name == "tf-softmax-lr0.1-s0-e1" and run.data.params["activation"] == "softmax"
    again = run_cli(["backend=tf", "activation=softmax", *tf_cpu_job.args], tf_cpu_job.folder)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"skipped, already FINISHED as run {run.info.run_id}" in again.stdout + again.stderr
    assert [r.info.run_id for r in runs_of(tf_cpu_job.uri)] == [run.info.run_id]


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="TensorFlow sees a GPU on this machine")
def test_device_gpu_without_one_is_one_line_with_cudas_reason(tf_cpu_job: CliJob, run_cli) -> None:
    done = run_cli(["backend=tf", "device=gpu", *tf_cpu_job.args], tf_cpu_job.folder)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("mnist-bench: error: device=gpu but TensorFlow sees no GPU") and "device=cpu" in lines[0]


# --- imports -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["tf", "keras"])
def test_missing_tensorflow_is_backend_unavailable(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` fail
    for module in ("_tf_common", "tf_backend", "keras_backend"):  # forget them, so that they are imported again
        monkeypatch.delitem(sys.modules, f"mnist_bench.backends.{module}", raising=False)
        monkeypatch.delattr(backends, module, raising=False)
    with pytest.raises(base.BackendUnavailable) as info:  # keras: once the job's engine is known
        get(backend).resolve_device(config(backend).spec())
    message = str(info.value)
    assert message.startswith(f"backend={backend} needs TensorFlow") and "pip install 'mnist-bench[tf]'" in message
    assert "\n" not in message
