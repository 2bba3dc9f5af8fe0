"""``mnist-bench bench``: the side-by-side measurement of issue 8, run for real on full MNIST.

Its figures are timings on a shared machine, so the tests hold what must be true on any machine:
every figure is there, an epoch is never faster than the floor measured beside it, the fast preset
reaches its target, and bad input is one line with exit status 2 and no file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from needs import import_extra

from mnist_bench import machine


def bench(run_cli, folder: Path, *args: str, timeout: float = 300):
    return run_cli(["bench", *args], cwd=folder, timeout=timeout)


def test_numpy_figures_beside_the_floor_measured_in_the_same_run(mnist_dir: Path, run_cli, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = bench(run_cli, tmp_path, "--backends", "numpy", "--reference", "none", "--repeats", "3", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())

    floors = {roof["threads"]: roof["epoch_floor_seconds"] for roof in report["rooflines"]}
    assert set(floors) == {1, report["cpu_count"]}  # numpy minibatches run on 1 thread, full batches on all
    figures = {e["batch"]: e for e in report["epochs"]}
    assert set(figures) == {"full", "b256"} and {e["backend"] for e in report["epochs"]} == {"numpy"}
    assert figures["b256"]["threads"] == 1
    for figure in figures.values():
        seconds = figure["seconds"]
        assert 0 < seconds["min"] <= seconds["median"] <= seconds["max"]
        assert figure["floor_ratio"] == pytest.approx(seconds["median"] / floors[figure["threads"]])
        assert figure["floor_ratio"] > 1  # no epoch beats what the machine can do
        assert figure["form"] == "Python loop over NumPy/BLAS calls"
    (peer,) = report["peers"]  # minibatches only, timed beside tests/benchmarks/peers/numpy_peer.py
    assert peer["backend"] == "numpy" and peer["batch"] == "b256"
    assert peer["ratio"] == pytest.approx(peer["seconds"]["median"] / peer["peer_seconds"]["median"])
    assert peer["ratio_low"] <= peer["ratio"] <= peer["ratio_high"]

    (fast,) = report["time_to_target"]["figures"]
    assert fast["contender"] == "numpy fast" and fast["epochs"] == [1, 1, 1]
    assert min(fast["final_test_accuracy"]) >= report["time_to_target"]["target"] == 0.92
    assert fast["seconds"]["median"] > 0
    assert report["keras_adam_over"] == {} and report["pairs"] == []  # one backend: no pair to compare
    assert "x the floor" in done.stdout and "same-work peer" in done.stdout and "load average before" in done.stdout


@pytest.mark.slow
def test_every_backend_against_keras_with_adam(mnist_dir: Path, run_cli, tmp_path: Path) -> None:
    import_extra("tensorflow", "tf")
    import_extra("jax", "jax")
    import_extra("torch", "torch")
    out = tmp_path / "bench.json"
    done = bench(run_cli, tmp_path, "--repeats", "3", "--json", str(out), timeout=1500)  # torch.compile: minutes
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())

    labels = (
        "numpy",
        "tf",
        "tf+xla",
        "keras",
        "keras+xla",
        "keras[jax]",
        "jax",
        "torch",
        "torch+compile",
        "keras[torch]",
    )
    assert {(e["backend"], e["batch"]) for e in report["epochs"]} == {
        (label, batch) for label in labels for batch in ("full", "b256")
    }
    pairs = {(p["batch"], p["first"], p["second"]) for p in report["pairs"]}
    assert pairs == {(b, a, c) for b in ("full", "b256") for i, a in enumerate(labels) for c in labels[i + 1 :]}
    for pair in report["pairs"]:
        assert pair["speed_ratio_low"] <= pair["speed_ratio"] <= pair["speed_ratio_high"]
        assert pair["speed_verdict"].startswith(("faster", "slower", "within noise", "unreliable: "))
    peered = {"numpy", "tf", "tf+xla", "jax", "torch", "torch+compile"}  # Keras has no peer
    assert {p["backend"] for p in report["peers"]} == peered
    figures = {f["contender"]: f for f in report["time_to_target"]["figures"]}
    assert list(figures) == [f"{label} fast" for label in labels] + ["keras model.fit + Adam"]
    adam = figures.pop("keras model.fit + Adam")
    assert adam["seconds"] is not None and max(adam["final_test_accuracy"]) >= 0.92
    for name, figure in figures.items():
        assert figure["epochs"] == [1, 1, 1], name  # every backend trains the fast preset alike
        assert report["keras_adam_over"][name] == pytest.approx(adam["seconds"]["median"] / figure["seconds"]["median"])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--backends", "numpy,mxnet"], "numpy, tf, tf+xla, keras, keras+xla, keras[jax], jax, torch, torch+compile"),
        (["--repeats", "0"], ">= 1"),
        (["--reference", "sklearn"], "keras-adam"),
        (["--json", "{missing}/bench.json"], "does not exist"),
        (["--threads", "100000"], f"--threads: 100000 threads: this machine has {machine.cpu_count()} cores"),
    ],
    ids=["unknown-backend", "zero-repeats", "unknown-reference", "json-in-missing-folder", "threads"],
)
def test_bad_input_is_one_line_and_exit_2(run_cli, tmp_path: Path, args: list[str], expected: str) -> None:
    args = [a.format(missing=tmp_path / "missing") for a in args]
    done = bench(run_cli, tmp_path, *args, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnist-bench bench: error:") and expected in lines[0], lines
    assert not (tmp_path / "missing").exists() and list(tmp_path.iterdir()) == []


def test_roofline_refuses_more_threads_than_cores(run_cli, tmp_path: Path) -> None:
    """--threads 100000 was accepted and printed 0 GFLOP/s."""
    done = run_cli(["roofline", "--threads", "100000"], tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("mnist-bench roofline: error: argument --threads: 100000 threads: this machine has")
    assert done.stdout == ""


@pytest.mark.usefixtures("mnist_dir")
def test_a_batch_larger_than_mnist_is_one_line_before_anything_is_measured(run_cli, tmp_path: Path) -> None:
    done = bench(run_cli, tmp_path, "--batch-size", "100000", "--backends", "numpy", "--reference", "none")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line == "mnist-bench bench: error: --batch-size 100000: MNIST has 60000 training images; give 1 to that"
    assert done.stdout == ""
