"""What is Keras' own in backend.keras_backend: one keras.ops code scoring rows on every engine, each job of
one process on the engine it asked for, Keras on JAX without TensorFlow, and the error when JAX is missing.
Keras on each engine against the NumPy reference: test_parity.py."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from needs import import_extra
from parity import config, saturating_logits

jax = import_extra("jax", "jax")
import_extra("keras", "jax")

from mnist_bench import backends  # noqa: E402  (after the skip: these tests need JAX)
from mnist_bench.backends import base, get, keras_backend  # noqa: E402
from mnist_bench.backends.numpy_backend import probabilities_and_loss  # noqa: E402
from mnist_bench.config import Config  # noqa: E402


def keras_jax(**options) -> Config:
    return config("keras", keras_backend="jax", **options)


# --- one code for both engines --------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["jax", "tensorflow", "torch"])
def test_keras_ops_saturate_and_tie_where_numpy_does(engine: str) -> None:
    """Logits around 37, where a float64 sigmoid starts to round to exactly 1.0, and below -708.4, where it
    is subnormal: Keras' probabilities (one code in keras.ops) are 1.0 and 0.0 on NumPy's entries on either
    engine, so the same rows tie and each rule predicts NumPy's class."""
    if engine != "jax":
        import_extra(*{"tensorflow": ("tensorflow", "tf"), "torch": ("torch", "torch")}[engine])
    model = keras_backend.load(engine)
    z = saturating_logits()
    y = np.eye(base.NUM_CLASSES)[np.random.default_rng(1).integers(0, base.NUM_CLASSES, len(z))]
    p, _ = probabilities_and_loss(z, y, "sigmoid")
    keras_p = model.keras.ops.convert_to_numpy(model.probabilities(model.keras.ops.convert_to_tensor(z), "sigmoid"))
    assert 0.1 < base.tied_rows(p).mean() < 0.9
    np.testing.assert_array_equal(keras_p == 1.0, p == 1.0)
    np.testing.assert_array_equal(keras_p == 0.0, p == 0.0)
    for rule in ("logits", "probabilities"):
        hits, tied = model.hits_and_ties(y, z, "sigmoid", rule)
        expected = base.predicted_class(z, p, rule) == y.argmax(axis=1)
        np.testing.assert_array_equal(model.keras.ops.convert_to_numpy(hits), expected, err_msg=rule)
        np.testing.assert_array_equal(model.keras.ops.convert_to_numpy(tied), base.tied_rows(p))
    # As np.argmax: a tie goes to the lowest class, -0.0 ties with 0.0 (Keras' own argmax ranks it lower), and
    # float64 values that only float32 would tie do not (Keras' argmax on JAX compares them in float32).
    tie = np.array([[0.0, 1.0, 0.5, 1.0, 1.0], [-0.0, -1.0, 0.0, -2.0, -3.0], [1.0, 1.0 + 1e-12, 0.0, 0.0, 0.0]])
    assert base.predicted_class(tie, tie, "logits").tolist() == [1, 0, 1]
    hits, _ = model.hits_and_ties(np.eye(5)[[1, 0, 1]], tie, "sigmoid", "logits")
    assert model.keras.ops.convert_to_numpy(hits).tolist() == [True, True, True]


# --- imports -------------------------------------------------------------------------------------


def test_missing_jax_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jax", None)  # makes `import jax` fail
    monkeypatch.delitem(sys.modules, "mnist_bench.backends._jax_common", raising=False)  # imported again
    monkeypatch.delattr(backends, "_jax_common", raising=False)
    with pytest.raises(base.BackendUnavailable) as info:
        get("keras").resolve_device(keras_jax().spec())
    message = str(info.value)
    assert message.startswith("backend=keras backend.keras_backend=jax needs JAX")
    assert "pip install 'mnist-bench[jax]'" in message and "\n" not in message


# --- one process, both engines -------------------------------------------------------------------

# Runs in a fresh process, so that this one's Keras is left as the other tests have it. Each job records,
# from inside Keras' fit (the on_epoch callback), which engine the Keras package in use runs and whether
# the model code is bound to that package.
_SWITCH_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import parity as t

def job(engine):
    seen = set()
    def stop(metrics):
        keras, model = sys.modules["keras"], sys.modules["mnist_bench.backends._keras_model"]
        seen.add((keras.config.backend(), model.keras is keras, type(model.ops.ones(1)).__module__.split(".")[0]))
        return False
    run = t.fit(t.config("keras", keras_backend=engine, **OPTIONS), stop=stop)
    return {{"seen": sorted(seen), "curves": {{k: v.tolist() for k, v in run.curves.items()}}}}

OPTIONS = {{"activation": "softmax", "batch_size": 100, "momentum": 0.9, "epochs": 3}}
ENGINES = {engines!r}
out = {{"numpy": {{"curves": {{k: v.tolist() for k, v in t.fit(t.config("numpy", **OPTIONS)).curves.items()}}}}}}
out["jobs"] = [job(engine) for engine in ENGINES]
print(json.dumps(out))
"""


def _run_script(script: str, **fields: object) -> dict:
    """Run ``script`` (formatted with the tests' folder and ``fields``) in a fresh interpreter; the JSON its last
    line prints."""
    source = script.format(tests=str(REPO / "tests"), **fields)
    done = subprocess.run([sys.executable, "-c", source], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_jobs_in_one_process_each_train_on_their_engine() -> None:
    """tensorflow, then jax, then torch, then tensorflow again, in one process (as Hydra's basic launcher and a
    reused joblib worker run a sweep's jobs): each trains on its engine, with the numbers NumPy gives."""
    import_extra("tensorflow", "tf")
    import_extra("torch", "torch")
    engines = ["tensorflow", "jax", "torch", "tensorflow"]
    out = _run_script(_SWITCH_SCRIPT, engines=engines)
    modules = {"tensorflow": "tensorflow", "jax": "jaxlib", "torch": "torch"}
    for engine, job in zip(engines, out["jobs"], strict=True):
        assert job["seen"] == [[engine, True, modules[engine]]]
        for column, values in job["curves"].items():
            np.testing.assert_allclose(values, out["numpy"]["curves"][column], rtol=1e-9, err_msg=column)


def test_keras_on_jax_needs_no_tensorflow() -> None:
    """With TensorFlow unimportable, a Keras-on-JAX job trains as usual, and a tensorflow job says what to install."""
    script = """
import sys
sys.modules["tensorflow"] = None  # makes `import tensorflow` fail
sys.path.insert(0, {tests!r})
import json, parity as t
from mnist_bench.backends import base
run = t.fit(t.config("keras", keras_backend="jax", batch_size=100, epochs=2))
try:
    t.fit(t.config("keras", epochs=1))
    error = None
except base.BackendUnavailable as err:
    error = str(err)
print(json.dumps({{"loss": run.curves["train_loss"].tolist(), "error": error}}))
"""
    out = _run_script(script)
    assert len(out["loss"]) == 2 and all(np.isfinite(out["loss"]))
    assert out["error"].startswith("backend=keras needs TensorFlow") and "pip install 'mnist-bench[tf]'" in out["error"]


def test_missing_keras_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "keras", None)  # makes `import keras` fail
    monkeypatch.delitem(sys.modules, "mnist_bench.backends.keras_backend")  # imported again
    monkeypatch.delattr(backends, "keras_backend", raising=False)
    with pytest.raises(base.BackendUnavailable) as info:
        get("keras")
    message = str(info.value)
    assert message.startswith("backend=keras needs Keras") and "pip install 'mnist-bench[tf]'" in message
    assert "\n" not in message
