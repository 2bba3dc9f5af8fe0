"""A same-work minibatch epoch in PyTorch (see __init__.py), as most PyTorch loops are written: autograd's
``backward`` and an in-place update under ``no_grad``, the library's fused cross-entropy; the loss and the
rows predicted right summed on the tensor side and read once an epoch. ``compile=True`` (torch+compile's
peer) runs the forward and loss through ``torch.compile``. Threads: ``torch.set_num_threads``, process-wide,
as the backend set them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _forward(x: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor):
    z = x @ weights + bias
    return F.cross_entropy(z, labels), z


class Peer:
    def __init__(self, x: np.ndarray, labels: np.ndarray, batch_size: int, lr: float, compile: bool = False) -> None:
        self.x, self.labels = torch.from_numpy(x), torch.from_numpy(labels).long()
        self.batch_size, self.lr = batch_size, lr
        self.weights = torch.zeros((x.shape[1], 10), dtype=self.x.dtype, requires_grad=True)
        self.bias = torch.zeros(10, dtype=self.x.dtype, requires_grad=True)
        self.forward = torch.compile(_forward, dynamic=False) if compile else _forward

    def epoch(self, order: np.ndarray) -> tuple[float, float]:
        order = torch.from_numpy(order)
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.int64)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            labels = self.labels[rows]
            loss, z = self.forward(self.x[rows], labels, self.weights, self.bias)
            loss.backward()
            with torch.no_grad():
                self.weights.sub_(self.weights.grad, alpha=self.lr)
                self.bias.sub_(self.bias.grad, alpha=self.lr)
                self.weights.grad, self.bias.grad = None, None
                loss_sum += loss.double() * len(rows)
                correct += (z.argmax(dim=1) == labels).sum()
        return float(loss_sum) / len(order), int(correct) / len(order)

    def parameters(self) -> tuple[np.ndarray, np.ndarray]:
        return self.weights.detach().numpy(), self.bias.detach().numpy()
