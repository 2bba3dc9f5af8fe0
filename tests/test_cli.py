"""Bad input through the real CLI (``python -m mnist_bench`` in a subprocess): exit status 2, one line on
stderr naming the problem and what is allowed, and no MLflow run left behind.

The cases are independent processes, so they are launched together (as many at a time as there are
cores) when the module's first case asks for its result; each test then checks its own.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
MNIST_YAML = OmegaConf.load(REPO / "conf" / "dataset" / "mnist.yaml")
# The four official file names, and the sha256 of the decompressed training images (conf/dataset/mnist.yaml).
MNIST_FILES = [MNIST_YAML[part].name for part in ("train_images", "train_labels", "test_images", "test_labels")]
TRAIN_IMAGES_SHA256 = MNIST_YAML.train_images.sha256
# A small slice of real MNIST: enough for every check that needs the data to be read.
SLICE = ["dataset.train_limit=2000", "dataset.test_limit=500"]


def options_in(group: str) -> list[str]:
    """The options of a config group, from the files in conf/ (what the error must offer)."""
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


@dataclass
class Case:
    """One bad command line and the words its error must contain ({folder}: the case's own folder)."""

    args: list[str]
    expected: list[str]
    needs_data: bool = False
    # Builds extra args and env changes in the case's folder (files the case needs).
    setup: Callable[[Path], tuple[list[str], dict[str, str | None]]] | None = None
    # Checks on the case's folder afterwards.
    after: Callable[[Path], None] | None = None


def missing_data(folder: Path) -> tuple[list[str], dict[str, str | None]]:
    (folder / "empty").mkdir()
    (folder / "empty-cache").mkdir()
    args = [f"dataset.dir={folder}/empty", "dataset.download=false", f"dataset.cache_dir={folder}/empty-cache"]
    return args, {"MNIST_BENCH_DATA_DIR": None}


def corrupt_data(folder: Path) -> tuple[list[str], dict[str, str | None]]:
    mnist = folder / "data" / "mnist"
    mnist.mkdir(parents=True)
    for name in MNIST_FILES:  # right names, wrong bytes
        (mnist / name).write_bytes(b"\x00\x00\x08\x03 not the official MNIST file")
    (folder / "empty-cache").mkdir()
    args = [f"dataset.dir={folder}/data", "dataset.download=false", f"dataset.cache_dir={folder}/empty-cache"]
    return args, {"MNIST_BENCH_DATA_DIR": None}


def store_under_missing_folder(folder: Path) -> tuple[list[str], dict[str, str | None]]:
    return [f"tracking.uri=sqlite:///{folder}/no-such-folder/deeper/mlflow.db"], {}


def no_missing_folder_created(folder: Path) -> None:
    assert not (folder / "no-such-folder").exists()


NOT_A_DATABASE = b"not an SQLite database: " + bytes(range(256)) * 8


def store_that_is_not_a_database(folder: Path) -> tuple[list[str], dict[str, str | None]]:
    (folder / "broken.db").write_bytes(NOT_A_DATABASE)
    return [f"tracking.uri=sqlite:///{folder}/broken.db"], {}


def broken_store_left_as_it_was(folder: Path) -> None:
    assert (folder / "broken.db").read_bytes() == NOT_A_DATABASE


def lock_that_is_a_folder(folder: Path) -> tuple[list[str], dict[str, str | None]]:
    (folder / "mlflow.db.lock").mkdir()
    return [], {}


CASES: dict[str, Case] = {
    "unknown-backend": Case(["backend=mxnet"], ["backend/mxnet", *options_in("backend")]),
    "unknown-activation": Case(["activation=relu"], ["activation='relu'", "sigmoid", "softmax"]),
    "unknown-dataset": Case(["dataset=cifar10"], ["dataset/cifar10", *options_in("dataset")]),
    "unknown-device": Case(["device=tpu"], ["device/tpu", *options_in("device")]),
    "lr-negative": Case(["lr=-1"], ["lr=-1.0", "finite number > 0"]),
    "lr-zero": Case(["lr=0"], ["lr=0.0", "finite number > 0"]),
    "lr-nan": Case(["lr=nan"], ["lr=nan", "finite number > 0"]),
    "lr-inf": Case(["lr=inf"], ["lr=inf", "finite number > 0"]),
    "epochs-zero": Case(["epochs=0"], ["epochs=0", "integer from 1 to 100,000"]),
    "batch-size-zero": Case(["batch_size=0"], ["batch_size=0", "integer >= 1", "null"]),
    "batch-size-above-training-set": Case(
        ["batch_size=2001", *SLICE], ["batch_size=2001", "2000 images", "<= 2000", "null"], needs_data=True
    ),
    "updates-over-the-cap": Case(
        ["epochs=100000", "batch_size=1", *SLICE], ["epochs=100000 with 2,000 batches", "lower epochs"], needs_data=True
    ),
    "sweep-with-a-cell-over-the-update-cap": Case(
        ["-m", "epochs=1,100000", "batch_size=1", *SLICE],
        ["sweep job [epochs=100000", "200,000,000 updates", "lower epochs"],
        needs_data=True,
    ),
    "sweep-with-a-cell-over-the-training-set": Case(
        ["-m", "batch_size=100,2001", *SLICE], ["sweep job [batch_size=2001", "<= 2000"], needs_data=True
    ),
    "sweep-with-a-cell-over-the-test-split": Case(
        ["-m", "dataset.train_limit=2000", "dataset.test_limit=500,20000"],
        ["sweep job [dataset.train_limit=2000 dataset.test_limit=20000 ", "larger than the test split"],
        needs_data=True,
    ),
    "target-zero": Case(["target_accuracy=0"], ["target_accuracy=0.0", "(0, 1]"]),
    "target-above-one": Case(["target_accuracy=1.5"], ["target_accuracy=1.5", "(0, 1]"]),
    "unknown-key": Case(["+unknown=1"], ["unknown key 'unknown'", "allowed at the top level", "lr", "epochs"]),
    "unknown-nested-key": Case(["+dataset.foo=1"], ["unknown key 'dataset.foo'", "allowed in dataset", "train_limit"]),
    "experiment-empty": Case(["tracking.experiment=''"], ["tracking.experiment=''", "not empty"]),
    "patience-zero": Case(["tracking.patience_s=0"], ["tracking.patience_s=0.0", "seconds from 1 to 3600"]),
    "store-not-a-database": Case(
        [],
        ["tracking store sqlite:///{folder}/broken.db cannot be opened", "file is not a database", "tracking.uri="],
        setup=store_that_is_not_a_database,
        after=broken_store_left_as_it_was,
    ),
    "store-lock-a-folder": Case(
        [], ["lock file {folder}/mlflow.db.lock is a folder", "rmdir"], setup=lock_that_is_a_folder
    ),
    "sweep-store-lock-a-folder": Case(
        ["-m", "lr=0.1,0.2"], ["lock file {folder}/mlflow.db.lock is a folder", "rmdir"], setup=lock_that_is_a_folder
    ),
    "store-unknown-scheme": Case(["tracking.uri=garbage://x"], ["tracking store garbage://x cannot be opened"]),
    "numpy-on-gpu": Case(["device=gpu", "backend=numpy"], ["device=gpu", "backend=numpy", "tf or keras"]),
    "unreachable-server": Case(
        ["tracking.uri=http://127.0.0.1:9"], ["http://127.0.0.1:9", "unreachable", "tracking.uri"]
    ),
    "store-folder-missing": Case(
        [],
        ["{folder}/no-such-folder/deeper", "does not exist", "tracking.uri"],
        setup=store_under_missing_folder,
        after=no_missing_folder_created,
    ),
    "data-missing": Case(
        [],
        # every place it looked, and how to fix it
        ["mnist not found", "{folder}/empty/mnist", "{folder}/empty (", "{folder}/empty-cache/mnist", "dataset.dir"],
        setup=missing_data,
    ),
    "data-corrupt": Case(
        [],
        [f"{{folder}}/data/mnist/{MNIST_FILES[0]}", f"expected {TRAIN_IMAGES_SHA256}", "corrupt"],
        setup=corrupt_data,
    ),
    "sweep-with-a-bad-cell": Case(["-m", "lr=0.1,-1"], ["lr=-1", "lr=-1.0 is not allowed", "finite number > 0"]),
    "misspelt-command": Case(["reprot"], ["unknown command 'reprot'", "did you mean 'report'?", "key=value"]),
    "setting-as-an-option": Case(["--epochs", "3"], ["--epochs is not an option", "write epochs=3"]),
}


@dataclass
class Launched:
    folder: Path
    store_uri: str  # the tracking URI the command was given
    args: list[str]
    result: Future


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory, run_cli, make_store, hydra_args) -> dict[str, Launched]:
    """Every selected case started (as many at a time as there are cores); each test waits for its own."""
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec") and "name" in item.callspec.params
    }
    pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    cases = {}
    for name, case in CASES.items():
        if name not in selected or (case.needs_data and not os.environ.get("MNIST_BENCH_DATA_DIR")):
            continue
        folder = tmp_path_factory.mktemp(name)
        extra, env = case.setup(folder) if case.setup else ([], {})
        args = [*case.args, *extra]
        given = [a.removeprefix("tracking.uri=") for a in args if a.startswith("tracking.uri=")]
        if given:
            uri = given[-1]
        else:  # an existing store, so that "no run" is checked in a store the command could have written to
            uri = make_store(folder).uri
            args.append(f"tracking.uri={uri}")
        args += hydra_args(folder)
        cases[name] = Launched(folder, uri, args, pool.submit(run_cli, args, folder, env))
    yield cases
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("name", CASES)
def test_bad_input_exits_2_with_one_line_and_no_run(name: str, launched, runs_of, request) -> None:
    case = CASES[name]
    if case.needs_data:
        request.getfixturevalue("mnist_dir")  # skips without real MNIST
    job = launched[name]
    proc: subprocess.CompletedProcess = job.result.result()
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"args {job.args}\nstdout {proc.stdout[-3000:]}\nstderr {proc.stderr[-3000:]}"
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mnist-bench: error: ")
    for part in (p.replace("{folder}", str(job.folder)) for p in case.expected):
        assert part in lines[0], f"{part!r} missing from {lines[0]!r}"
    if job.store_uri.startswith("sqlite:///"):
        assert runs_of(job.store_uri) == []
    if job.store_uri != f"sqlite:///{job.folder}/mlflow.db":
        assert not (job.folder / "mlflow.db").exists()  # no store was made in the launch folder instead
    assert not (job.folder / "mlruns").exists()  # no artifact was written either
    if case.after:
        case.after(job.folder)


def test_a_store_in_an_unwritable_folder_exits_2(unwritable_folder: Path, tmp_path: Path, run_cli, hydra_args) -> None:
    uri = f"sqlite:///{unwritable_folder}/mlflow.db"
    for sweep in ([], ["-m", "lr=0.1,0.2"]):
        proc = run_cli([*sweep, f"tracking.uri={uri}", *hydra_args(tmp_path)], tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "not writable" in lines[0] and "tracking.uri" in lines[0], proc.stderr
    assert list(unwritable_folder.iterdir()) == []


def test_a_single_run_in_an_unwritable_folder_exits_2_in_one_line(unwritable_folder: Path, run_cli) -> None:
    """It ended in Hydra's traceback (OSError: [Errno 30] ... 'outputs'), exit 1."""
    proc = run_cli([], unwritable_folder)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"mnist-bench: error: cannot write {unwritable_folder}/outputs/"), line
    assert "hydra.run.dir=" in line and "tracking.uri=" in line, line


def test_a_single_run_on_a_full_disk_exits_2_and_leaves_nothing_half_written(
    full_disk: Path, tmp_path: Path, run_cli, hydra_args
) -> None:
    """It ended in a traceback ([Errno 28]) and left a 0-byte mlflow.db: Hydra's outputs and the store on the
    full disk, then the store alone."""
    proc = run_cli([], full_disk)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert f"cannot write {full_disk}/outputs/" in line and "No space left on device): free space" in line, line
    assert [p.name for p in full_disk.iterdir()] == ["filler"]  # Hydra's half-written config files went

    proc = run_cli(hydra_args(tmp_path), full_disk)
    assert proc.returncode == 2, proc.stderr
    [line] = [x for x in proc.stderr.strip().splitlines() if "Creating initial MLflow database" not in x]
    assert line == f"mnist-bench: error: the disk holding sqlite:///{full_disk}/mlflow.db is full: free space on it"
    assert [p.name for p in full_disk.iterdir()] == ["filler"]  # no 0-byte mlflow.db, no lock file


def test_cfg_job_prints_the_config_from_another_directory(tmp_path: Path, run_cli, hydra_args) -> None:
    proc = run_cli(["--cfg", "job", "lr=0.25", "activation=softmax", "backend=numpy", *hydra_args(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = OmegaConf.create(proc.stdout)
    assert printed.lr == 0.25 and printed.activation == "softmax"
    assert printed.backend.name == "numpy" and printed.device.name == "cpu"
    assert printed.dataset.train_images.sha256 == TRAIN_IMAGES_SHA256  # conf/ was found from elsewhere
    assert {"epochs", "batch_size", "seed", "tracking", "resume"} <= set(printed)
    assert "hydra" not in printed
    assert list(tmp_path.iterdir()) == []  # printing the config runs nothing and writes nothing


def test_help_lists_every_command_one_line_each(run_cli, tmp_path: Path) -> None:
    from mnist_bench.cli import SUBCOMMANDS

    done = run_cli(["--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(SUBCOMMANDS)
