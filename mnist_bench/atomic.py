"""Files written whole or not at all: a reader never sees half of one, and nothing half-written is left."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
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
