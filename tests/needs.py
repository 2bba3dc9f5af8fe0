"""What the tests need from outside the virtualenv, and how its absence is reported.

On a developer's machine a missing system requirement (the real MNIST, PostgreSQL, Debian's
Fashion-MNIST package) or optional extra skips the test, naming the one command that provides it.
In CI (``CI=true``), where ``.ci/run`` installs everything the README names, the same absence is a
failure: a green CI must never rest on tests that quietly did not run.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
from types import ModuleType
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DATA_DIR = os.environ.get("MNIST_BENCH_DATA_DIR")
NO_DATA = "real MNIST not available: export MNIST_BENCH_DATA_DIR=<the folder holding mnist/> (see README, Data)"
POSTGRESQL = "apt-get install postgresql"
FASHION_MNIST = "apt-get install dataset-fashion-mnist"


def missing(reason: str) -> NoReturn:
    """Skip for an absent requirement; in CI, fail instead."""
    if IN_CI:
        pytest.fail(f"CI lacks a test requirement: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def import_extra(name: str, extra: str) -> ModuleType:
    """Import an optional dependency, or report it missing with the extra that installs it.

    Only a truly absent package counts as missing: one that is installed but fails to import is a
    real error, and the test fails with it.
    """
    if importlib.util.find_spec(name) is None:
        missing(f"{name} is not installed: pip install -e '.[{extra}]'")
    return importlib.import_module(name)


NO_PID_NAMESPACE = "this machine allows no PID namespace here (unshare --pid --fork --mount-proc is refused)"


def pid_namespace_prefix(own_proc: bool = True) -> list[str] | None:
    """The command prefix that starts a process in a PID namespace of its own (as root, or through a user
    namespace), or None where neither is allowed: containers often refuse both. ``own_proc``: with a /proc of
    that namespace, as a container has; without, the process still sees this one's processes there."""
    for prefix in (["unshare"], ["unshare", "--user", "--map-root-user"]):
        command = [*prefix, "--pid", "--fork", *(["--mount-proc"] if own_proc else [])]
        try:
            if subprocess.run([*command, "true"], capture_output=True, timeout=30).returncode == 0:
                return command
        except (OSError, subprocess.SubprocessError):
            continue
    return None
