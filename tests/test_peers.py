"""The hand-written peers (tests/benchmarks/peers/) do the work their backends do: given the same batch order,
one of their epochs ends on the backend's weights and reports its train loss and accuracy. A peer that skipped
or changed some of the work would make a backend look slow against it for the wrong reason."""

from __future__ import annotations

import numpy as np
import pytest
from needs import import_extra
from parity import X_TEST, X_TRAIN, Y_TEST, Y_TRAIN, config, fit

from mnist_bench import peers
from mnist_bench.backends import base

FRAMEWORKS = {
    "numpy": None,
    "tf": ("tensorflow", "tf"),
    "tf+xla": ("tensorflow", "tf"),
    "jax": ("jax", "jax"),
    "torch": ("torch", "torch"),
    "torch+compile": ("torch", "torch"),
}
EPOCHS = 2


SLOW = {"torch+compile"}  # its compilations take ~20 s; the default suite has the eager torch peer


@pytest.mark.parametrize("label", [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f for f in FRAMEWORKS])
def test_peer_trains_as_its_backend_does(label: str) -> None:
    if FRAMEWORKS[label]:
        import_extra(*FRAMEWORKS[label])
    name, _, compiler = label.partition("+")
    options = {"dtype": "float32", "activation": "softmax", "init": "zeros", "lr": 0.02, "batch_size": 100}
    cfg = config(name, xla=compiler == "xla", compile=compiler == "compile", epochs=EPOCHS, **options)
    train = base.prepare(X_TRAIN, Y_TRAIN, X_TEST, Y_TEST, cfg.spec())
    expected = fit(cfg, train=train)  # 512 rows: 5 batches of 100 and a last one of 12

    peer = peers.create(label, train, cfg.batch_size, cfg.lr)
    curves = [peer.epoch(base.epoch_order(cfg.spec(), len(X_TRAIN), epoch)) for epoch in range(EPOCHS)]
    weights, bias = peer.parameters()

    np.testing.assert_allclose([loss for loss, _ in curves], expected.curves["train_loss"], rtol=1e-5)
    np.testing.assert_allclose([hits for _, hits in curves], expected.curves["train_accuracy"], atol=1 / len(X_TRAIN))
    np.testing.assert_allclose(weights, expected.result.weights, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bias, expected.result.bias, rtol=1e-4, atol=1e-6)
    assert expected.curves["train_loss"][-1] < 0.9 * expected.curves["train_loss"][0]  # it learns


def test_keras_has_no_peer() -> None:
    """model.fit is Keras' own idiom: bench prints no peer ratio for it."""
    assert peers.peer_file("keras") is None and peers.peer_file("keras[jax]") is None
    assert peers.peer_file("tf+xla") == peers.peer_file("tf") == peers.PEER_DIR / "tf_peer.py"
    assert peers.peer_file("torch+compile") == peers.PEER_DIR / "torch_peer.py"
