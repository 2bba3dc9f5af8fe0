"""One error contract for every entry point (run, sweep, report, check, reap, roofline, bench, server).

A failure the user can fix is a ``UserError``: its message names what is wrong and what to do, on one
line. Every tool prints it as ``mnist-bench <tool>: error: <message>`` and exits ``EXIT_BAD_INPUT``;
a sweep with failed or missing cells, or a check that finds a breach, exits ``EXIT_FAILED``.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable
from typing import NoReturn

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class UserError(Exception):
    """Bad input or environment: one line that names the problem and the fix, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one UserError line instead of usage text plus a message."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)


def one_line(err: BaseException) -> str:
    """The message on one line: multi-line messages (Hydra's, OmegaConf's) folded, option lists joined."""
    text, options = [], []
    for line in str(err).splitlines():
        if line.startswith("Config search path"):
            break
        if line.startswith("\t"):
            options.append(line.strip())
        elif line.strip() and not line.strip().startswith(("full_key:", "object_type=", "reference_type=")):
            text.append(line.strip())
    message = " ".join(text) or type(err).__name__
    if options:
        message = f"{message} {', '.join(options)}"
    cause = err.__cause__
    if type(err).__module__.startswith("hydra.") and cause is not None and str(cause).strip():
        message = f"{message} ({str(cause).splitlines()[0]})"  # Hydra wraps the error that says what is wrong
    return message


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.EEXIST)


def write_failure(err: BaseException, where: object) -> str | None:
    """A write the OS refused (a full disk, a read-only or forbidden folder, a folder where a file goes) as
    one line naming ``where`` (what was being written) and what to do; None for any other error."""
    if not isinstance(err, OSError) or err.errno not in (*_DISK_FULL, *_NOT_WRITABLE):
        return None
    fix = "free space on its disk" if err.errno in _DISK_FULL else "choose a place you can write"
    return f"cannot write {where} ({err.strerror}): {fix}"


def say(prog: str, message: str) -> None:
    """Print an error the one way every tool prints one: ``PROG: error: MESSAGE`` on stderr."""
    print(f"{prog}: error: {message}", file=sys.stderr)


def fail(prog: str, err: BaseException) -> int:
    """Print a user error as ``say`` does; returns the exit status for bad input."""
    say(prog, one_line(err))
    return EXIT_BAD_INPUT


def run_tool(prog: str, body: Callable[[], int]) -> int:
    """A tool's main: its body's exit status, a UserError as one line and exit 2, Ctrl-C as exit 130."""
    try:
        return body()
    except UserError as err:
        return fail(prog, err)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
