"""Loading full MNIST: decoding the gzip files into an empty cache, and memory-mapping the cached arrays.
The second is what every run after the first pays; ``check`` holds it to a small fraction of the first."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from mnist_bench import data
from mnist_bench.config import DatasetConfig


def test_load_cold_decode(benchmark, mnist_spec: DatasetConfig, source_dir: str, tmp_path: Path) -> None:
    spec = replace(mnist_spec, dir=source_dir)
    cache = tmp_path / "cache"

    def empty_cache() -> tuple[tuple[DatasetConfig], dict]:
        shutil.rmtree(cache, ignore_errors=True)
        return (replace(spec, cache_dir=str(cache)),), {}

    dataset = benchmark.pedantic(data.load, setup=empty_cache, warmup_rounds=1, rounds=3)
    assert dataset.source != "cache" and len(dataset.x_train) == 60000


def test_load_cached(benchmark, mnist_spec: DatasetConfig, source_dir: str, tmp_path: Path) -> None:
    spec = replace(mnist_spec, dir=source_dir, cache_dir=str(tmp_path / "cache"))
    data.load(spec)  # fills the cache
    dataset = benchmark.pedantic(data.load, args=(spec,), warmup_rounds=2, rounds=20)
    assert dataset.source == "cache"
