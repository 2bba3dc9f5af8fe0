"""The Hydra application: ``python -m mnist_bench [overrides]`` runs one job; with ``-m``, Hydra hands the
overrides to the validating sweeper (``sweeper``), a Sweeper on Hydra's public plugin API. The job is
``job.job``; composing a sweep's cells is ``composition``; what only a launcher's config knows is
``launchers``. Here: what the app registers with Hydra, one config composed outside the app, and ``main``.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from mnist_bench import config, errors
from mnist_bench.config import Config, validate
from mnist_bench.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UserError

PROG = "mnist-bench"
# Hydra's own long flags (as its argument parser, hydra._internal.utils.get_args_parser, defines them).
HYDRA_FLAGS = {
    "--cfg", "--config-dir", "--config-name", "--config-path", "--experimental-rerun", "--help", "--hydra-help",
    "--info", "--multirun", "--package", "--resolve", "--run", "--shell-completion", "--version",
}  # fmt: skip


def register() -> None:
    """What the app's configs need before Hydra composes them: the schema, the sweeper, installed backends'
    configs, the launcher's resolver."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.mnist_bench_backends import MnistBenchBackends
    from hydra_plugins.mnist_bench_launcher import MnistBenchRayLauncher
    from hydra_plugins.mnist_bench_sweeper import MnistBenchSweeper

    config.register()
    # Hydra finds plugins by scanning the hydra_plugins namespace, which misses them in an editable install.
    Plugins.instance().register(MnistBenchSweeper)
    Plugins.instance().register(MnistBenchRayLauncher)
    Plugins.instance().register(MnistBenchBackends)
    # The GPUs a job asks Ray for (conf/hydra/launcher/ray.yaml): one for device=gpu, none otherwise.
    OmegaConf.register_new_resolver("mnist_bench.gpus", lambda device: int(device == "gpu"), replace=True)
    # conf/hydra/launcher/ray.yaml extends the Ray plugin's schema on purpose: Hydra's warning about it is noise.
    warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/ray' is validated against ConfigStore schema")


def compose(*overrides: str) -> Config:
    """One job's config exactly as ``python -m mnist_bench OVERRIDES`` composes and validates it from conf/:
    the one way a preset (``+experiment=fast``) is read, by runs and by bench alike. Outside a Hydra app."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from mnist_bench.paths import conf_dir

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
        return validate(hydra_compose("config", overrides=list(overrides)))


def check_flags(argv: Sequence[str]) -> None:
    """A ``--name`` that is not Hydra's is a setting written as an option: say how to write it."""
    for position, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if flag.startswith("--") and flag not in HYDRA_FLAGS:
            given = value if equals else next(iter(argv[position + 1 : position + 2]), "VALUE")
            raise UserError(f"{flag} is not an option: settings are key=value overrides, write {flag[2:]}={given}")


def _unwritten_output(err: OSError) -> str | None:
    """A write refused by the OS (a read-only folder, a full disk) as one line, once what Hydra had begun to
    write before the job (its output folder, the config files in it) is removed; None for other errors."""
    from mnist_bench.hydra_app import job

    output_dir = _hydra_output_dir(err)
    named = Path(err.filename).absolute() if isinstance(err.filename, str) else Path.cwd()
    line = errors.write_failure(err, output_dir or named)
    if line is None:
        return None
    if output_dir is not None and not job.started:  # no run exists: nothing of it stays either
        _remove_hydra_files(output_dir)
    return f"{line}, or set hydra.run.dir= (Hydra's output folder) and tracking.uri= (the store) elsewhere"


def _hydra_output_dir(err: BaseException) -> Path | None:
    """The job's output folder, where the error came from Hydra's run_job writing it (Hydra has reset its
    HydraConfig by the time the error arrives, so run_job's own frame is where the folder is still known)."""
    for frame, _ in traceback.walk_tb(err.__traceback__):
        if frame.f_code.co_name == "run_job" and isinstance(frame.f_locals.get("output_dir"), str):
            return Path(frame.f_locals["output_dir"]).absolute()
    return None


def _remove_hydra_files(output_dir: Path) -> None:
    """What Hydra writes into a job's output folder before the job starts, and the folders it made for it
    (outputs/DATE/TIME, under the launch folder) as far as they are left empty."""
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (output_dir / ".hydra" / name).unlink(missing_ok=True)
    for log in output_dir.glob("*.log"):
        if log.stat().st_size == 0:
            log.unlink()
    launch_dir = Path.cwd()
    for folder in (output_dir / ".hydra", output_dir, *output_dir.parents):
        if folder == launch_dir or not folder.is_dir() or any(folder.iterdir()):
            break
        folder.rmdir()
        if launch_dir not in folder.parents:  # outside the launch folder only Hydra's own folder goes
            break


def main(argv: list[str]) -> int:
    """Run the Hydra app with ``argv`` as its overrides and flags; returns the exit status."""
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from mnist_bench.hydra_app.job import job
    from mnist_bench.paths import conf_dir
    from mnist_bench.tracking import Terminated

    full_errors = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's multi-line report
    register()
    app = hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")(job)
    sys.argv = [sys.argv[0], *argv]
    try:
        check_flags(argv)
        app()
    except (KeyboardInterrupt, Terminated) as err:
        print(f"{PROG}: {'interrupted' if isinstance(err, KeyboardInterrupt) else err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, HydraException, OmegaConfBaseException) as err:  # ours; Hydra's for a bad override or file
        if full_errors:
            raise
        return errors.fail(PROG, err)
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else EXIT_FAILED
    except OSError as err:
        if full_errors or (line := _unwritten_output(err)) is None:
            raise
        errors.say(PROG, line)
        return EXIT_BAD_INPUT
    return EXIT_OK
