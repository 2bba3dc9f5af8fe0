"""A same-work minibatch epoch in TensorFlow (see __init__.py): one tf.function per epoch, optionally
XLA-compiled, its batch loop in the graph. Full batches share one shape (what XLA needs); a last, partial
batch runs once after them."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


class Peer:
    def __init__(self, x: np.ndarray, labels: np.ndarray, batch_size: int, lr: float, xla: bool = False):
        self.x, self.labels, self.batch_size, self.lr = tf.constant(x), tf.constant(labels), batch_size, lr
        self.weights = tf.Variable(tf.zeros((x.shape[1], 10), x.dtype))
        self.bias = tf.Variable(tf.zeros(10, x.dtype))
        self.train_epoch = tf.function(self._train_epoch, jit_compile=xla)

    def _step(self, rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, labels = tf.gather(self.x, rows), tf.gather(self.labels, rows)
        with tf.GradientTape() as tape:
            z = x @ self.weights + self.bias
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, z)
            loss = tf.reduce_mean(losses)
        grad_w, grad_b = tape.gradient(loss, [self.weights, self.bias])
        self.weights.assign_sub(self.lr * grad_w)
        self.bias.assign_sub(self.lr * grad_b)
        hits = tf.equal(tf.argmax(z, axis=1), labels)
        return tf.reduce_sum(losses), tf.reduce_sum(tf.cast(hits, tf.int32))

    def _train_epoch(self, order: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        full_batches, rest = divmod(order.shape[0], self.batch_size)
        loss_sum, correct = tf.constant(0.0, self.x.dtype), tf.constant(0)
        for step in tf.range(full_batches):
            step_loss, step_correct = self._step(tf.slice(order, [step * self.batch_size], [self.batch_size]))
            loss_sum += step_loss
            correct += step_correct
        if rest:
            step_loss, step_correct = self._step(order[full_batches * self.batch_size :])
            loss_sum += step_loss
            correct += step_correct
        return loss_sum, correct

    def epoch(self, order: np.ndarray) -> tuple[float, float]:
        loss_sum, correct = self.train_epoch(tf.constant(order))
        return float(loss_sum) / len(order), int(correct) / len(order)

    def parameters(self) -> tuple[np.ndarray, np.ndarray]:
        return self.weights.numpy(), self.bias.numpy()
