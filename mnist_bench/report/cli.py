"""``mnist-bench report``: select a sweep (and --filter its runs), render its report and write it to a
folder, logged to the sweep's parent run under ``report/``."""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from mlflow.exceptions import MlflowException

from mnist_bench import atomic, tracking
from mnist_bench.errors import EXIT_FAILED, EXIT_OK, ArgumentParser, run_tool, say, write_failure
from mnist_bench.report.document import render
from mnist_bench.report.reading import ReportError, Selection, select

PROG = "mnist-bench report"


REPORTS_DIR = "reports"  # under the current directory; git-ignored in this repository (results/ holds examples)


def _filter(text: str) -> tuple[str, str]:
    """One --filter value split at its first "=" (a value may hold more of them)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. --filter lr=0.1)")
    return key.strip(), value.strip()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line; a usage error raises ReportError (one line, exit 2) like every other bad input."""
    parser = ArgumentParser(prog=PROG, description="Report one sweep's runs from MLflow: Markdown, HTML, CSV, plots.")
    tracking.add_store_options(parser)
    parser.add_argument("--sweep", default="latest", help="parent run id, sweep name, or latest (default)")
    parser.add_argument(
        "--filter",
        dest="filters",
        action="append",
        default=[],
        type=_filter,
        metavar="KEY=VALUE",
        help="keep child runs whose param KEY equals VALUE (numbers compared as numbers); repeatable",
    )
    parser.add_argument(
        "--out", type=Path, help=f"default: {REPORTS_DIR}/<sweep>/ ({REPORTS_DIR}/<sweep>/filtered/<filters>/)"
    )
    return parser.parse_args(argv)


SLUG_MAX = 100  # characters of a folder name made from a sweep's name or filters (file systems allow 255 bytes)


def _slug(text: str) -> str:
    """Text made safe as one path component (sweep names and filters go into folder names); a long one is cut,
    with a hash of the whole so that two long names stay two folders."""
    slug = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", text).strip("_") or "_"
    if len(slug) <= SLUG_MAX:
        return slug
    return f"{slug[: SLUG_MAX - 13]}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def destinations(sel: Selection, out: Path | None) -> tuple[Path, str]:
    """The local folder and the parent run's artifact folder: report/ for the whole sweep, and
    report/filtered/<filters>/ for a filtered one, so that it never overwrites the full report."""
    sub = "filtered/" + _slug(",".join(f"{key}={value}" for key, value in sel.filters)) if sel.filters else ""
    return out or Path(REPORTS_DIR) / _slug(sel.name) / sub, f"report/{sub}".rstrip("/")


def main(argv: Sequence[str] | None = None) -> int:
    """Write the report and log it to the sweep's parent run; 2 with one line on stderr when there is nothing
    (valid) to report, 1 when the files were written but could not be logged."""
    return run_tool(PROG, lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    client, sel = select(args)
    files = render(sel)
    folder, artifact_path = destinations(sel, args.out)
    try:
        atomic.write_files(folder, files)
    except OSError as err:  # a full disk, a folder it cannot write, --out naming a file
        why = write_failure(err, f"the report to {folder}") or f"cannot write the report to {folder} ({err})"
        raise ReportError(f"{why} (or choose another --out)") from None
    try:
        for name in files:
            client.log_artifact(sel.parent.info.run_id, str(folder / name), artifact_path)
    except (MlflowException, OSError) as err:
        why = write_failure(err, "the run's artifacts") or tracking.error_line(err)
        say(PROG, f"wrote {folder} but could not log it to run {sel.parent.info.run_id}: {why}")
        return EXIT_FAILED
    print(
        f"report of sweep {sel.name}: {folder / 'report.html'} (open it in a browser; report.md beside it; "
        f"{len(sel.runs)} runs; also {artifact_path}/ of run {sel.parent.info.run_id})"
    )
    return EXIT_OK
