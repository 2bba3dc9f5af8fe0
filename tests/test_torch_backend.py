"""What is PyTorch's own in backend=torch and Keras on PyTorch (backend=keras backend.keras_backend=torch):
probabilities where sigmoids saturate, threads, a missing PyTorch, and a NumPy run that never imports it.
Their training against the NumPy reference, and their devices, are in test_parity.py."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from needs import import_extra
from parity import labelled, saturating_logits

torch = import_extra("torch", "torch")

from mnist_bench import backends  # noqa: E402  (after the skip: these tests need PyTorch)
from mnist_bench.backends import base, get, torch_backend  # noqa: E402
from mnist_bench.backends.numpy_backend import probabilities_and_loss  # noqa: E402


def test_torch_saturates_and_ties_where_numpy_does() -> None:
    """Logits around 37, where a float64 sigmoid starts to round to exactly 1.0, and below -708.4, where it
    is subnormal: PyTorch's probabilities are 1.0 and 0.0 on NumPy's entries, so the same rows tie and each
    rule predicts NumPy's class."""
    z = saturating_logits()
    y = np.eye(base.NUM_CLASSES)[np.random.default_rng(1).integers(0, base.NUM_CLASSES, len(z))]
    p, _ = probabilities_and_loss(z, y, "sigmoid")
    torch_p = torch_backend.probabilities(torch.from_numpy(z), "sigmoid").numpy()
    assert 0.1 < base.tied_rows(p).mean() < 0.9
    np.testing.assert_array_equal(torch_p == 1.0, p == 1.0)
    np.testing.assert_array_equal(torch_p == 0.0, p == 0.0)
    for rule in ("logits", "probabilities"):
        spec = labelled("torch", activation="sigmoid", predict_from=rule).spec()
        z_tensor = torch.from_numpy(z)
        correct, tied = torch_backend.row_counts(z_tensor, torch.from_numpy(torch_p), torch.from_numpy(y), spec)
        assert int(correct) == (base.predicted_class(z, p, rule) == y.argmax(axis=1)).sum(), rule
        assert int(tied) == base.tied_rows(p).sum()


def test_threads_follow_backend_threads() -> None:
    cfg = labelled("torch")
    for threads in (2, 1):
        get("torch").resolve_device(
            dataclasses.replace(cfg, backend=dataclasses.replace(cfg.backend, threads=threads)).spec()
        )
        assert torch.get_num_threads() == threads


# --- imports -------------------------------------------------------------------------------------


def test_missing_torch_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    for module in ("_torch_common", "torch_backend"):  # forget them, so that they are imported again
        monkeypatch.delitem(sys.modules, f"mnist_bench.backends.{module}", raising=False)
        monkeypatch.delattr(backends, module, raising=False)
    with pytest.raises(base.BackendUnavailable) as info:
        get("torch")
    message = str(info.value)
    assert message.startswith("backend=torch needs PyTorch") and "pip install 'mnist-bench[torch]'" in message
    assert "\n" not in message
    with pytest.raises(base.BackendUnavailable) as info:
        get("keras").resolve_device(labelled("keras[torch]").spec())
    assert str(info.value).startswith("backend=keras backend.keras_backend=torch needs PyTorch")


def test_a_numpy_run_never_imports_torch() -> None:
    """A NumPy job composed and trained as a run does it, in a fresh process: no PyTorch (nor TensorFlow, JAX)."""
    script = f"""
import json, sys
sys.path.insert(0, {str(REPO / "tests")!r})
import parity
from mnist_bench.hydra_app import compose
parity.fit(parity.config("numpy", epochs=2))
compose("backend=numpy")
print(json.dumps(sorted(m for m in ("torch", "tensorflow", "jax") if m in sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
