"""The quick gate: the sweeps the thresholds file lists, run into a store of their own before they are checked."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from mnist_bench import backends, paths, tracking
from mnist_bench.check.thresholds import CheckError, GateSweep
from mnist_bench.errors import EXIT_BAD_INPUT


def run_gate(gate: list[GateSweep], workdir: Path) -> tuple[str, list[str]]:
    """Run the gate's sweeps into a new store in ``workdir``; returns its URI and the sweeps that ran.

    The gate's processes get a roofline cache of their own, so the roofline its runs are held to is measured
    during the gate, under the same load as their epochs; the dataset cache stays the usual one.
    """
    uri = tracking.sqlite_uri((workdir / "mlflow.db").resolve())
    env = {**os.environ, paths.CACHE_DIR_ENV: str(workdir / "cache")}
    data_cache = paths.cache_dir()  # where data.load would keep it without the override above
    ran = []
    for entry in gate:
        usable = [b for b in entry.backends if not backends.unavailable(b)]
        for name in sorted(set(entry.backends) - set(usable)):
            print(f"gate {entry.name}: without {name}: {backends.unavailable(name)}", flush=True)
        if not usable:
            continue
        command = [
            sys.executable, "-m", "mnist_bench", "-m",
            f"backend={','.join(dict.fromkeys(backends.split_label(label)[0] for label in usable))}", *entry.overrides,
            f"sweep_name={entry.name}", f"tracking.uri={uri}", f"hydra.sweep.dir={workdir / entry.name}",
            f"dataset.cache_dir={data_cache}", "progress=none",
        ]  # fmt: skip
        print(f"gate {entry.name}: {shlex.join(command[1:])}", flush=True)
        status = subprocess.run(command, env=env, check=False).returncode
        if status == EXIT_BAD_INPUT:
            raise CheckError(f"gate sweep {entry.name}: python -m mnist_bench rejected its overrides (exit 2)")
        ran.append(entry.name)  # a sweep with failed cells still ran: their thresholds show "no data"
    if not ran:
        raise CheckError("the gate ran no sweep: no backend it names is available here")
    return uri, ran
