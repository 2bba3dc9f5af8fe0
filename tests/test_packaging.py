"""The config tree ships inside the wheel: an installed copy runs from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


@pytest.mark.slow
def test_installed_wheel_finds_its_configs_from_another_directory(tmp_path: Path) -> None:
    # Build and install mnist-bench alone into a folder of its own, with this interpreter's pip and build tools
    # (the [dev] extra brings a setuptools that builds wheels): no nested virtualenv, which would be built on the
    # base interpreter rather than this one, and no download. Its dependencies come from this environment.
    site = tmp_path / "site"
    install = ["install", "--quiet", "--no-deps", "--no-build-isolation", "--target", site, REPO]
    subprocess.run(
        [sys.executable, "-m", "pip", *install],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import mnist_bench; print(mnist_bench.__file__)"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        env=env,
    )
    assert where.stdout.startswith(str(site) + os.sep), where.stderr  # the installed copy, not this checkout
    done = subprocess.run(
        [sys.executable, "-m", "mnist_bench", "+experiment=modern", "dataset=fashion_mnist", "--cfg", "job"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "name: fashion_mnist" in done.stdout and "lr_schedule: cosine" in done.stdout
