"""Find, download, verify, decode and cache the four IDX files of an MNIST-like dataset.

Every byte that reaches a model is checked against the sha256 in the dataset's config, so a
run's numbers never come from a truncated download or a look-alike dataset. Decoded arrays are
cached under those official hashes, and each is checked against its hash again when it is read back:
a second load is four memory maps and a sha256 instead of a gunzip, and an altered cache is never used.
"""

from __future__ import annotations

import ctypes
import functools
import gzip
import hashlib
import http.client
import logging
import math
import mmap
import os
import shutil
import struct
import sys
import urllib.parse
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_bench import atomic
from mnist_bench.config import DatasetConfig, IdxFile
from mnist_bench.errors import UserError
from mnist_bench.paths import DATA_DIR_ENV, cache_dir

log = logging.getLogger(__name__)

# Where Debian's dataset packages install, e.g. dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist.
SYSTEM_ROOTS: tuple[str, ...] = ("/usr/share/datasets",)
DEBIAN_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}
DOWNLOAD_TIMEOUT_S = 30
# Plain http is only for a test server on this machine; anything else must be https.
_LOCAL_HOSTS = ("127.0.0.1", "localhost")
_PARTS = ("train_images", "train_labels", "test_images", "test_labels")
_REPLACE_HINT = "replace it with an intact copy of the official file (or delete it to download it again)"


class DataError(UserError):
    """A dataset that cannot be found or trusted; the message is one line naming the place and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class _ChecksumError(DataError):
    """Content that is not the expected file: corrupt, or a file of another dataset."""


@dataclass(frozen=True)
class Dataset:
    """The decoded arrays (images flattened to rows of pixels) and where they were found."""

    name: str
    x_train: np.ndarray  # uint8 (n_train, rows*cols)
    y_train: np.ndarray  # uint8 (n_train,)
    x_test: np.ndarray
    y_test: np.ndarray
    source: str  # a folder, "cache", or the mirror(s) downloaded from


def load(spec: DatasetConfig) -> Dataset:
    """The dataset from the decoded-array cache, else from the first place holding verified files."""
    cache = cache_dir(spec.cache_dir)
    arrays = _load_cached(spec, cache)
    source = "cache"
    if arrays is None:
        arrays, source = _load_sources(spec, cache)
        _check_splits(spec, arrays, source)
        for part, array in zip(_PARTS, arrays, strict=True):
            _save_array(_array_path(cache, _idx(spec, part)), array)
    x_train, y_train, x_test, y_test = (array.reshape(len(array), -1) if array.ndim > 1 else array for array in arrays)
    x_train, y_train = _limit(spec, "train", x_train, y_train, spec.train_limit)
    x_test, y_test = _limit(spec, "test", x_test, y_test, spec.test_limit)
    return Dataset(spec.name, x_train, y_train, x_test, y_test, source)


CAST_ROWS = 4096  # images cast at a time: 3 MB of uint8 MNIST


def cast(images: np.ndarray, dtype: str) -> np.ndarray:
    """``images`` as a new ``dtype`` array, cast a block of rows at a time.

    The cached arrays are memory-mapped, and every page a cast reads stays resident until it is unmapped: a
    plain ``astype`` held MNIST's 47 MB of uint8 pixels beside their float32 copy, the peak of a run's memory.
    Each block's pages are handed back once it is cast (the kernel re-reads them from the file if they are
    touched again), so the peak is the cast array's.
    """
    out = np.empty(images.shape, dtype)
    for start in range(0, len(images), CAST_ROWS):
        out[start : start + CAST_ROWS] = images[start : start + CAST_ROWS]
        if isinstance(images, np.memmap) and images.mode == "r":
            _drop_pages(images[start : start + CAST_ROWS])
    return out


def _drop_pages(block: np.ndarray) -> None:
    """Unmaps the whole pages under a block of a read-only file mapping (madvise DONTNEED; Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    page = mmap.PAGESIZE
    start = -(-block.ctypes.data // page) * page
    end = (block.ctypes.data + block.nbytes) // page * page
    if end > start:
        _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), mmap.MADV_DONTNEED)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _idx(spec: DatasetConfig, part: str) -> IdxFile:
    return getattr(spec, part)


def _array_path(cache: Path, idx: IdxFile) -> Path:
    # Keyed by the official hash: an entry can only ever be written from verified content.
    return cache / "arrays" / f"{idx.sha256}.npy"


def _load_cached(spec: DatasetConfig, cache: Path) -> list[np.ndarray] | None:
    """The four arrays saved by an earlier load, or None; stale entries are deleted so they get rebuilt."""
    paths = [_array_path(cache, _idx(spec, part)) for part in _PARTS]
    arrays = [
        _load_array(path, _idx(spec, part), part.endswith("images")) for path, part in zip(paths, _PARTS, strict=True)
    ]
    if any(array is None for array in arrays):
        return None
    x_train, y_train, x_test, y_test = arrays
    if len(x_train) != len(y_train) or len(x_test) != len(y_test) or x_train.shape[1:] != x_test.shape[1:]:
        for path in paths:
            path.unlink(missing_ok=True)
        return None
    return arrays


def _load_array(path: Path, idx: IdxFile, images: bool) -> np.ndarray | None:
    """The cached array of one IDX file if it is exactly what that file decodes to, else None (and it is deleted)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError):
        array = None
    plausible = isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.ndim == (3 if images else 1)
    if plausible and array.size and array.flags.c_contiguous:
        if _sha256_as_idx(array) == idx.sha256:
            return array
        log.warning("%s does not match the sha256 of %s: decoding it again from the IDX files", path, idx.name)
    path.unlink(missing_ok=True)
    return None


HASH_BYTES = 1 << 22  # hashed at a time: a cached image array's pages are handed back a block at a time


def _sha256_as_idx(array: np.ndarray) -> str:
    """The sha256 of the IDX file ``array`` was decoded from: its header, rebuilt from the shape, then its bytes.

    It is the official checksum the dataset's config holds, so a cache entry is checked against the very
    value its IDX file was (no second digest to keep beside it). sha256 is hashlib's fastest here (about
    1.8 GB/s with the CPU's SHA instructions, twice blake2b's). Pages are dropped as they are hashed, as
    ``cast`` does, so checking adds nothing to a run's peak memory.
    """
    digest = hashlib.sha256(_idx_header(array.shape))
    flat = array.reshape(-1)
    for start in range(0, flat.size, HASH_BYTES):
        block = flat[start : start + HASH_BYTES]
        digest.update(block)
        if isinstance(array, np.memmap):
            _drop_pages(block)
    return digest.hexdigest()


def _idx_header(shape: tuple[int, ...]) -> bytes:
    """Magic number 0x0000080N (unsigned bytes, N dimensions) and the N big-endian dimensions."""
    return struct.pack(f">I{len(shape)}I", 0x800 | len(shape), *shape)


def _save_array(target: Path, array: np.ndarray) -> None:
    """Best effort: a read-only cache only makes later loads slower, so it warns instead of failing."""
    if target.exists():
        return
    try:
        with atomic.replacing(target) as tmp:
            np.save(tmp, array, allow_pickle=False)
    except OSError as err:
        warnings.warn(f"could not cache decoded arrays in {target.parent}: {err}", stacklevel=3)


def _load_sources(spec: DatasetConfig, cache: Path) -> tuple[list[np.ndarray], str]:
    looked: list[str] = []
    for folder, bare_root in _candidates(spec, cache):
        arrays = _load_folder(spec, folder, bare_root, looked)
        if arrays is not None:
            return arrays, str(folder)
    folder = cache / spec.folder
    mirrors = _download(spec, folder, looked)
    arrays = _load_folder(spec, folder, False, looked)
    assert arrays is not None  # all four files are in the folder now
    return arrays, mirrors


def _candidates(spec: DatasetConfig, cache: Path) -> list[tuple[Path, bool]]:
    """Folders to look in, in order, each with whether it is a bare root that may hold another dataset."""
    found: dict[Path, bool] = {}
    for root in (spec.dir, os.environ.get(DATA_DIR_ENV)):
        if root:
            base = Path(root).expanduser()
            found.setdefault(base / spec.folder, False)
            found.setdefault(base, True)
    found.setdefault(cache / spec.folder, False)
    for root in SYSTEM_ROOTS:
        found.setdefault(Path(root) / spec.folder, False)
    return list(found.items())


def _find(folder: Path, name: str) -> Path | None:
    """The plain file if present (no gunzip needed), else the gzip'd one."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def _load_folder(spec: DatasetConfig, folder: Path, bare_root: bool, looked: list[str]) -> list[np.ndarray] | None:
    """The four verified arrays, or None (with the reason added to looked) if the folder lacks the dataset."""
    paths = [_find(folder, _idx(spec, part).name) for part in _PARTS]
    missing = [_idx(spec, part).name for part, path in zip(_PARTS, paths, strict=True) if path is None]
    if missing:
        looked.append(f"{folder} ({'missing ' + ', '.join(missing) if folder.is_dir() else 'no such folder'})")
        return None
    arrays, mismatches = [], []
    for part, path in zip(_PARTS, paths, strict=True):
        try:
            arrays.append(_read_verified(path, _idx(spec, part), part.endswith("images"), str(path)))
        except _ChecksumError as err:
            mismatches.append(err)
        except DataError as err:
            raise DataError(f"{err}; {_REPLACE_HINT}") from None
    if bare_root and len(mismatches) == len(_PARTS):
        looked.append(f"{folder} (holds another dataset: no file matches the sha256 of {spec.name})")
        return None
    if mismatches:
        raise DataError(f"{mismatches[0]}; it is corrupt or from another dataset: {_REPLACE_HINT}")
    return arrays


def _read_verified(path: Path, idx: IdxFile, images: bool, where: str) -> np.ndarray:
    """Decompress, check the sha256 of the content, then decode; errors name `where`."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{where}: cannot read it ({err})") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != idx.sha256:
        raise _ChecksumError(f"{where}: decompressed sha256 is {digest}, expected {idx.sha256} ({idx.name})")
    return _decode(raw, images, where)


def _decode(raw: bytes, images: bool, where: str) -> np.ndarray:
    """An IDX file of unsigned bytes in its own shape: images (n, rows, cols), or labels 0..9 (n,)."""
    ndim = 3 if images else 1
    kind = "images" if images else "labels"
    magic = 0x800 | ndim
    header = 4 + 4 * ndim
    if raw[:4] != magic.to_bytes(4, "big"):
        raise DataError(f"{where}: magic number 0x{raw[:4].hex()} is not 0x{magic:08x} (IDX {kind}, unsigned bytes)")
    if len(raw) < header:
        raise DataError(f"{where}: truncated IDX header ({len(raw)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if min(dims) < 1:
        raise DataError(f"{where}: IDX {kind} header has a zero dimension {dims}")
    size = header + math.prod(dims)
    if len(raw) != size:
        what = "truncated" if len(raw) < size else f"{len(raw) - size} trailing bytes"
        raise DataError(f"{where}: {what}: {len(raw)} bytes but its header {dims} needs exactly {size}")
    data = np.frombuffer(raw, np.uint8, offset=header)
    if not images and data.max() > 9:
        raise DataError(f"{where}: label {data.max()} is outside 0..9")
    return data.reshape(dims)


def _check_splits(spec: DatasetConfig, arrays: list[np.ndarray], source: str) -> None:
    x_train, y_train, x_test, y_test = arrays
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) != len(y):
            names = f"{_idx(spec, split + '_images').name} and {_idx(spec, split + '_labels').name}"
            raise DataError(f"{source}: {names} disagree: {len(x)} images but {len(y)} labels; {_REPLACE_HINT}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{source}: train images are {x_train.shape[1:]} pixels, test images {x_test.shape[1:]}")


def _limit(spec: DatasetConfig, split: str, x: np.ndarray, y: np.ndarray, n: int | None) -> tuple[np.ndarray, ...]:
    if n is None:
        return x, y
    if n > len(x):
        raise DataError(
            f"dataset.{split}_limit={n} is larger than the {split} split of {spec.name} ({len(x)} images): "
            f"use at most {len(x)} or null"
        )
    return x[:n], y[:n]


def _download(spec: DatasetConfig, folder: Path, looked: list[str]) -> str:
    """Fetch the files missing from folder; returns the mirror(s) used."""
    if not spec.download:
        raise _not_found(spec, looked, "download is disabled (dataset.download=false)")
    if not spec.mirrors:
        raise _not_found(spec, looked, "no mirrors to download from (dataset.mirrors is empty)")
    used = []
    for part in _PARTS:
        idx = _idx(spec, part)
        if _find(folder, idx.name) is None:
            used.append(_fetch(spec, idx, part.endswith("images"), folder / f"{idx.name}.gz", looked))
    return ", ".join(dict.fromkeys(used))


def _fetch(spec: DatasetConfig, idx: IdxFile, images: bool, target: Path, looked: list[str]) -> str:
    """Download one file from the first mirror serving the right content; nothing else is ever left at target."""
    failures = []
    for mirror in spec.mirrors:
        url = f"{mirror}{idx.name}.gz"
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOCAL_HOSTS):
            failures.append(f"{url}: refused (only https://, or http:// on 127.0.0.1/localhost)")
            continue
        try:
            with atomic.replacing(target) as tmp:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, tmp.open("wb") as out:
                    shutil.copyfileobj(response, out)
                _read_verified(tmp, idx, images, url)
            return mirror
        except DataError as err:
            failures.append(str(err))
        except (OSError, http.client.HTTPException) as err:
            failures.append(f"{url}: {err}")
    raise _not_found(spec, looked, "download failed: " + "; ".join(failures))


def _not_found(spec: DatasetConfig, looked: list[str], why: str) -> DataError:
    names = ", ".join(f"{_idx(spec, part).name}[.gz]" for part in _PARTS)
    package = DEBIAN_PACKAGES.get(spec.folder)
    apt = f", or run `apt-get install {package}`" if package else ""
    return DataError(
        f"{spec.name} not found: looked in {'; '.join(looked)}; {why}. Fix: set dataset.dir or {DATA_DIR_ENV} "
        f"to a folder holding {names} (or to its parent with a {spec.folder}/ folder){apt}, "
        f"or allow downloading (dataset.download=true) from a reachable https mirror"
    )
