"""The NumPy backend: its gradient against finite differences, its losses against naive formulas, the
predicted class, determinism, batching, the epoch callback, schedules, divergence, and the MNIST
acceptance bar."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from mnist_bench import artifacts, data
from mnist_bench.backends import base
from mnist_bench.backends.base import EpochMetrics, FitResult, TrainData, initial_parameters
from mnist_bench.backends.numpy_backend import (
    BLOCK_ROWS,
    NumpyBackend,
    evaluate,
    probabilities_and_loss,
    score,
    summed_gradients,
)
from mnist_bench.config import BackendConfig, Config
from mnist_bench.hydra_app import compose
from mnist_bench.schema import PREDICTIONS_ARTIFACT

N_CLASSES = 10


# --- naive references: the textbook formulas, fine wherever nothing overflows --------------------


def naive_sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def naive_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def naive_loss(z: np.ndarray, y: np.ndarray, activation: str) -> np.ndarray:
    """Per-row loss: one-vs-rest binary cross-entropy (sigmoid) or categorical cross-entropy (softmax)."""
    if activation == "sigmoid":
        p = naive_sigmoid(z)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(axis=1)
    return -np.log((naive_softmax(z) * y).sum(axis=1))


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(N_CLASSES)[labels]


# --- gradients and losses ------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_gradient_matches_central_finite_differences(activation: str) -> None:
    rng = np.random.default_rng(7)
    n, d = 9, 6
    x = rng.normal(size=(n, d))
    y = one_hot(rng.integers(0, N_CLASSES, n))
    w = rng.normal(scale=0.5, size=(d, N_CLASSES))
    b = rng.normal(scale=0.5, size=N_CLASSES)

    *_, grad_w, grad_b = summed_gradients(x, y, w, b, activation)

    def summed_loss(w_: np.ndarray, b_: np.ndarray) -> float:
        return float(naive_loss(x @ w_ + b_, y, activation).sum())

    eps = 1e-6
    fd_w = np.zeros_like(w)
    for idx in np.ndindex(*w.shape):
        step = np.zeros_like(w)
        step[idx] = eps
        fd_w[idx] = (summed_loss(w + step, b) - summed_loss(w - step, b)) / (2 * eps)
    fd_b = np.array([summed_loss(w, b + eps * e) - summed_loss(w, b - eps * e) for e in np.eye(N_CLASSES)]) / (2 * eps)

    np.testing.assert_allclose(grad_w, fd_w, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad_b, fd_b, rtol=1e-6, atol=1e-8)
    assert np.abs(grad_w).max() > 1e-3  # not a trivially zero gradient


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_probabilities_and_loss_equal_the_naive_formulas(activation: str) -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(scale=4.0, size=(50, N_CLASSES))
    y = one_hot(rng.integers(0, N_CLASSES, 50))
    p, loss = probabilities_and_loss(z, y, activation)
    expected_p = naive_sigmoid(z) if activation == "sigmoid" else naive_softmax(z)
    np.testing.assert_allclose(p, expected_p, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(loss, naive_loss(z, y, activation), rtol=1e-10)


def test_losses_stay_finite_where_the_naive_formulas_overflow() -> None:
    z = np.array([[1000.0, -1000.0] + [0.0] * (N_CLASSES - 2)])
    y = one_hot(np.array([1]))  # the label has logit -1000: a confidently wrong prediction
    _, sigmoid_loss = probabilities_and_loss(z, y, "sigmoid")
    _, softmax_loss = probabilities_and_loss(z, y, "softmax")
    # BCE: class 0 (y=0, z=1000) costs softplus(1000) = 1000, class 1 (y=1, z=-1000) costs 1000,
    # the other eight classes (z=0) cost log 2 each.
    np.testing.assert_allclose(sigmoid_loss, [2000 + 8 * math.log(2)], rtol=1e-12)
    # CE: -log softmax_1 = logsumexp(z) - z_1 = 1000 + 1000 (the rest is far below float precision).
    np.testing.assert_allclose(softmax_loss, [2000.0], rtol=1e-12)


def test_evaluate_is_mean_loss_and_accuracy() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 8))
    labels = rng.integers(0, N_CLASSES, 40)
    w, b = rng.normal(size=(8, N_CLASSES)), rng.normal(size=N_CLASSES)
    loss, accuracy = evaluate(x, labels, one_hot(labels), w, b, Config(activation="softmax").spec())
    z = x @ w + b
    assert loss == pytest.approx(naive_loss(z, one_hot(labels), "softmax").mean(), rel=1e-10)
    assert accuracy == pytest.approx(np.mean([row.argmax() == k for row, k in zip(z, labels, strict=True)]))


# --- the predicted class ------------------------------------------------------------------------


def test_probabilities_rule_gives_saturated_ties_to_the_lowest_class() -> None:
    """sigmoid(z) is exactly 1.0 in float64 for z above about 36.7: rows 0 and 2 tie at 1.0 in two classes."""
    z = np.full((3, N_CLASSES), -5.0)
    z[0, [3, 7]] = 40.0, 45.0
    z[1, [1, 4]] = 2.0, 3.0  # nothing saturates: both rules agree
    z[2, [2, 5]] = 50.0, 38.0
    labels = np.array([7, 4, 2])
    p, _ = probabilities_and_loss(z, one_hot(labels), "sigmoid")
    assert (p[0, [3, 7]] == 1.0).all() and (p[2, [2, 5]] == 1.0).all() and (p[1] < 1.0).all()

    by_logits, by_probabilities = (base.predicted_class(z, p, rule) for rule in ("logits", "probabilities"))
    assert by_logits.tolist() == [7, 4, 2]
    assert by_probabilities.tolist() == [3, 4, 2]
    assert base.tied_rows(p).tolist() == [True, False, True]
    assert (by_probabilities == labels).mean() < (by_logits == labels).mean()


def test_on_saturated_mnist_weights_the_probabilities_rule_scores_lower_and_is_what_a_run_reports(
    mnist_overrides: list[str], tmp_path: Path
) -> None:
    """seed_numpy (raw pixels, uniform(-1, 1) start, summed gradient) trained 10 epochs: a third of the rows
    have several sigmoid outputs at exactly 1.0. The rules disagree only on tied rows, where the
    probabilities rule takes the lowest tied class; it scores lower; and the run's train accuracy, tied
    fraction, test accuracy and confusion matrix all follow it."""
    cfg = compose(
        "+experiment=seed_numpy",
        "predict_from=probabilities",
        "stop_at_target=false",
        "epochs=10",
        "backend.threads=1",
        "backend.warmup_epochs=0",
        *mnist_overrides,
    )
    mnist = data.load(cfg.dataset)
    raw = (mnist.x_train, mnist.y_train, mnist.x_test, mnist.y_test)
    history, fit = train(cfg, raw)
    split = base.prepare(*raw, cfg.spec())

    def rules(x: np.ndarray, labels: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> dict:
        z = x @ weights + bias
        p, _ = probabilities_and_loss(z, one_hot(labels), cfg.activation)
        by = {rule: base.predicted_class(z, p, rule) for rule in ("logits", "probabilities")}
        return {"p": p, **by, **{f"{rule} accuracy": float((by[rule] == labels).mean()) for rule in by}}

    # Epoch 1's train numbers are those of the starting weights (up to a near tie that summation order flips).
    start = rules(split.x_train, split.y_train, *initial_parameters(cfg.spec(), split.n_features))
    rows = len(split.x_train)
    assert history[0].train_accuracy == pytest.approx(start["probabilities accuracy"], abs=2 / rows)
    assert history[0].tied_prediction_fraction == pytest.approx(base.tied_rows(start["p"]).mean(), abs=2 / rows)

    trained = rules(split.x_train, split.y_train, fit.weights, fit.bias)
    p, by_logits, by_probabilities = trained["p"], trained["logits"], trained["probabilities"]
    tied, top = base.tied_rows(p), p == p.max(axis=1, keepdims=True)
    assert tied.mean() > 0.1
    differ = by_logits != by_probabilities
    assert differ.any() and tied[differ].all()
    assert (by_probabilities == top.argmax(axis=1)).all()  # the first (lowest) class at the top
    assert top[np.arange(rows), by_logits].all()  # the largest logit is at the top too
    assert trained["probabilities accuracy"] < trained["logits accuracy"]

    test = rules(split.x_test, split.y_test, fit.weights, fit.bias)
    final = score(split, fit.weights, fit.bias, cfg.spec())  # the run's final metrics, of the weights it keeps
    assert final.test_accuracy == test["probabilities accuracy"] < test["logits accuracy"]
    assert final.train_accuracy == trained["probabilities accuracy"]
    artifacts.write(tmp_path, cfg, fit, split.x_test, split.y_test)
    counts = np.loadtxt(tmp_path / "confusion_matrix.csv", delimiter=",", skiprows=1, dtype=np.int64)[:, 1:]
    assert np.trace(counts) / len(split.y_test) == final.test_accuracy
    predictions = artifacts.parse_predictions((tmp_path / PREDICTIONS_ARTIFACT).read_text())
    np.testing.assert_array_equal(predictions[:, 0], split.y_test)
    np.testing.assert_array_equal(predictions[:, 1], test["probabilities"])  # the rule behind the test accuracy


# --- training on a small synthetic problem --------------------------------------------------------


def synthetic(n_train: int = 240, n_test: int = 60, d: int = 30, seed: int = 0) -> tuple[np.ndarray, ...]:
    """uint8 'images' whose labels a linear teacher assigns: a problem a linear model can learn."""
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(d, N_CLASSES))
    x = rng.integers(0, 256, size=(n_train + n_test, d), dtype=np.uint8)
    labels = (x / 255.0 - 0.5) @ teacher
    y = labels.argmax(axis=1).astype(np.uint8)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


RAW = synthetic()


def make_cfg(**overrides: object) -> Config:
    """A float64, single-thread config (threads=1 keeps BLAS sums in one order)."""
    base_cfg = {"dtype": "float64", "epochs": 5, "lr": 0.5, "backend": BackendConfig(threads=1, warmup_epochs=0)}
    return Config(**{**base_cfg, **overrides})


def train(cfg: Config, raw: tuple[np.ndarray, ...] = RAW, stop=None) -> tuple[list[EpochMetrics], FitResult]:
    spec = cfg.spec()
    train_data = base.prepare(*raw, spec)
    history: list[EpochMetrics] = []

    def on_epoch(m: EpochMetrics) -> bool:
        history.append(m)
        return bool(stop and stop(m))

    return history, NumpyBackend().fit(train_data, spec, on_epoch)


def curves(history: list[EpochMetrics]) -> list[tuple]:
    """Everything an epoch reports except its timing."""
    return [(m.epoch, m.train_loss, m.train_accuracy, m.test_loss, m.test_accuracy) for m in history]


def initial_loss(cfg: Config, raw: tuple[np.ndarray, ...] = RAW) -> float:
    spec = cfg.spec()
    train_data: TrainData = base.prepare(*raw, spec)
    w, b = initial_parameters(spec, train_data.n_features)
    loss, _ = evaluate(train_data.x_train, train_data.y_train, train_data.one_hot(train_data.y_train), w, b, spec)
    return loss


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_same_seed_gives_bit_identical_curves_and_weights(activation: str) -> None:
    cfg = make_cfg(activation=activation, batch_size=32, momentum=0.5, seed=4)
    first_history, first = train(cfg)
    second_history, second = train(dataclasses.replace(cfg))
    assert curves(first_history) == curves(second_history)
    assert np.array_equal(first.weights, second.weights) and np.array_equal(first.bias, second.bias)

    other_history, other = train(dataclasses.replace(cfg, seed=5))
    assert not np.array_equal(first.weights, other.weights)
    assert curves(first_history) != curves(other_history)


def test_full_batch_equals_one_batch_of_every_sample() -> None:
    n = len(RAW[0])
    full_history, full = train(make_cfg(batch_size=None))
    same_history, same = train(make_cfg(batch_size=n, shuffle=False))
    assert curves(full_history) == curves(same_history)
    assert np.array_equal(full.weights, same.weights) and np.array_equal(full.bias, same.bias)
    # Shuffling one batch only reorders the sums: the same numbers up to rounding.
    shuffled_history, shuffled = train(make_cfg(batch_size=n, shuffle=True))
    np.testing.assert_allclose(shuffled.weights, full.weights, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.array(curves(shuffled_history)), np.array(curves(full_history)), rtol=1e-10)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_blocked_full_batch_is_textbook_gradient_descent(activation: str) -> None:
    """A batch larger than BLOCK_ROWS is summed block by block: the same steps as the formula in one piece."""
    raw = synthetic(n_train=2 * BLOCK_ROWS + 300)
    cfg = make_cfg(activation=activation, epochs=3, lr=0.3)
    history, fit = train(cfg, raw)

    data = base.prepare(*raw, cfg.spec())
    x, y = data.x_train, data.one_hot(data.y_train)
    w, b = initial_parameters(cfg.spec(), data.n_features)
    for _ in range(cfg.epochs):
        z = x @ w + b
        p = naive_sigmoid(z) if activation == "sigmoid" else naive_softmax(z)
        w, b = w - cfg.lr * x.T @ (p - y) / len(x), b - cfg.lr * (p - y).mean(axis=0)
    np.testing.assert_allclose(fit.weights, w, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fit.bias, b, rtol=1e-9, atol=1e-12)
    assert history[0].train_loss == pytest.approx(initial_loss(cfg, raw), rel=1e-12)


def test_on_epoch_returning_true_stops_training() -> None:
    history, fit = train(make_cfg(epochs=10), stop=lambda m: m.epoch == 3)
    assert [m.epoch for m in history] == [1, 2, 3]
    assert fit.epochs_run == 3


def test_warmup_epochs_do_not_change_the_results() -> None:
    cold_history, cold = train(make_cfg(batch_size=16, momentum=0.9))
    warm_cfg = make_cfg(batch_size=16, momentum=0.9, backend=BackendConfig(threads=1, warmup_epochs=2))
    warm_history, warm = train(warm_cfg)
    assert curves(cold_history) == curves(warm_history)
    assert np.array_equal(cold.weights, warm.weights) and np.array_equal(cold.bias, warm.bias)
    assert cold.warmup_seconds < warm.warmup_seconds  # the warm-up did run


def test_a_process_warms_up_once_for_each_set_of_arrays_batch_size_and_thread_count() -> None:
    cfg = make_cfg(batch_size=16, epochs=1, backend=BackendConfig(threads=1, warmup_epochs=1))
    arrays = base.prepare(*RAW, cfg.spec())

    def warm_up_seconds(cfg: Config, arrays: TrainData) -> float:
        return NumpyBackend().fit(arrays, cfg.spec(), lambda m: False).warmup_seconds

    assert warm_up_seconds(cfg, arrays) > 0
    assert warm_up_seconds(dataclasses.replace(cfg, seed=1, lr=0.1), arrays) == 0  # a later job, already warm
    assert warm_up_seconds(dataclasses.replace(cfg, batch_size=32), arrays) > 0
    assert warm_up_seconds(dataclasses.replace(cfg, backend=BackendConfig(threads=2, warmup_epochs=1)), arrays) > 0
    assert warm_up_seconds(cfg, base.prepare(*RAW, cfg.spec())) > 0  # new arrays
    assert warm_up_seconds(cfg, arrays) > 0  # the first arrays again: only the last set is remembered


@pytest.mark.parametrize(
    "options",
    [
        {"momentum": 0.9, "lr": 0.05},
        {"lr_schedule": "linear"},
        {"lr_schedule": "cosine"},
        {"batch_size": 32, "momentum": 0.5, "lr_schedule": "cosine"},
        {"grad_reduction": "sum", "lr": 0.002},
        {"init": "zeros"},
        {"init": "normal", "init_scale": 0.1, "dtype": "float32"},
    ],
    ids=["momentum", "linear", "cosine", "minibatch-momentum-cosine", "sum-reduction", "zeros-init", "float32"],
)
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_optimiser_options_run_and_reduce_the_loss(activation: str, options: dict) -> None:
    cfg = make_cfg(activation=activation, epochs=8, **options)
    history, fit = train(cfg)
    assert fit.epochs_run == 8 and len(history) == 8
    assert all(math.isfinite(v) for m in history for v in curves([m])[0])
    assert history[-1].test_loss < initial_loss(cfg)
    assert history[-1].train_loss < history[0].train_loss
    assert fit.weights.dtype == np.dtype(cfg.dtype) and fit.weights.shape == (RAW[0].shape[1], N_CLASSES)


def test_schedules_change_the_trajectory() -> None:
    weights = {s: train(make_cfg(lr_schedule=s))[1].weights for s in ("constant", "linear", "cosine")}
    assert not np.array_equal(weights["constant"], weights["linear"])
    assert not np.array_equal(weights["linear"], weights["cosine"])


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_a_diverging_config_ends_with_a_huge_or_non_finite_loss_without_raising(activation: str) -> None:
    cfg = make_cfg(activation=activation, normalize=False, lr=100.0, epochs=5, dtype="float32")
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # the backend must contain its overflow
        history, fit = train(cfg)
    assert fit.epochs_run == 5
    last = history[-1]
    sane = make_cfg(activation=activation, normalize=True, lr=0.5, epochs=5, dtype="float32")
    sane_loss = train(sane)[0][-1].train_loss
    assert not math.isfinite(last.train_loss) or last.train_loss > 1000 * sane_loss


# --- real MNIST: the acceptance bar ---------------------------------------------------------------


@pytest.mark.slow
def test_softmax_minibatch_reaches_92_percent_on_mnist_within_10_epochs(mnist_overrides: list[str]) -> None:
    cfg = compose(
        "activation=softmax",
        "normalize=true",
        "batch_size=128",
        "lr=0.5",
        "epochs=10",
        "init=zeros",
        "backend.threads=1",
        "backend.warmup_epochs=0",
        *mnist_overrides,
    )
    mnist = data.load(cfg.dataset)
    assert (len(mnist.x_train), len(mnist.x_test)) == (60000, 10000)
    history, fit = train(
        cfg, (mnist.x_train, mnist.y_train, mnist.x_test, mnist.y_test), lambda m: m.test_accuracy >= 0.92
    )
    assert max(m.test_accuracy for m in history) >= 0.92, [round(m.test_accuracy, 4) for m in history]
    assert fit.epochs_run <= 10
    # The accuracy the backend reports is the fraction of test images whose argmax is right.
    predicted = (
        base.prepare(mnist.x_test, mnist.y_test, mnist.x_test, mnist.y_test, cfg.spec()).x_test @ fit.weights + fit.bias
    )
    assert np.mean(predicted.argmax(axis=1) == mnist.y_test) == pytest.approx(history[-1].test_accuracy, abs=1e-12)


def test_numpy_runs_import_no_other_framework() -> None:
    """A NumPy-only install must work, and a NumPy run must not pay for another framework's import."""
    script = """
import sys
import numpy as np
import mnist_bench.backends.numpy_backend, mnist_bench.experiment, mnist_bench.cli
from mnist_bench.backends import base, get
from mnist_bench.config import Config
cfg = Config(epochs=2, batch_size=4).spec()
rng = np.random.default_rng(0)
x, y = rng.integers(0, 256, (8, 784)), rng.integers(0, 10, 8)
get("numpy").fit(base.prepare(x, y, x, y, cfg), cfg, lambda m: False)
imported = sorted({"tensorflow", "keras", "jax"} & set(sys.modules))
assert not imported, f"a NumPy run imported {imported}"
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
