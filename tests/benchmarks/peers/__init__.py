"""Hand-written same-work epochs, one short file per framework (``<framework>_peer.py``): the anchors that
each backend's minibatch epoch is held to (``mnist-bench bench``, tests/benchmarks/test_peers.py).

The work, as a careful user of the framework would write it with nothing from this harness: softmax
regression on float32 pixels / 255, zero initial weights, and for each minibatch of an epoch's permutation:
gather, forward, loss, gradient, update; the epoch's mean loss and accuracy from the minibatches' forward
passes. Each file defines ``Peer(x, labels, batch_size, lr)`` (a framework with a compiler takes its name,
``xla`` or ``compile``, too) with ``epoch(order) -> (mean loss, accuracy)`` and ``parameters() -> (weights,
bias)`` as NumPy arrays; the caller times ``epoch`` (mnist_bench.peers) and sets the threads, as it does for
the backend.
"""
