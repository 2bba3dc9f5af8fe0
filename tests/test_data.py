"""Tests for mnist_bench.data on tiny hand-made IDX files; the only network used is a server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
from needs import DATA_DIR, FASHION_MNIST, NO_DATA, missing

from mnist_bench import data, paths
from mnist_bench.config import DatasetConfig, IdxFile
from mnist_bench.data import DataError, load

REPO = Path(__file__).resolve().parents[1]
# Read before the autouse fixture hides it: where the real MNIST is (a parent of mnist/ or the folder).
NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
RNG = np.random.default_rng(0)
X_TRAIN = RNG.integers(0, 256, (5, 4, 4), dtype=np.uint8)
Y_TRAIN = np.array([0, 9, 3, 1, 7], dtype=np.uint8)
X_TEST = RNG.integers(0, 256, (3, 4, 4), dtype=np.uint8)
Y_TEST = np.array([2, 5, 8], dtype=np.uint8)


def idx(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000080N, N big-endian dimensions, the data."""
    return struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape) + array.tobytes()


GOOD = {
    "train_images": idx(X_TRAIN),
    "train_labels": idx(Y_TRAIN),
    "test_images": idx(X_TEST),
    "test_labels": idx(Y_TEST),
}
# The same format and names with other content: what a folder of another dataset looks like.
OTHER = {part: content[:-1] + bytes([content[-1] ^ 1]) for part, content in GOOD.items()}


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def make_spec(tmp_path: Path, files: dict[str, bytes] = GOOD, **kwargs: object) -> DatasetConfig:
    """A spec whose sha256s are those of `files`, caching in tmp_path, never downloading unless asked."""
    entries = {part: IdxFile(name=NAMES[part], sha256=sha(content)) for part, content in files.items()}
    options = {"name": "tiny", "folder": "tiny", "cache_dir": str(tmp_path / "cache"), "download": False}
    return DatasetConfig(**entries, **{**options, **kwargs})


def write(folder: Path, files: dict[str, bytes] = GOOD, gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part, content in files.items():
        if gz:
            (folder / f"{NAMES[part]}.gz").write_bytes(gzip.compress(content))
        else:
            (folder / NAMES[part]).write_bytes(content)
    return folder


def with_file(part: str, content: bytes) -> dict[str, bytes]:
    return {**GOOD, part: content}


def assert_tiny(ds: data.Dataset) -> None:
    np.testing.assert_array_equal(ds.x_train, X_TRAIN.reshape(5, 16))
    np.testing.assert_array_equal(ds.y_train, Y_TRAIN)
    np.testing.assert_array_equal(ds.x_test, X_TEST.reshape(3, 16))
    np.testing.assert_array_equal(ds.y_test, Y_TEST)
    for array in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        assert array.dtype == np.uint8 and array.flags.c_contiguous


def error_of(spec: DatasetConfig) -> str:
    with pytest.raises(DataError) as info:
        load(spec)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the real environment, home cache or /usr/share/datasets."""
    monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(paths.CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(data, "SYSTEM_ROOTS", (str(tmp_path / "system"),))


# --- decoding and verification -------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_loads_plain_and_gzip(tmp_path: Path, gz: bool) -> None:
    folder = write(tmp_path / "d", gz=gz)
    ds = load(make_spec(tmp_path, dir=str(folder)))
    assert_tiny(ds)
    assert ds.name == "tiny" and ds.source == str(folder)


def test_prefers_plain_over_gzip(tmp_path: Path) -> None:
    folder = write(tmp_path / "d")
    for name in NAMES.values():
        (folder / f"{name}.gz").write_bytes(b"not gzip at all")
    assert_tiny(load(make_spec(tmp_path, dir=str(folder))))


@pytest.mark.parametrize(
    ("part", "content", "expected"),
    [
        ("train_labels", idx(X_TRAIN), "magic number 0x00000803 is not 0x00000801"),
        ("train_images", b"\x00\x00\x0d\x03" + GOOD["train_images"][4:], "magic number 0x00000d03"),
        ("train_images", GOOD["train_images"][:-1], "truncated"),
        ("train_images", GOOD["train_images"][:10], "truncated IDX header"),
        ("test_labels", GOOD["test_labels"] + b"\x00\x00", "2 trailing bytes"),
        ("test_labels", idx(np.array([1, 10, 2], dtype=np.uint8)), "label 10 is outside 0..9"),
        ("test_images", idx(np.zeros((0, 4, 4), dtype=np.uint8)), "zero dimension"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_bad_format_names_the_file(tmp_path: Path, part: str, content: bytes, expected: str, gz: bool) -> None:
    files = with_file(part, content)  # the spec's sha256 matches, so the format check must catch it
    folder = write(tmp_path / "d", files, gz=gz)
    message = error_of(make_spec(tmp_path, files, dir=str(folder)))
    assert expected in message
    assert str(folder / NAMES[part]) in message


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    folder = write(tmp_path / "d", gz=True)
    path = folder / f"{NAMES['train_images']}.gz"
    path.write_bytes(path.read_bytes()[:-20])
    message = error_of(make_spec(tmp_path, dir=str(folder)))
    assert str(path) in message and "cannot read" in message


def test_image_and_label_counts_must_agree(tmp_path: Path) -> None:
    files = with_file("test_labels", idx(Y_TEST[:2]))
    folder = write(tmp_path / "d", files)
    message = error_of(make_spec(tmp_path, files, dir=str(folder)))
    assert "3 images but 2 labels" in message and NAMES["test_labels"] in message


def test_wrong_sha256_names_file_and_hashes(tmp_path: Path) -> None:
    folder = write(tmp_path / "d")
    spec = make_spec(tmp_path, dir=str(folder))
    spec.train_labels = IdxFile(NAMES["train_labels"], "0" * 64)
    message = error_of(spec)
    assert str(folder / NAMES["train_labels"]) in message
    assert "0" * 64 in message and sha(GOOD["train_labels"]) in message
    assert not (tmp_path / "cache" / "arrays").exists()  # nothing cached from an unverified set


# --- where the files are looked for ---------------------------------------------------------------


def test_look_up_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    places = [
        write(tmp_path / "dir"),
        write(tmp_path / "env", gz=True),
        write(tmp_path / "cache" / "tiny", gz=True),
        write(tmp_path / "system" / "tiny"),
    ]
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(places[1]))
    spec = make_spec(tmp_path, dir=str(places[0]))
    for place in places:
        shutil.rmtree(tmp_path / "cache" / "arrays", ignore_errors=True)
        ds = load(spec)
        assert ds.source == str(place)
        assert_tiny(ds)
        shutil.rmtree(place)


def test_cache_dir_from_env_then_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(tmp_path, cache_dir=None)
    write(tmp_path / "xdg" / "mnist-bench" / "tiny")
    assert load(spec).source == str(tmp_path / "xdg" / "mnist-bench" / "tiny")
    monkeypatch.setenv(paths.CACHE_DIR_ENV, str(tmp_path / "envcache"))
    write(tmp_path / "envcache" / "tiny", gz=True)
    assert load(spec).source == str(tmp_path / "envcache" / "tiny")
    assert load(spec).source == "cache"
    assert len(list((tmp_path / "envcache" / "arrays").glob("*.npy"))) == 4


def test_root_is_checked_as_parent_then_as_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = tmp_path / "datasets"
    write(parent / "tiny")
    write(parent, OTHER)  # the parent itself holds another dataset; <root>/tiny wins
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(parent))
    assert load(make_spec(tmp_path)).source == str(parent / "tiny")
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(parent / "tiny"))
    shutil.rmtree(tmp_path / "cache")
    assert load(make_spec(tmp_path)).source == str(parent / "tiny")


def test_root_holding_another_dataset_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = write(tmp_path / "other", OTHER)
    good = write(tmp_path / "good", gz=True)
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(good))
    assert load(make_spec(tmp_path, dir=str(other))).source == str(good)
    monkeypatch.delenv(paths.DATA_DIR_ENV)
    shutil.rmtree(tmp_path / "cache")
    message = error_of(make_spec(tmp_path, dir=str(other)))
    assert f"{other} (holds another dataset" in message


def test_wrong_files_in_dataset_folder_are_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = write(tmp_path / "root" / "tiny", OTHER)  # <root>/<folder> must hold this dataset
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(write(tmp_path / "good")))
    message = error_of(make_spec(tmp_path, dir=str(tmp_path / "root")))
    assert str(bad / NAMES["train_images"]) in message and sha(GOOD["train_images"]) in message


def test_one_wrong_file_in_a_root_is_an_error(tmp_path: Path) -> None:
    folder = write(tmp_path / "d", with_file("test_images", OTHER["test_images"]))
    message = error_of(make_spec(tmp_path, dir=str(folder)))
    assert str(folder / NAMES["test_images"]) in message and sha(GOOD["test_images"]) in message


def test_missing_everywhere_lists_every_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "partial", {"train_images": GOOD["train_images"]})
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "partial"))
    message = error_of(make_spec(tmp_path, dir=str(tmp_path / "nowhere")))
    places = [
        tmp_path / "nowhere" / "tiny",
        tmp_path / "nowhere",
        tmp_path / "partial" / "tiny",
        tmp_path / "partial",
        tmp_path / "cache" / "tiny",
        tmp_path / "system" / "tiny",
    ]
    positions = [message.index(f"{place} (") for place in places]
    assert positions == sorted(positions)
    assert f"missing {NAMES['train_labels']}" in message
    assert "dataset.download=false" in message and paths.DATA_DIR_ENV in message and "dataset.dir" in message
    assert "apt-get" not in message


def test_missing_fashion_mentions_debian_package(tmp_path: Path) -> None:
    message = error_of(make_spec(tmp_path, folder="fashion-mnist"))
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "system" / "fashion-mnist") in message


def test_download_without_mirrors(tmp_path: Path) -> None:
    assert "dataset.mirrors is empty" in error_of(make_spec(tmp_path, download=True))


# --- decoded-array cache --------------------------------------------------------------------------


def test_second_load_comes_from_cache(tmp_path: Path) -> None:
    folder = write(tmp_path / "d", gz=True)
    spec = make_spec(tmp_path, dir=str(folder))
    first = load(spec)
    shutil.rmtree(folder)  # the cache must not need the sources
    second = load(spec)
    assert first.source == str(folder) and second.source == "cache"
    assert_tiny(second)
    assert sorted(p.name for p in (tmp_path / "cache" / "arrays").iterdir()) == sorted(
        f"{sha(content)}.npy" for content in GOOD.values()
    )


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda p: p.write_bytes(b"garbage"),
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(p.read_bytes()[:-3]),
        lambda p: np.save(p, np.zeros((5, 16), dtype=np.float32)),
        lambda p: np.save(p, np.zeros(80, dtype=np.uint8)),
        lambda p: np.save(p, np.zeros((4, 4, 4), dtype=np.uint8)),  # row count disagrees with the labels
        lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),
    ],
    ids=["garbage", "empty", "truncated", "float", "1-d", "rows", "pickle"],
)
def test_stale_cache_entry_is_rebuilt(tmp_path: Path, corrupt: Callable[[Path], object]) -> None:
    folder = write(tmp_path / "d")
    spec = make_spec(tmp_path, dir=str(folder))
    load(spec)
    entry = tmp_path / "cache" / "arrays" / f"{sha(GOOD['train_images'])}.npy"
    corrupt(entry)
    ds = load(spec)
    assert ds.source == str(folder)
    assert_tiny(ds)
    np.testing.assert_array_equal(np.load(entry, allow_pickle=False), X_TRAIN)
    assert load(spec).source == "cache"


def test_tampered_cache_entry_is_decoded_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A cached array replaced by a plausible one (same shape and dtype, rows shuffled) is never used."""
    folder = write(tmp_path / "d")
    spec = make_spec(tmp_path, dir=str(folder))
    load(spec)
    entry = tmp_path / "cache" / "arrays" / f"{sha(GOOD['train_images'])}.npy"
    np.save(entry, X_TRAIN[::-1])
    ds = load(spec)
    assert ds.source == str(folder)
    assert_tiny(ds)
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == [
        f"{entry} does not match the sha256 of {NAMES['train_images']}: decoding it again from the IDX files"
    ]
    np.testing.assert_array_equal(np.load(entry), X_TRAIN)
    assert load(spec).source == "cache"


def test_concurrent_loads_share_the_cache(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, dir=str(write(tmp_path / "d", gz=True)))
    results: list[data.Dataset] = []
    threads = [threading.Thread(target=lambda: results.append(load(spec))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    for ds in results:
        assert_tiny(ds)
    assert sorted(p.suffix for p in (tmp_path / "cache" / "arrays").iterdir()) == [".npy"] * 4


def test_limits_slice_the_first_rows(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, dir=str(write(tmp_path / "d")), train_limit=2, test_limit=3)
    ds = load(spec)
    np.testing.assert_array_equal(ds.x_train, X_TRAIN.reshape(5, 16)[:2])
    np.testing.assert_array_equal(ds.y_train, Y_TRAIN[:2])
    assert ds.x_test.shape == (3, 16) and ds.y_test.shape == (3,)
    spec.train_limit = 6
    assert "dataset.train_limit=6 is larger than the train split of tiny (5 images)" in error_of(spec)


# --- download -------------------------------------------------------------------------------------


@pytest.fixture
def server(serve_loopback) -> tuple[str, list[str]]:
    """A 127.0.0.1 server with mirrors /good/, /corrupt/ (other content), /truncated/ (cut gzip); else 404."""
    routes: dict[str, bytes] = {}
    for part, content in GOOD.items():
        packed = gzip.compress(content)
        routes[f"/good/{NAMES[part]}.gz"] = packed
        routes[f"/corrupt/{NAMES[part]}.gz"] = gzip.compress(OTHER[part])
        routes[f"/truncated/{NAMES[part]}.gz"] = packed[: len(packed) // 2]
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            body = routes.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return serve_loopback(Handler), requests


def dead_mirror() -> str:
    """A 127.0.0.1 URL where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def cached_downloads(tmp_path: Path) -> list[str]:
    folder = tmp_path / "cache" / "tiny"
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_download_skips_bad_mirrors(tmp_path: Path, server: tuple[str, list[str]]) -> None:
    base, _ = server
    mirrors = [dead_mirror(), f"{base}/missing/", f"{base}/corrupt/", f"{base}/truncated/", f"{base}/good/"]
    ds = load(make_spec(tmp_path, download=True, mirrors=mirrors))
    assert_tiny(ds)
    assert ds.source == f"{base}/good/"
    assert cached_downloads(tmp_path) == sorted(f"{name}.gz" for name in NAMES.values())
    assert load(make_spec(tmp_path, download=True, mirrors=mirrors)).source == "cache"


def test_download_fetches_only_missing_files(tmp_path: Path, server: tuple[str, list[str]]) -> None:
    base, requests = server
    write(tmp_path / "cache" / "tiny", {part: GOOD[part] for part in ("train_images", "train_labels")}, gz=True)
    ds = load(make_spec(tmp_path, download=True, mirrors=[f"{base}/good/"]))
    assert_tiny(ds)
    assert sorted(requests) == [f"/good/{NAMES['test_images']}.gz", f"/good/{NAMES['test_labels']}.gz"]


def test_download_all_mirrors_fail(tmp_path: Path, server: tuple[str, list[str]]) -> None:
    base, _ = server
    mirrors = [dead_mirror(), f"{base}/missing/", f"{base}/corrupt/", f"{base}/truncated/"]
    message = error_of(make_spec(tmp_path, download=True, mirrors=mirrors))
    for mirror in mirrors:
        assert f"{mirror}{NAMES['train_images']}.gz" in message
    assert "Connection refused" in message and "404" in message and "sha256" in message and "cannot read" in message
    assert cached_downloads(tmp_path) == []  # no partial or wrong file, no temp file


def test_plain_http_elsewhere_is_refused_without_connecting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *args, **kwargs: calls.append(args))
    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: calls.append(args))
    mirrors = ["http://example.org/", "ftp://127.0.0.1/"]
    message = error_of(make_spec(tmp_path, download=True, mirrors=mirrors))
    assert f"http://example.org/{NAMES['train_images']}.gz: refused" in message
    assert f"ftp://127.0.0.1/{NAMES['train_images']}.gz: refused" in message
    assert calls == []


# --- the real MNIST -------------------------------------------------------------------------------


def test_real_mnist_and_cache_speed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    if not DATA_DIR:
        missing(NO_DATA)
    root = Path(DATA_DIR)
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(root))
    yaml = OmegaConf.load(REPO / "conf" / "dataset" / "mnist.yaml")
    spec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DatasetConfig), yaml))
    spec = dataclasses.replace(spec, cache_dir=str(tmp_path / "cache"), download=False)
    start = time.perf_counter()
    cold = load(spec)
    cold_s = time.perf_counter() - start
    assert cold.source in (str(root / "mnist"), str(root))
    assert cold.x_train.shape == (60000, 784) and cold.y_train.shape == (60000,)
    assert cold.x_test.shape == (10000, 784) and cold.y_test.shape == (10000,)
    warm_s = []
    for _ in range(3):
        start = time.perf_counter()
        warm = load(spec)
        warm_s.append(time.perf_counter() - start)
    assert warm.source == "cache"
    np.testing.assert_array_equal(warm.x_train, cold.x_train)
    np.testing.assert_array_equal(warm.y_test, cold.y_test)
    print(f"real MNIST: cold decode {cold_s:.3f} s, cached and checked load {min(warm_s) * 1000:.2f} ms")
    assert min(warm_s) * 3 <= cold_s  # the check hashes what the decode hashed, without the gunzip
    entry = Path(spec.cache_dir) / "arrays" / f"{spec.train_images.sha256}.npy"
    np.save(entry, np.random.default_rng(0).permutation(np.load(entry)))  # same shape, rows shuffled
    recovered = load(spec)
    assert recovered.source != "cache"
    np.testing.assert_array_equal(recovered.x_train, cold.x_train)


def test_fashion_mnist_from_debians_dataset_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dataset=fashion_mnist is found where `apt-get install dataset-fashion-mnist` puts it, even when
    MNIST_BENCH_DATA_DIR points at a folder of other datasets (it is passed over, not an error)."""
    from omegaconf import OmegaConf

    system = Path("/usr/share/datasets/fashion-mnist")
    if not system.is_dir():
        missing(f"{system} does not exist: {FASHION_MNIST}")
    monkeypatch.setattr(data, "SYSTEM_ROOTS", ("/usr/share/datasets",))
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(DATA_DIR or tmp_path))
    yaml = OmegaConf.load(REPO / "conf" / "dataset" / "fashion_mnist.yaml")
    spec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DatasetConfig), yaml))
    spec = dataclasses.replace(spec, cache_dir=str(tmp_path / "cache"), download=False)
    fashion = load(spec)
    assert fashion.source == str(system)
    assert fashion.x_train.shape == (60000, 784) and fashion.x_test.shape == (10000, 784)
    assert sorted(np.unique(fashion.y_test)) == list(range(10))


@pytest.mark.parametrize("rows", [1, data.CAST_ROWS - 1, data.CAST_ROWS, 3 * data.CAST_ROWS + 7])
@pytest.mark.parametrize("mapped", [True, False])
def test_cast_gives_astypes_values_and_leaves_a_mapped_source_readable(tmp_path: Path, rows: int, mapped: bool) -> None:
    """The cast hands back each block's pages of a memory-mapped cache as it goes: values must be astype's,
    and the source must still read back whole (the kernel re-reads dropped pages from the file)."""
    pixels = np.random.default_rng(rows).integers(0, 256, size=(rows, 784), dtype=np.uint8)
    np.save(tmp_path / "images.npy", pixels)
    source = np.load(tmp_path / "images.npy", mmap_mode="r" if mapped else None)
    assert isinstance(source, np.memmap) == mapped
    cast = data.cast(source, "float32")
    assert cast.dtype == np.float32
    np.testing.assert_array_equal(cast, pixels.astype(np.float32))
    np.testing.assert_array_equal(source, pixels)
