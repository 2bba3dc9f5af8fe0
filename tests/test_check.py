"""``mnist-bench check`` can fail: on a real (small) MLflow sweep where one run's learning rate cannot
reach the floor, on a benchmark file whose epoch is slowed past its ceiling (real timings from the
committed baseline, scaled), on thresholds that match nothing, and on malformed input (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mnist_bench import cli
from mnist_bench.check import cli as check
from mnist_bench.check.thresholds import PEER, ROOFLINE, load_thresholds
from mnist_bench.errors import EXIT_BAD_INPUT, EXIT_OK
from mnist_bench.errors import EXIT_FAILED as EXIT_BREACH

REPO = Path(__file__).resolve().parents[1]
SMALL = ["dataset.train_limit=2000", "dataset.test_limit=500", "backend.threads=1", "progress=none"]
SMALL += ["init=uniform", "init_scale=1.0"]  # the start these runs were measured from
SMALL_SCOPE = {"dataset.train_limit": 2000, "dataset.test_limit": 500}
GOOD = {"activation": "softmax", "lr": 0.5, "batch_size": 32, "epochs": 2, "seed": 0}
DEGRADED = GOOD | {"lr": 1.0e-5}  # 2 epochs at lr 1e-5 leave the random initial weights as they were
# Measured test accuracy: 0.786 for GOOD, 0.128 for DEGRADED (the initial weights').
FLOOR = 0.70


def floor(where: dict, minimum: float = FLOOR) -> dict:
    return {"metric": "final_test_accuracy", "where": where, "min": minimum, "reason": "SGD that learns clears it"}


def write(folder: Path, content: dict | str, name: str = "thresholds.yaml") -> Path:
    """``content`` as it is (a str), as JSON (a .json name) or as YAML."""
    path = folder / name
    if not isinstance(content, str):
        content = json.dumps(content) if path.suffix == ".json" else yaml.safe_dump(content, sort_keys=False)
    path.write_text(content)
    return path


@pytest.fixture(scope="module")
def sweep_uri(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path, make_store, run_cli) -> str:
    """One real sweep of two small runs, a good one and a degraded one, in a real SQLite store."""
    folder = tmp_path_factory.mktemp("check-sweep")
    store = make_store(folder)  # schema already created: saves the migrations
    lrs = f"lr={GOOD['lr']},{DEGRADED['lr']}"
    overrides = ["-m", "activation=softmax", lrs, "batch_size=32", "epochs=2", "seed=0", "sweep_name=small", *SMALL]
    where = [f"tracking.uri={store.uri}", f"hydra.run.dir={folder}/o", f"hydra.sweep.dir={folder}/m"]
    done = run_cli([*overrides, *where], cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return store.uri


def run_check(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    status = check.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def breaches(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("BREACH")]


def test_good_run_passes_through_the_cli(sweep_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    thresholds = write(tmp_path, {"scope": SMALL_SCOPE, "runs": [floor(GOOD)]})
    with pytest.raises(SystemExit) as exited:  # mnist-bench check ...: the CLI's own dispatch, in this process
        cli.main(["check", "--thresholds", str(thresholds), "--tracking-uri", sweep_uri, "--sweep", "small"])
    out, err = capsys.readouterr()
    assert exited.value.code == EXIT_OK, out + err
    assert "final_test_accuracy" in out and "check: all 1 thresholds pass" in out


def test_degraded_run_breaches_its_floor(sweep_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    thresholds = write(tmp_path, {"scope": SMALL_SCOPE, "runs": [floor(GOOD), floor(DEGRADED)]})
    status, out, err = run_check(capsys, "--thresholds", thresholds, "--tracking-uri", sweep_uri, "--sweep", "latest")
    assert status == EXIT_BREACH
    [line] = breaches(err)
    assert "final_test_accuracy" in line and "lr=1e-05" in line and f"allowed >= {FLOOR:g}" in line
    assert out.count(" pass") == 1 and out.count("FAIL") == 1


def test_threshold_matching_no_run_fails(sweep_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    thresholds = write(tmp_path, {"scope": SMALL_SCOPE, "runs": [floor(GOOD), floor(GOOD | {"lr": 0.3})]})
    status, _, err = run_check(capsys, "--thresholds", thresholds, "--tracking-uri", sweep_uri, "--sweep", "small")
    assert status == EXIT_BREACH
    [line] = breaches(err)
    assert "lr=0.3" in line and "no data (no run matches)" in line


def test_only_skipped_thresholds_fail(sweep_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    skipped = floor(GOOD) | {"requires": "no_such_backend"}
    thresholds = write(tmp_path, {"scope": SMALL_SCOPE, "runs": [skipped]})
    status, out, err = run_check(capsys, "--thresholds", thresholds, "--tracking-uri", sweep_uri)
    assert status == EXIT_BREACH and "skip" in out and "nothing was checked" in err


def committed_baseline() -> dict:
    baselines = sorted((REPO / "results" / "benchmarks").glob("*.json"))
    if not baselines:
        pytest.skip("no benchmark baseline in results/benchmarks")
    return json.loads(baselines[0].read_text())


def scaled(report: dict, name: str, factor: float) -> dict:
    """The report with every timing of benchmark ``name`` multiplied by ``factor``: an injected slowdown."""
    slowed = json.loads(json.dumps(report))
    [bench] = [b for b in slowed["benchmarks"] if b["name"] == name]
    for key in ("min", "max", "mean", "median", "q1", "q3", "total"):
        bench["stats"][key] *= factor
    bench["stats"]["data"] = [t * factor for t in bench["stats"]["data"]]
    return slowed


def test_slowed_epoch_breaches_its_ratio_ceiling(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    report = committed_baseline()
    repository = yaml.safe_load((REPO / "conf" / "thresholds.yaml").read_text())
    # No TensorFlow import needed; the baseline predates the peer ratios (test_slowed_epoch_breaches_its_peer_ceiling).
    numpy_only = [t for t in repository["benchmarks"] if "requires" not in t and t["ratio"][1] != PEER]
    thresholds = write(tmp_path, {"benchmarks": numpy_only})
    good = write(tmp_path, report, "good.json")
    assert run_check(capsys, "--thresholds", thresholds, "--benchmark-json", good)[0] == EXIT_OK

    [ceiling] = [t for t in numpy_only if t["ratio"] == ["test_epoch[numpy-*-b128]", ROOFLINE]]
    [epoch] = [b for b in report["benchmarks"] if b["name"] == "test_epoch[numpy-softmax-b128]"]
    measured = epoch["stats"]["min"] / min(epoch["extra_info"]["roofline_floor_seconds"])
    slow = write(tmp_path, scaled(report, epoch["name"], 2 * ceiling["max"] / measured), "slow.json")
    status, _, err = run_check(capsys, "--thresholds", thresholds, "--benchmark-json", slow)
    assert status == EXIT_BREACH
    [line] = breaches(err)
    assert "test_epoch[numpy-*-b128] / roofline" in line and f"allowed <= {ceiling['max']:g}" in line


def test_slowed_epoch_breaches_its_peer_ceiling(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The ``peer`` denominator is the numerator's own extra_info.peer_epoch_seconds: the committed baseline's
    NumPy minibatch epoch, given a peer exactly as fast, passes the repository's ceiling; slowed past it, breaches."""
    repository = yaml.safe_load((REPO / "conf" / "thresholds.yaml").read_text())
    [ceiling] = [t for t in repository["benchmarks"] if t["ratio"] == ["test_epoch_over_peer[numpy]", PEER]]
    thresholds = write(tmp_path, {"benchmarks": [ceiling]})
    report = committed_baseline()
    [epoch] = [b for b in report["benchmarks"] if b["name"] == "test_epoch[numpy-softmax-b128]"]
    peer = {"peer_epoch_seconds": [epoch["stats"]["min"]]}
    epoch = epoch | {"name": "test_epoch_over_peer[numpy]", "extra_info": peer}
    report = report | {"benchmarks": [epoch]}
    good = write(tmp_path, report, "good.json")
    assert run_check(capsys, "--thresholds", thresholds, "--benchmark-json", good)[0] == EXIT_OK

    slow = write(tmp_path, scaled(report, epoch["name"], 2 * ceiling["max"]), "slow.json")
    status, _, err = run_check(capsys, "--thresholds", thresholds, "--benchmark-json", slow)
    assert status == EXIT_BREACH
    [line] = breaches(err)
    assert "test_epoch_over_peer[numpy] / peer" in line and f"allowed <= {ceiling['max']:g}" in line


MALFORMED = {
    "not yaml": "runs: [unclosed",
    "not a mapping": "- just a list",
    "unknown top-level key": {"rules": []},
    "no thresholds": {"scope": {}},
    "no reason": {"runs": [{"metric": "final_test_accuracy", "where": GOOD, "min": 0.5}]},
    "min and max": {"runs": [floor(GOOD) | {"max": 1.0}]},
    "text bound": {"runs": [floor(GOOD) | {"min": "high"}]},
    "unknown key": {"runs": [floor(GOOD) | {"typo": 1}]},
    "no selection": {"runs": [{"metric": "final_test_accuracy", "min": 0.5, "reason": "r"}]},
    "unknown preset": {"runs": [floor({}) | {"preset": "no_such_preset"}]},
    "one-sided ratio": {"benchmarks": [{"ratio": ["test_epoch[*]"], "max": 2, "reason": "r"}]},
    "gate without backends": {"gate": [{"name": "g", "overrides": "lr=0.1"}], "runs": [floor(GOOD)]},
    "unbalanced quote": {"gate": [{"name": "g", "backends": ["numpy"], "overrides": "lr='0.1"}], "runs": [floor(GOOD)]},
}


@pytest.mark.parametrize("content", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_thresholds_exit_2(content: dict | str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    thresholds = write(tmp_path, content)
    status, out, err = run_check(capsys, "--thresholds", thresholds, "--benchmark-json", tmp_path / "unused.json")
    assert status == EXIT_BAD_INPUT
    assert out == "" and len(err.splitlines()) == 1 and str(thresholds) in err


def test_repository_thresholds_are_well_formed() -> None:
    thresholds = load_thresholds(REPO / "conf" / "thresholds.yaml")
    assert thresholds.gate and thresholds.runs and thresholds.benchmarks
    assert all(t.reason for t in thresholds.runs + thresholds.benchmarks)


def test_bad_input_exits_2(sweep_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    not_json = write(tmp_path, "{]", "broken.json")
    not_benchmarks = write(tmp_path, {"benchmarks": [{"name": "x"}]}, "other.json")
    zero_timing = write(tmp_path, {"benchmarks": [{"name": "x", "stats": {"min": 0}}]}, "zero.json")
    not_utf8 = tmp_path / "latin1.yaml"
    not_utf8.write_bytes("reason: caf\xe9".encode("latin-1"))
    cases = {
        "no sweep named 'nope'": ["--tracking-uri", sweep_uri, "--sweep", "nope"],
        "no tracking store at": ["--tracking-uri", f"sqlite:///{tmp_path}/absent.db"],
        "no experiment 'other'": ["--tracking-uri", sweep_uri, "--experiment", "other"],
        "cannot read benchmark file": ["--benchmark-json", tmp_path / "absent.json"],
        "is not a pytest-benchmark JSON file": ["--benchmark-json", not_json],
        "KeyError": ["--benchmark-json", not_benchmarks],
        "takes no --sweep": ["--benchmark-json", not_json, "--sweep", "small"],
        "cannot read thresholds": ["--thresholds", tmp_path / "absent.yaml"],
        "has a timing that is not a number > 0": ["--benchmark-json", zero_timing],
        "latin1.yaml is not valid YAML": ["--thresholds", not_utf8],
    }
    for message, args in cases.items():
        status, out, err = run_check(capsys, *args)
        assert (status, len(err.splitlines())) == (EXIT_BAD_INPUT, 1), (message, out, err)
        assert message in err
