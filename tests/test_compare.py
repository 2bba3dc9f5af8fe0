"""``mnist-bench compare`` on real sweeps: the same sweep repeated in turns is no regression, one sweep a
side gives the same numbers and says what its interval leaves out, a candidate that really ran slower is a
regression (exit 1), a candidate timed beside busy processes is unreliable rather than slower, and bad
input is one line with exit status 2."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from mnist_bench import compare as compare_tool
from mnist_bench.errors import EXIT_BAD_INPUT

GRID = ["backend=numpy", "activation=softmax", "batch_size=100", "lr=0.5", "epochs=4", "seed=0,1"]
SMALL = ["dataset.train_limit=20000", "dataset.test_limit=1000", "progress=none"]


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def sweep(run_cli, hydra_args, folder: Path, name: str, *extra: str) -> None:
    uri = f"sqlite:///{folder}/mlflow.db"
    done = run_cli(["-m", *GRID, *SMALL, f"sweep_name={name}", "resume=false", f"tracking.uri={uri}", *extra,
                    *hydra_args(folder / name)], folder)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def compare(run_cli, folder: Path, baseline: str, candidate: str) -> tuple[int, list[dict], str]:
    out = folder / f"{baseline}-{candidate}.json"
    uri = f"sqlite:///{folder}/mlflow.db"
    done = run_cli(["compare", baseline, candidate, "--tracking-uri", uri, "--json", str(out)], folder)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(out.read_text()), done.stdout + done.stderr


def test_a_null_param_and_a_left_out_one_are_one_configuration() -> None:
    """Runs leave backend.threads out where it is null; runs logged before said None: the same setting."""
    logged_before = {"backend.threads": "None", "lr": "0.1", "batch_size": "None", "seed": "0"}
    logged_now = {"lr": "0.10", "batch_size": "None", "seed": "1"}
    assert compare_tool.configuration(logged_before) == compare_tool.configuration(logged_now)
    assert compare_tool.configuration({**logged_now, "backend.threads": "2"}) != compare_tool.configuration(logged_now)
    assert compare_tool.configuration({**logged_now, "batch_size": "128"}) != compare_tool.configuration(logged_now)


# Every run counts as stable, whatever other processes or the hypervisor take.
PERMISSIVE = ["timing.max_other_cpu_share=1", "timing.max_cpu_steal_share=1", "timing.max_epoch_spread=100"]


@pytest.mark.slow
@pytest.mark.usefixtures("mnist_dir")
def test_a_to_a_is_no_regression_a_slowed_candidate_is_and_a_noisy_one_is_unreliable(
    tmp_path: Path, run_cli, hydra_args
) -> None:
    for name in ("a1", "b1", "a2", "b2"):  # in turns, so a drift in the machine's speed falls on both sides
        sweep(run_cli, hydra_args, tmp_path, name)
    sweep(run_cli, hydra_args, tmp_path, "base", *PERMISSIVE)
    spinners = [multiprocessing.Process(target=_spin, args=(600,)) for _ in range(2 * multiprocessing.cpu_count())]
    for process in spinners:
        process.start()
    try:  # the same loaded machine for both: one candidate accepts it, the other (default limits) does not
        sweep(run_cli, hydra_args, tmp_path, "slowed", *PERMISSIVE)
        sweep(run_cli, hydra_args, tmp_path, "noisy")
    finally:
        for process in spinners:
            process.terminate()
            process.join()

    # One sweep a side: the same numbers, and a caveat, but no promise on the exit status. Two sweeps in a
    # row can differ by 1.5x on this machine with every recorded condition steady (CI met 0.64x), and
    # only repeats put that drift into the interval (docs/performance.md, Drift between sweeps).
    _, (row,), output = compare(run_cli, tmp_path, "a1", "b1")
    assert (row["n_baseline"], row["n_candidate"], row["accuracy_diff"]) == (2, 2, 0), (
        output
    )  # same seeds, same numbers
    assert row["speed_ratio_low"] <= row["speed_ratio"] <= row["speed_ratio_high"], output
    assert "one sweep on a side" in output  # says what its interval leaves out

    status, (row,), output = compare(run_cli, tmp_path, "a1,a2", "b1,b2")  # repeats, pooled per configuration
    assert (row["n_baseline"], row["n_baseline_sweeps"], row["n_candidate_sweeps"]) == (4, 2, 2), output
    assert row["speed_ratio_low"] <= row["speed_ratio"] <= row["speed_ratio_high"], output
    assert status == 0 and "one sweep on a side" not in output, output  # A/A: no slowdown beyond 1.10

    status, (row,), output = compare(run_cli, tmp_path, "base", "slowed")
    assert row["speed_verdict"] == "slower" and row["speed_ratio_high"] < 1 / 1.10, output
    assert status == 1 and "REGRESSION" in output and "slower by more than 1.1x" in output
    assert "unless the machine drifted between the sweeps" in output, output  # one sweep a side: says so

    status, (row,), output = compare(run_cli, tmp_path, "base", "noisy")
    assert row["speed_verdict"].startswith("unreliable: ") and "other processes used" in row["speed_verdict"], output
    assert status == 0, output  # unreliable is a warning, never a regression


@pytest.mark.parametrize("sweeps", ["a,,b", ",", "a, "])
def test_an_empty_sweep_name_is_one_line_and_exit_2(sweeps: str, capsys: pytest.CaptureFixture) -> None:
    assert compare_tool.main([sweeps, "b"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names an empty sweep" in err[0] and "NAME1,NAME2" in err[0], err


@pytest.fixture(scope="module")
def one_sweep(tmp_path_factory: pytest.TempPathFactory, run_cli, hydra_args) -> Path:
    """A folder whose store holds one tiny real sweep, named "a"."""
    folder = tmp_path_factory.mktemp("one-sweep")
    tiny = ["dataset.train_limit=600", "dataset.test_limit=200", "progress=none", "epochs=1", "sweep_name=a"]
    done = run_cli(["-m", *tiny, f"tracking.uri=sqlite:///{folder}/mlflow.db", *hydra_args(folder)], folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


@pytest.mark.usefixtures("mnist_dir")
@pytest.mark.parametrize("fault", ["a folder", "full_disk", "unwritable_folder"])
def test_json_it_cannot_write_is_one_line_and_exit_2(
    one_sweep: Path, fault: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture
) -> None:
    """--json to a folder, or to a path it cannot write, ended in a traceback."""
    place = one_sweep if fault == "a folder" else request.getfixturevalue(fault)
    target = place if fault == "a folder" else place / "compare.json"
    before = sorted(place.iterdir())
    uri = f"sqlite:///{one_sweep}/mlflow.db"
    assert compare_tool.main(["a", "a", "--tracking-uri", uri, "--json", str(target)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mnist-bench compare: error: "), err
    expected = f"--json {target} is a folder: name a file" if fault == "a folder" else f"cannot write --json {target} ("
    assert expected in err[0], err
    assert sorted(place.iterdir()) == before


@pytest.mark.usefixtures("mnist_dir")
@pytest.mark.parametrize("side", ["a,a", "a,latest"])
def test_a_sweep_named_twice_on_a_side_is_refused_in_one_line(
    one_sweep: Path, side: str, capsys: pytest.CaptureFixture
) -> None:
    """compare A,A B counted one sweep twice as two repeats, which narrowed the interval."""
    uri = f"sqlite:///{one_sweep}/mlflow.db"
    for args in ([side, "a"], ["a", side]):
        assert compare_tool.main([*args, "--tracking-uri", uri]) == EXIT_BAD_INPUT
        out, err = capsys.readouterr()
        [line] = err.strip().splitlines()
        first, second = side.split(",")
        assert line.startswith(f"mnist-bench compare: error: {first!r} and {second!r} are the same sweep (a, "), line
        assert "counted twice" in line and out == "", (out, line)
