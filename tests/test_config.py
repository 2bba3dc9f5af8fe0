"""The structured config: value checks (through validate and the dataclasses), the config hash, run names."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mnist_bench.config import (
    BackendConfig,
    Config,
    ConfigError,
    DatasetConfig,
    DeviceConfig,
    TrackingConfig,
    as_flat_dict,
    backend_label,
    config_hash,
    run_name,
    validate,
)
from mnist_bench.hydra_app import compose

MNIST_YAML = Path(__file__).resolve().parents[1] / "conf" / "dataset" / "mnist.yaml"


def composed(overrides: dict) -> object:
    """What Hydra hands the job: the dataset's file list from conf/, then the overrides."""
    return OmegaConf.merge(OmegaConf.create({"dataset": OmegaConf.load(MNIST_YAML)}), OmegaConf.create(overrides))


# (overrides of the composed config, substrings its error must hold: the key, and what is allowed)
BAD_VALUES = {
    "lr-negative": ({"lr": -1.0}, ["lr=-1.0", "finite number > 0"]),
    "lr-zero": ({"lr": 0.0}, ["lr=0.0", "finite number > 0"]),
    "lr-nan": ({"lr": math.nan}, ["lr=nan", "finite number > 0"]),
    "lr-inf": ({"lr": math.inf}, ["lr=inf", "finite number > 0"]),
    "lr-minus-inf": ({"lr": -math.inf}, ["lr=-inf", "finite number > 0"]),
    "epochs-zero": ({"epochs": 0}, ["epochs=0", "from 1 to 100,000"]),
    "epochs-typo": ({"epochs": 10**11}, ["epochs=100000000000", "from 1 to 100,000"]),
    "batch-zero": ({"batch_size": 0}, ["batch_size=0", ">= 1", "null"]),
    "target-zero": ({"target_accuracy": 0.0}, ["target_accuracy=0.0", "(0, 1]"]),
    "target-above-one": ({"target_accuracy": 1.5}, ["target_accuracy=1.5", "(0, 1]"]),
    "stop-without-target": ({"stop_at_target": True}, ["stop_at_target", "target_accuracy"]),
    "activation": ({"activation": "relu"}, ["activation='relu'", "sigmoid", "softmax"]),
    "predict-from": ({"predict_from": "outputs"}, ["predict_from='outputs'", "logits", "probabilities"]),
    "init": ({"init": "xavier"}, ["init='xavier'", "zeros", "uniform", "normal"]),
    "dtype": ({"dtype": "float16"}, ["dtype='float16'", "float32", "float64"]),
    "lr-schedule": ({"lr_schedule": "step"}, ["lr_schedule='step'", "constant", "linear", "cosine"]),
    "grad-reduction": ({"grad_reduction": "max"}, ["grad_reduction='max'", "mean", "sum"]),
    "momentum-one": ({"momentum": 1.0}, ["momentum=1.0", "[0, 1)"]),
    "device-unknown": ({"device": {"name": "tpu"}}, ["device='tpu'", "cpu", "gpu", "auto"]),
    "numpy-on-gpu": ({"device": {"name": "gpu"}}, ["device=gpu", "backend=numpy", "tf or keras"]),
    "numpy-with-xla": ({"backend": {"xla": True}}, ["backend.xla", "backend=numpy"]),
    "threads-zero": ({"backend": {"threads": 0}}, ["backend.threads=0", ">= 1"]),
    "keras-engine": (
        {"backend": {"name": "keras", "keras_backend": "mxnet"}},
        ["backend.keras_backend='mxnet'", "tensorflow", "jax", "torch"],
    ),
    "xla-on-keras-torch": (
        {"backend": {"name": "keras", "keras_backend": "torch", "xla": True}},
        ["backend.xla=true", "backend.keras_backend=torch", "backend.compile=true"],
    ),
    "compile-without-torch": (
        {"backend": {"name": "jax", "compile": True}},
        ["backend.compile=true", "backend=jax", "torch option"],
    ),
    "options-on-a-built-in": (
        {"backend": {"name": "numpy", "options": {"block_rows": 1}}},
        ["backend.options", "backend=numpy", "declares no options"],
    ),
    "engine-without-keras": (
        {"backend": {"name": "tf", "keras_backend": "jax"}},
        ["backend.keras_backend=jax", "backend=tf", "use backend=keras", "backend.keras_backend=tensorflow"],
    ),
    "xla-on-keras-jax": (
        {"backend": {"name": "keras", "keras_backend": "jax", "xla": True}},
        ["backend.xla=true", "backend.keras_backend=jax", "backend.xla=false"],
    ),
    "train-limit-zero": ({"dataset": {"train_limit": 0}}, ["dataset.train_limit=0", ">= 1"]),
    "unknown-top-key": ({"learning_rate": 0.1}, ["learning_rate", "allowed at the top level", "lr", "epochs"]),
    "unknown-nested-key": ({"dataset": {"foo": 1}}, ["dataset.foo", "allowed in dataset", "train_limit", "dir"]),
    "unknown-deep-key": ({"dataset": {"train_images": {"md5": "x"}}}, ["dataset.train_images.md5", "sha256"]),
    "wrong-type": ({"epochs": "many"}, ["many", "epochs"]),
    "backend-default-activation": (
        {"backend": {"default_activation": "relu"}},
        ["backend.default_activation='relu'", "sigmoid", "softmax"],
    ),
    # conf/config.yaml's activation with a backend yaml that declares none (a new backend's, say).
    "no-backend-default-activation": (
        {"activation": "${backend.default_activation}", "backend": {"name": "jax"}},
        ["backend=jax declares no default activation", "conf/backend/jax.yaml", "activation=softmax"],
    ),
}


@pytest.mark.parametrize(("overrides", "expected"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_validate_rejects_bad_values_naming_the_key_and_what_is_allowed(overrides: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        validate(composed(overrides))
    message = str(caught.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, f"{part!r} missing from {message!r}"


# The same checks when the dataclasses are built directly (as experiment code and tests do).
DIRECT = {
    "lr-zero": (lambda: Config(lr=0.0), "lr=0.0"),
    "lr-negative": (lambda: Config(lr=-1.0), "lr=-1.0"),
    "lr-nan": (lambda: Config(lr=math.nan), "lr=nan"),
    "lr-inf": (lambda: Config(lr=math.inf), "lr=inf"),
    "epochs-zero": (lambda: Config(epochs=0), "epochs=0"),
    "batch-zero": (lambda: Config(batch_size=0), "batch_size=0"),
    "target-zero": (lambda: Config(target_accuracy=0.0), "target_accuracy=0.0"),
    "target-above-one": (lambda: Config(target_accuracy=1.5), "target_accuracy=1.5"),
    "stop-without-target": (lambda: Config(stop_at_target=True), "stop_at_target"),
    "activation": (lambda: Config(activation="tanh"), "activation='tanh'"),
    "predict-from": (lambda: Config(predict_from="softmax"), "predict_from='softmax'"),
    "init": (lambda: Config(init="ones"), "init='ones'"),
    "dtype": (lambda: Config(dtype="int8"), "dtype='int8'"),
    "lr-schedule": (lambda: Config(lr_schedule="exp"), "lr_schedule='exp'"),
    "numpy-on-gpu": (lambda: Config(device=DeviceConfig(name="gpu")), "device=gpu"),
    "device-unknown": (lambda: DeviceConfig(name="tpu"), "device='tpu'"),
}


@pytest.mark.parametrize(("build", "expected"), DIRECT.values(), ids=DIRECT.keys())
def test_dataclasses_reject_bad_values(build, expected: str) -> None:
    with pytest.raises(ConfigError, match="is not allowed") as caught:
        build()
    assert expected in str(caught.value)


def test_validate_accepts_edge_values_and_ignores_the_hydra_node() -> None:
    cfg = validate(
        composed(
            {
                "hydra": {"anything": "goes", "job": {"chdir": False}},
                "lr": 1e-9,
                "epochs": 1,
                "batch_size": 1,
                "target_accuracy": 1.0,
                "stop_at_target": True,
                "momentum": 0.0,
                "device": {"name": "auto"},
                "backend": {"name": "tf", "xla": True},
            }
        )
    )
    assert isinstance(cfg, Config)
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.target_accuracy) == (1e-9, 1, 1, 1.0)
    assert validate(composed({"backend": {"name": "keras", "keras_backend": "jax"}})).backend.keras_backend == "jax"
    assert isinstance(cfg.backend, BackendConfig) and cfg.backend.xla
    assert cfg.dataset.train_images.name == "train-images-idx3-ubyte"
    assert Config(device=DeviceConfig(name="gpu"), backend=BackendConfig(name="keras")).device.name == "gpu"


# --- config_hash ---------------------------------------------------------------------------------

BASE = Config()

# Fields that change where or how a run is logged or shown, never its numbers.
SAME_NUMBERS = {
    "tracking": dataclasses.replace(BASE, tracking=TrackingConfig(uri="sqlite:////elsewhere.db", experiment="x")),
    "progress": dataclasses.replace(BASE, progress="none"),
    "resume": dataclasses.replace(BASE, resume=False),
    "fail_fast": dataclasses.replace(BASE, fail_fast=True),
    "sweep_name": dataclasses.replace(BASE, sweep_name="nightly"),
    "dataset.dir": dataclasses.replace(BASE, dataset=DatasetConfig(dir="/data/here")),
    "dataset.cache_dir": dataclasses.replace(BASE, dataset=DatasetConfig(cache_dir="/tmp/cache")),
    "dataset.download": dataclasses.replace(BASE, dataset=DatasetConfig(download=False)),
    "dataset.mirrors": dataclasses.replace(BASE, dataset=DatasetConfig(mirrors=["https://example.org/"])),
    # Only the activation it resolves to counts, so runs logged before backends declared one keep their hash.
    "backend.default_activation": dataclasses.replace(BASE, backend=BackendConfig(default_activation="softmax")),
}

OTHER_NUMBERS = {
    "lr": dataclasses.replace(BASE, lr=0.2),
    "seed": dataclasses.replace(BASE, seed=1),
    "backend": dataclasses.replace(BASE, backend=BackendConfig(name="tf")),
    "activation": dataclasses.replace(BASE, activation="softmax"),
    "predict_from": dataclasses.replace(BASE, predict_from="probabilities"),
    "epochs": dataclasses.replace(BASE, epochs=11),
    "batch_size": dataclasses.replace(BASE, batch_size=128),
    "dtype": dataclasses.replace(BASE, dtype="float64"),
    "train_limit": dataclasses.replace(BASE, dataset=DatasetConfig(train_limit=2000)),
    "dataset.name": dataclasses.replace(BASE, dataset=DatasetConfig(name="fashion_mnist")),
    "keras": dataclasses.replace(BASE, backend=BackendConfig(name="keras")),
    "keras_backend": dataclasses.replace(BASE, backend=BackendConfig(name="keras", keras_backend="jax")),
    "torch": dataclasses.replace(BASE, backend=BackendConfig(name="torch")),
    "compile": dataclasses.replace(BASE, backend=BackendConfig(name="torch", compile=True)),
    "options": dataclasses.replace(BASE, backend=BackendConfig(options={"block_rows": 512})),
}


@pytest.mark.parametrize("cfg", SAME_NUMBERS.values(), ids=SAME_NUMBERS.keys())
def test_config_hash_ignores_where_and_how_a_run_is_logged(cfg: Config) -> None:
    assert cfg != BASE
    assert config_hash(cfg) == config_hash(BASE)


@pytest.mark.parametrize("cfg", OTHER_NUMBERS.values(), ids=OTHER_NUMBERS.keys())
def test_config_hash_changes_with_what_a_run_computes(cfg: Config) -> None:
    assert config_hash(cfg) != config_hash(BASE)


def test_config_hash_of_runs_logged_before_keras_backend_existed_is_kept() -> None:
    """keras_backend=tensorflow, the only engine before the key existed, adds nothing to the hash, nor do
    compile=false and empty options: these are the hashes the harness gave before them (055de4a), which resume
    matches earlier runs by."""
    assert config_hash(Config()) == "e2b345401ba389a4"
    assert config_hash(Config(backend=BackendConfig(name="keras"), batch_size=128)) == "38a0f769c92426af"


def test_config_hash_is_stable_and_short() -> None:
    assert config_hash(Config()) == config_hash(Config())
    assert len(config_hash(BASE)) == 16 and int(config_hash(BASE), 16) >= 0
    assert len({config_hash(c) for c in OTHER_NUMBERS.values()}) == len(OTHER_NUMBERS)


# --- each backend's default activation, as the Hydra app composes it ---------------------------------

# The tutorial's two models: NumPy with sigmoid outputs, TensorFlow with softmax.
TUTORIAL_ACTIVATION = {"numpy": "sigmoid", "tf": "softmax", "keras": "softmax"}
BACKENDS = sorted(p.stem for p in (MNIST_YAML.parents[1] / "backend").glob("*.yaml"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_yaml_declares_its_default_activation(backend: str) -> None:
    cfg = compose(f"backend={backend}")
    assert cfg.backend.default_activation is not None, f"conf/backend/{backend}.yaml declares no default_activation"
    assert cfg.activation == cfg.backend.default_activation == TUTORIAL_ACTIVATION.get(backend, cfg.activation)


def test_the_missions_sweep_compares_numpy_sigmoid_with_tf_softmax() -> None:
    """``-m backend=numpy,tf lr=0.01,0.1`` without activation=: each cell as the sweeper composes it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mnist_bench.hydra_app.composition import grid

    cells = grid(OverridesParser.create().parse_overrides(["backend=numpy,tf", "lr=0.01,0.1"]))
    configs = [compose(*cell) for cell in cells]
    assert sorted(run_name(c) for c in configs) == [
        "numpy-sigmoid-lr0.01-s0-e10",
        "numpy-sigmoid-lr0.1-s0-e10",
        "tf-softmax-lr0.01-s0-e10",
        "tf-softmax-lr0.1-s0-e10",
    ]
    params = {(c.backend.name, as_flat_dict(c)["activation"]) for c in configs}  # what MLflow records
    assert params == {("numpy", "sigmoid"), ("tf", "softmax")}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["backend=tf", "activation=sigmoid"], "sigmoid"),
        (["backend=keras", "activation=sigmoid"], "sigmoid"),
        (["backend=numpy", "activation=softmax"], "softmax"),
        (["+experiment=seed_numpy", "backend=tf"], "sigmoid"),  # a preset's activation beats the backend's
        (["+experiment=seed_tf", "backend=numpy"], "softmax"),
        (["+experiment=seed_numpy", "backend=tf", "activation=softmax"], "softmax"),  # and the command line both
    ],
)
def test_a_given_activation_beats_the_backends_default(overrides: list[str], expected: str) -> None:
    assert compose(*overrides).activation == expected


def test_the_backends_default_activation_hashes_as_if_it_had_been_given() -> None:
    """So that resume takes a FINISHED ``backend=tf activation=softmax`` run for ``backend=tf``, and back."""
    assert config_hash(compose("backend=tf")) == config_hash(compose("backend=tf", "activation=softmax"))
    assert config_hash(compose("backend=tf")) != config_hash(compose("backend=tf", "activation=sigmoid"))
    assert config_hash(compose()) == config_hash(compose("activation=sigmoid"))


# --- run_name and as_flat_dict -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (Config(lr=0.1, epochs=100, seed=0), "numpy-sigmoid-lr0.1-s0-e100"),
        (Config(lr=0.1, epochs=100, seed=0, batch_size=128), "numpy-sigmoid-lr0.1-s0-e100-b128"),
        (Config(activation="softmax", lr=0.005, epochs=10, seed=3), "numpy-softmax-lr0.005-s3-e10"),
        (Config(backend=BackendConfig(name="keras"), lr=1.0, epochs=5, batch_size=32), "keras-sigmoid-lr1-s0-e5-b32"),
        (Config(dataset=DatasetConfig(name="fashion_mnist")), "numpy-sigmoid-lr0.1-s0-e10-fashion_mnist"),
        (Config(backend=BackendConfig(name="keras", keras_backend="jax")), "keras[jax]-sigmoid-lr0.1-s0-e10"),
        (Config(backend=BackendConfig(name="torch", compile=True)), "torch+compile-sigmoid-lr0.1-s0-e10"),
    ],
)
def test_run_name(cfg: Config, expected: str) -> None:
    assert run_name(cfg) == expected


def test_backend_label_names_each_model_of_its_own() -> None:
    """What the report groups runs by: an engine, torch.compile and an installed backend's options each part
    a backend's runs from its plain ones, as models of their own."""
    assert backend_label("keras", "tensorflow") == "keras" and backend_label("keras", "torch") == "keras[torch]"
    assert backend_label("torch", "tensorflow", compiled=True) == "torch+compile"
    assert backend_label("einsum", None, options={"optimize": "False", "block": 2}) == "einsum{block=2,optimize=False}"


def _leaf_keys(cls: type, prefix: str = "") -> set[str]:
    """Dotted names of every leaf field of a config dataclass, from the class definitions."""
    keys: set[str] = set()
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys |= _leaf_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.add(f"{prefix}{f.name}")
    return keys


def test_as_flat_dict_has_one_dotted_key_per_setting() -> None:
    cfg = Config(lr=0.25, batch_size=64, dataset=DatasetConfig(train_limit=7))
    flat = as_flat_dict(cfg)
    assert set(flat) == _leaf_keys(Config) - {"backend.options"}  # an installed backend's keys: none here
    assert {"lr", "backend.name", "device.name", "tracking.uri", "dataset.train_images.sha256"} <= set(flat)
    assert not any(isinstance(v, dict) for v in flat.values())
    assert (flat["lr"], flat["batch_size"], flat["dataset.train_limit"], flat["backend.name"]) == (0.25, 64, 7, "numpy")


@pytest.mark.parametrize("overrides", [[], ["+experiment=fast"], ["backend=keras", "backend.keras_backend=jax"]])
def test_a_runs_config_yaml_is_omegaconfs_text_of_it(overrides: list[str]) -> None:
    from mnist_bench import artifacts

    cfg = compose(*overrides)
    assert artifacts.config_yaml(cfg) == OmegaConf.to_yaml(OmegaConf.structured(cfg))


def test_a_backend_is_given_a_frozen_spec_of_what_to_compute_and_nothing_of_how_the_run_is_kept() -> None:
    cfg = compose("backend=tf", "lr=0.5", "batch_size=128", "tracking.experiment=elsewhere", "resume=false")
    spec = cfg.spec()
    assert (spec.backend.name, spec.lr, spec.batch_size, spec.device.name) == ("tf", 0.5, 128, "cpu")
    assert not any(hasattr(spec, key) for key in ("tracking", "timing", "resume", "progress", "dataset"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.lr = 1.0  # type: ignore[misc]
    spec.backend.threads = 7  # a copy: what a backend does to it never reaches the config
    assert cfg.backend.threads is None


@pytest.mark.parametrize(
    ("master_overrides", "sweep", "full_compositions"),
    [
        ([], ["backend=numpy,tf", "lr=0.01,0.1", "seed=0,1"], 2),
        (
            ["hydra/launcher=joblib"],
            ["+experiment=fast,seed_tf", "backend.threads=1,2", "dataset.train_limit=100,null", "activation=sigmoid"],
            2,
        ),
        (  # as Hydra names a job's folder from its overrides: each cell's own
            ["hydra.job.config.override_dirname.kv_sep=_", "hydra.job.config.override_dirname.exclude_keys=[seed]"],
            ["epochs=1,3", "seed=0,1", "sweep_name=x,y"],
            1,
        ),
    ],
)
def test_a_sweeps_cells_are_exactly_what_hydra_composes(
    master_overrides: list[str], sweep: list[str], full_compositions: int
) -> None:
    """The sweeper composes in full once per choice of config groups and copies that for the plain values:
    each cell, its Hydra node included, must still be the config Hydra's own load_sweep_config makes."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from mnist_bench.hydra_app import register
    from mnist_bench.hydra_app.composition import CellComposer, grid
    from mnist_bench.paths import conf_dir

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", overrides=master_overrides, run_mode=RunMode.MULTIRUN)
        compose_cell = CellComposer(loader, master)
        cells = grid(compose_cell.parser.parse_overrides(sweep))
        for overrides in cells:
            ours, hydras = compose_cell(overrides), loader.load_sweep_config(master, overrides)
            assert OmegaConf.to_container(ours) == OmegaConf.to_container(hydras), overrides
    assert len(compose_cell.composed) == full_compositions < len(cells)


def test_a_validated_cell_is_handed_to_its_job_once_and_stays_in_this_process() -> None:
    """The basic launcher composes its jobs here: each gets the cell composed for validation, not a second
    composition; a copy for another process (joblib's, Ray's) carries none of the kept cells."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from joblib.externals import cloudpickle

    from mnist_bench.hydra_app import register
    from mnist_bench.hydra_app.composition import CellComposer
    from mnist_bench.paths import conf_dir

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", overrides=[], run_mode=RunMode.MULTIRUN)
        compose_cell = CellComposer(loader, master)
        cell = compose_cell.compose(["lr=0.3"])
        compose_cell.keep(["lr=0.3"], cell)
        assert cloudpickle.loads(cloudpickle.dumps(compose_cell)).kept == {}
        assert compose_cell(["lr=0.3"]) is cell
        again = compose_cell(["lr=0.3"])
    assert again is not cell and OmegaConf.to_container(again) == OmegaConf.to_container(cell)


def test_a_cell_setting_other_plain_keys_is_composed_afresh_not_copied() -> None:
    """A copy carries the values its cell set: one that sets other keys (seed, not lr) must not inherit them."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from mnist_bench.hydra_app import register
    from mnist_bench.hydra_app.composition import CellComposer
    from mnist_bench.paths import conf_dir

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", overrides=[], run_mode=RunMode.MULTIRUN)
        compose_cell = CellComposer(loader, master)
        compose_cell(["lr=0.123"])
        ours, hydras = compose_cell(["seed=7"]), loader.load_sweep_config(master, ["seed=7"])
    assert OmegaConf.to_container(ours) == OmegaConf.to_container(hydras)
