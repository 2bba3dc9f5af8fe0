"""A same-work minibatch epoch in JAX (see __init__.py): one jitted function per epoch, a lax.scan over its
full batches (one shape, as XLA needs) and one more step for a last, partial batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _loss(params: tuple[jax.Array, jax.Array], x: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    weights, bias = params
    z = x @ weights + bias
    losses = -jnp.take_along_axis(jax.nn.log_softmax(z), labels[:, None], axis=1)[:, 0]
    return losses.mean(), z


class Peer:
    def __init__(self, x: np.ndarray, labels: np.ndarray, batch_size: int, lr: float) -> None:
        self.x, self.labels, self.batch_size, self.lr = jnp.asarray(x), jnp.asarray(labels), batch_size, lr
        self.params = (jnp.zeros((x.shape[1], 10), x.dtype), jnp.zeros(10, x.dtype))
        self.train_epoch = jax.jit(self._train_epoch)

    def _step(self, params: tuple[jax.Array, jax.Array], rows: jax.Array):
        labels = self.labels[rows]
        (loss, z), grads = jax.value_and_grad(_loss, has_aux=True)(params, self.x[rows], labels)
        params = jax.tree.map(lambda param, grad: param - self.lr * grad, params, grads)
        return params, (loss * len(rows), (z.argmax(axis=1) == labels).sum())

    def _train_epoch(self, params: tuple[jax.Array, jax.Array], order: jax.Array):
        full_batches, rest = divmod(len(order), self.batch_size)
        batches = order[: full_batches * self.batch_size].reshape(full_batches, self.batch_size)
        params, (losses, hits) = jax.lax.scan(self._step, params, batches)
        loss_sum, correct = losses.sum(), hits.sum()
        if rest:
            params, (loss, hit) = self._step(params, order[full_batches * self.batch_size :])
            loss_sum, correct = loss_sum + loss, correct + hit
        return params, loss_sum, correct

    def epoch(self, order: np.ndarray) -> tuple[float, float]:
        self.params, loss_sum, correct = self.train_epoch(self.params, jnp.asarray(order))
        return float(loss_sum) / len(order), int(correct) / len(order)

    def parameters(self) -> tuple[np.ndarray, np.ndarray]:
        return tuple(np.asarray(a) for a in self.params)
