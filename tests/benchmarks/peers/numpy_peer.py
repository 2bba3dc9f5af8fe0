"""A same-work minibatch epoch in plain NumPy (see __init__.py), one BLAS thread as the caller sets it.

z = x W + b,  log p = z - max z - log sum e^(z - max z),  loss = -log p[label]
d loss / d z = (p - onehot) / B,  W -= lr x^T dz,  b -= lr sum dz
"""

from __future__ import annotations

import numpy as np


class Peer:
    def __init__(self, x: np.ndarray, labels: np.ndarray, batch_size: int, lr: float) -> None:
        self.x, self.labels, self.batch_size, self.lr = x, labels, batch_size, x.dtype.type(lr)
        self.one_hot = np.eye(10, dtype=x.dtype)[labels]
        self.weights, self.bias = np.zeros((x.shape[1], 10), x.dtype), np.zeros(10, x.dtype)

    def epoch(self, order: np.ndarray) -> tuple[float, float]:
        loss_sum, correct = 0.0, 0
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            x, y = self.x[rows], self.one_hot[rows]
            z = x @ self.weights + self.bias
            shifted = z - z.max(axis=1, keepdims=True)
            log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            loss_sum += float(-(log_p * y).sum())
            correct += int((z.argmax(axis=1) == self.labels[rows]).sum())
            dz = (np.exp(log_p) - y) / len(rows)
            self.weights -= self.lr * (dz.T @ x).T  # x^T dz, in the shape OpenBLAS runs fastest
            self.bias -= self.lr * dz.sum(axis=0)
        return loss_sum / len(order), correct / len(order)

    def parameters(self) -> tuple[np.ndarray, np.ndarray]:
        return self.weights, self.bias
