"""The config tree ships inside the wheel: an installed copy runs from any directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


@pytest.mark.slow
def test_installed_wheel_finds_its_configs_from_another_directory(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # The venv sees this interpreter's packages, so only mnist-bench itself is installed (no downloads).
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(REPO)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [python, "-m", "mnist_bench", "+experiment=modern", "dataset=fashion_mnist", "--cfg", "job"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert (
        "site-packages"
        in subprocess.run(
            [python, "-c", "import mnist_bench; print(mnist_bench.__file__)"],
            cwd=elsewhere,
            capture_output=True,
            text=True,
        ).stdout
    )  # the installed copy, not this checkout
    assert "name: fashion_mnist" in done.stdout and "lr_schedule: cosine" in done.stdout
