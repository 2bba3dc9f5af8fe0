"""Files written whole or not at all: a reader never sees half of one, and nothing half-written is left."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """A temp file beside ``target`` that atomically replaces it if the block succeeds, else is deleted.

    Unique temp names plus os.replace make concurrent writers of the same file safe. The temp name
    keeps target's suffix, since np.save appends ".npy" to a name without it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these files are for reading
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write(path: Path, content: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(content)


def write_files(folder: Path, files: Mapping[str, bytes]) -> None:
    """All of ``files`` in ``folder``, or none of them and no folder made for them: they are written into a
    temp folder beside it, which becomes ``folder`` (or whose files replace their namesakes in an existing
    ``folder``) only once every one is whole. A full disk left a report folder holding only report.md."""
    made = list(itertools.takewhile(lambda path: not path.exists(), [folder, *folder.parents]))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        for name, content in files.items():
            (staging / name).write_bytes(content)
        staging.chmod(0o755)  # mkdtemp makes it private; a report is for reading
        if folder in made:
            staging.rename(folder)
        else:
            for name in files:
                os.replace(staging / name, folder / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in made[1:]:  # the folders made for it, innermost first, as far as they are empty
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
