"""What is JAX's own in backend=jax and Keras on JAX (backend=keras backend.keras_backend=jax): probabilities
where sigmoids saturate, a missing JAX. Their training against the NumPy reference, and their devices, are in
test_parity.py; test_keras_jax.py has what is Keras' own: its engine changing in a process."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from needs import import_extra
from parity import saturating_logits

jax = import_extra("jax", "jax")

from mnist_bench import backends  # noqa: E402  (after the skip: these tests need JAX)
from mnist_bench.backends import base, get, jax_backend  # noqa: E402
from mnist_bench.backends.numpy_backend import probabilities_and_loss  # noqa: E402

# --- probabilities -------------------------------------------------------------------------------


def test_jax_saturates_and_ties_where_numpy_does() -> None:
    """Logits around 37, where a float64 sigmoid starts to round to exactly 1.0, and below -708.4, where it
    is subnormal: JAX's probabilities are 1.0 and 0.0 on NumPy's entries, so the same rows tie."""
    z = saturating_logits()
    p, _ = probabilities_and_loss(z, np.zeros_like(z), "sigmoid")
    jax_p = np.asarray(jax_backend.probabilities(jax.numpy.asarray(z), "sigmoid"))
    assert 0.1 < base.tied_rows(p).mean() < 0.9
    np.testing.assert_array_equal(jax_p == 1.0, p == 1.0)
    np.testing.assert_array_equal(jax_p == 0.0, p == 0.0)


# --- imports -------------------------------------------------------------------------------------


def test_missing_jax_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jax", None)  # makes `import jax` fail
    for module in ("_jax_common", "jax_backend"):  # forget them, so that they are imported again
        monkeypatch.delitem(sys.modules, f"mnist_bench.backends.{module}", raising=False)
        monkeypatch.delattr(backends, module, raising=False)
    with pytest.raises(base.BackendUnavailable) as info:
        get("jax")
    message = str(info.value)
    assert message.startswith("backend=jax needs JAX") and "pip install 'mnist-bench[jax]'" in message
    assert "\n" not in message
