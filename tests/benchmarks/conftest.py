"""Shared pieces of the benchmark suite: full MNIST, one BLAS/TF thread, and which saved baseline (if any)
absolute timings are compared with.

Run from the repository root, naming this folder (so that ``pytest_configure`` below runs before
pytest-benchmark reads its options):

    python -m pytest tests/benchmarks --benchmark-enable [--benchmark-json PATH] [--benchmark-compare-fail=min:25%]

Absolute timings only mean something on the machine that made them: ``--benchmark-compare-fail`` without
``--benchmark-compare`` compares with the baseline in results/benchmarks/ whose CPU (brand and core
count) is this one's, and is dropped, with a warning, when there is none.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from needs import missing

from mnist_bench import bench, data, paths
from mnist_bench.backends import base
from mnist_bench.config import DatasetConfig

REPO = Path(__file__).resolve().parents[2]
BASELINES = REPO / "results" / "benchmarks"
# One thread everywhere: on a shared machine a single-threaded epoch and its single-threaded roofline probe
# slow down together, while BLAS threads waiting on each other make multi-threaded ratios erratic.
THREADS = 1


def cpu_identity(machine_info: dict) -> tuple[str, int]:
    """What makes absolute timings comparable: the CPU's brand and how many cores the run saw."""
    cpu = machine_info.get("cpu", {})
    return cpu.get("brand_raw", "unknown"), int(cpu.get("count") or 0)


def baseline_for(identity: tuple[str, int], folder: Path = BASELINES) -> Path | None:
    """The newest pytest-benchmark JSON in ``folder`` made on a CPU with this identity."""
    found = []
    for path in folder.glob("*.json"):
        try:
            saved = json.loads(path.read_text())
            if cpu_identity(saved["machine_info"]) == identity:
                found.append((saved.get("datetime", ""), path))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return max(found)[1] if found else None


def baseline_name(identity: tuple[str, int]) -> str:
    brand, cores = identity
    return re.sub(r"[^a-z0-9]+", "-", brand.lower()).strip("-") + f"-{cores}cpu.json"


def pytest_configure(config: pytest.Config) -> None:
    """``--benchmark-compare-fail`` alone: compare with this CPU's baseline, or drop the comparison."""
    if not config.getoption("benchmark_compare_fail", None) or config.getoption("benchmark_compare", None):
        return
    identity = cpu_identity(config.hook.pytest_benchmark_generate_machine_info(config=config))
    baseline = baseline_for(identity)
    if baseline is not None:
        config.option.benchmark_compare = str(baseline)
        return
    config.option.benchmark_compare_fail = None
    save = BASELINES / baseline_name(identity)
    warnings.warn(
        f"no baseline for CPU {identity[0]!r} with {identity[1]} cores in {BASELINES}: absolute timings are not "
        f"compared (the ratio thresholds still are); save one with --benchmark-json={save}",
        stacklevel=1,
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without --benchmark-enable (pyproject's addopts disable benchmarks) the suite is skipped, not run
    once untimed: CI runs it on its own, timed."""
    if not config.getoption("benchmark_disable") or config.getoption("benchmark_enable"):
        return
    skip = pytest.mark.skip(reason="benchmark suite: run python -m pytest tests/benchmarks --benchmark-enable")
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mnist_spec() -> DatasetConfig:
    """conf/dataset/mnist.yaml as the harness composes it, never downloading."""
    return replace(bench.mnist_spec(), download=False)


@pytest.fixture(scope="session")
def mnist(mnist_spec: DatasetConfig) -> data.Dataset:
    try:
        return data.load(mnist_spec)
    except data.DataError as err:
        missing(f"full MNIST not found (export {paths.DATA_DIR_ENV}=<the folder holding mnist/>): {err}")


@pytest.fixture(scope="session")
def train_data(mnist: data.Dataset) -> base.TrainData:
    """float32 pixels in [0, 1]: what every benchmarked epoch trains on."""
    from mnist_bench.config import Config

    return base.prepare(mnist.x_train, mnist.y_train, mnist.x_test, mnist.y_test, Config().spec())


@pytest.fixture(scope="session")
def source_dir(mnist_spec: DatasetConfig) -> str:
    """The folder with the official gzip files, for the cold-decode benchmark."""
    folder = os.environ.get(paths.DATA_DIR_ENV)
    if not folder:
        missing(f"cold decoding needs the gzip files: export {paths.DATA_DIR_ENV}=<the folder holding mnist/>")
    return folder
