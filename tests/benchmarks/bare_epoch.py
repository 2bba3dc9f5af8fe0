"""The yardstick for what the harness costs: a bare script that reads the four MNIST IDX .gz files and trains
one epoch of the same model a one-epoch run trains (softmax, batch 256, lr 0.5, zero init), with NumPy
alone: no Hydra, no MLflow, no cache, no checks.

    python tests/benchmarks/bare_epoch.py FOLDER_WITH_THE_GZ_FILES
"""

import gzip
import sys
from pathlib import Path

import numpy as np


def idx(path: Path) -> np.ndarray:
    """An IDX file's array: a magic number whose last byte is the rank, the dimensions, then uint8 data."""
    raw = gzip.decompress(path.read_bytes())
    rank = raw[3]
    shape = np.frombuffer(raw, ">u4", count=rank, offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(shape)


def main(folder: Path) -> None:
    x_train = idx(folder / "train-images-idx3-ubyte.gz").reshape(60000, -1).astype(np.float32) / 255
    y_train = idx(folder / "train-labels-idx1-ubyte.gz").astype(np.int64)
    x_test = idx(folder / "t10k-images-idx3-ubyte.gz").reshape(10000, -1).astype(np.float32) / 255
    y_test = idx(folder / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    weights, bias = np.zeros((784, 10), np.float32), np.zeros(10, np.float32)
    one_hot = np.eye(10, dtype=np.float32)[y_train]
    for start in range(0, len(x_train), 256):
        x, y = x_train[start : start + 256], one_hot[start : start + 256]
        z = x @ weights + bias
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        weights -= 0.5 * x.T @ (p - y) / len(x)
        bias -= 0.5 * (p - y).mean(axis=0)
    print(f"test accuracy {((x_test @ weights + bias).argmax(axis=1) == y_test).mean():.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
