"""The structured config: every key a user can set, its type, and its allowed values.

Hydra checks types and unknown keys against these dataclasses while composing; the
value checks in ``__post_init__`` run when ``validate`` turns the composed config into
objects, before any data is read or any MLflow run exists.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError

from mnist_bench.errors import UserError
from mnist_bench.schema import flatten

ACTIVATIONS = ("sigmoid", "softmax")
PREDICT_FROM = ("logits", "probabilities")
INITS = ("zeros", "uniform", "normal")
DTYPES = ("float32", "float64")
DEVICES = ("cpu", "gpu", "auto")
GRAD_REDUCTIONS = ("mean", "sum")
LR_SCHEDULES = ("constant", "linear", "cosine")
TARGET_METRICS = ("test_accuracy", "train_accuracy")
PROGRESS = ("auto", "bar", "none")
MAX_EPOCHS = 100_000  # more is a typo: the full-batch tutorial stops within 40
KERAS_BACKENDS = ("tensorflow", "jax", "torch")


class ConfigError(UserError, ValueError):
    """A config value outside what is allowed; the message names the key and the fix."""


def _require(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {key} must be {allowed}")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, key, value, "one of " + ", ".join(choices))


def _finite_positive(key: str, value: float) -> None:
    _require(math.isfinite(value) and value > 0, key, value, "a finite number > 0")


@dataclass
class BackendConfig:
    """Which implementation trains the model, and its own knobs."""

    name: str = "numpy"
    # The activation a job of this backend uses when `activation=` is not given (conf/config.yaml sets
    # activation: ${backend.default_activation}); each conf/backend/NAME.yaml declares its own.
    default_activation: str | None = None
    # Threads for BLAS (numpy) or TF's intra-op pool; null = cores / parallel jobs.
    threads: int | None = None
    # tf/keras only: compile the training step with XLA (jax, and keras on jax, always do).
    xla: bool = False
    # keras only: the engine Keras runs on, tensorflow, jax or torch.
    keras_backend: str = "tensorflow"
    # torch only: run the training step through torch.compile (the warm-up epoch pays for the compile).
    compile: bool = False
    # An installed backend's own keys (README, "Your own backend"), checked against the dataclass its module
    # names ``Options``; the built-in backends take none.
    options: dict[str, Any] = field(default_factory=dict)
    # Untimed epochs run (and logged as warmup_seconds) before the timed ones; numpy runs them once a process
    # for each data, batch size and thread count, as what they warm outlives a job.
    warmup_epochs: int = 1

    def __post_init__(self) -> None:
        if self.default_activation is not None:
            _choice("backend.default_activation", self.default_activation, ACTIVATIONS)
        if self.threads is not None:
            _require(self.threads >= 1, "backend.threads", self.threads, "an integer >= 1 or null")
        _require(self.warmup_epochs >= 0, "backend.warmup_epochs", self.warmup_epochs, "an integer >= 0")
        if self.xla and self.name not in ("tf", "keras"):
            raise ConfigError(
                f"backend.xla=true is not allowed with backend={self.name}: it is a tf/keras option"
                " (numpy has no compiler; jax always compiles with XLA)"
            )
        _choice("backend.keras_backend", self.keras_backend, KERAS_BACKENDS)
        if self.keras_backend != "tensorflow" and self.name != "keras":
            raise ConfigError(
                f"backend.keras_backend={self.keras_backend} is not allowed with backend={self.name}:"
                " it is a keras option (use backend=keras, or leave backend.keras_backend=tensorflow)"
            )
        if self.xla and self.keras_backend == "jax":
            raise ConfigError(
                "backend.xla=true is not allowed with backend.keras_backend=jax: Keras on JAX always compiles"
                " with XLA (leave backend.xla=false)"
            )
        if self.xla and self.keras_backend == "torch":
            raise ConfigError(
                "backend.xla=true is not allowed with backend.keras_backend=torch: Keras on PyTorch has no XLA"
                " (leave backend.xla=false, or use backend=torch backend.compile=true for torch.compile)"
            )
        if self.compile and self.name != "torch":
            raise ConfigError(
                f"backend.compile=true is not allowed with backend={self.name}: it is a torch option"
                " (tf and keras have backend.xla; jax always compiles)"
            )


@dataclass
class IdxFile:
    """One IDX file of a dataset: its canonical name and the sha256 of its decompressed bytes."""

    name: str = "???"
    sha256: str = "???"


@dataclass
class DatasetConfig:
    """Where an IDX dataset comes from and how much of it a run uses."""

    name: str = "mnist"
    # Folder name used under data roots and /usr/share/datasets (Debian's layout).
    folder: str = "mnist"
    train_images: IdxFile = field(default_factory=IdxFile)
    train_labels: IdxFile = field(default_factory=IdxFile)
    test_images: IdxFile = field(default_factory=IdxFile)
    test_labels: IdxFile = field(default_factory=IdxFile)
    # https base URLs tried in order when the files are found nowhere locally.
    mirrors: list[str] = field(default_factory=list)
    # A folder holding the files (or <folder>/ with them); looked at first.
    dir: str | None = None
    # Where downloads and decoded arrays go; null = $MNIST_BENCH_CACHE_DIR or ~/.cache/mnist-bench.
    cache_dir: str | None = None
    download: bool = True
    # Use only the first N images of a split (quick tests, smoke runs); null = all.
    train_limit: int | None = None
    test_limit: int | None = None

    def __post_init__(self) -> None:
        for key in ("train_limit", "test_limit"):
            value = getattr(self, key)
            if value is not None:
                _require(value >= 1, f"dataset.{key}", value, "an integer >= 1 or null")


@dataclass
class DeviceConfig:
    """Where TF/Keras place the model: cpu, gpu (fail if none), or auto (gpu if visible)."""

    name: str = "cpu"

    def __post_init__(self) -> None:
        _choice("device", self.name, DEVICES)


@dataclass
class TimingConfig:
    """When a run's timings count as stable (mnist_bench.timing): limits on what else the machine did."""

    # Share of all cores' time that other processes (parallel jobs included) may use while a run trains.
    max_other_cpu_share: float = 0.2
    # Share of CPU time the hypervisor may steal.
    max_cpu_steal_share: float = 0.05
    # Interquartile range over median of the timed epochs.
    max_epoch_spread: float = 0.25

    def __post_init__(self) -> None:
        for key in ("max_other_cpu_share", "max_cpu_steal_share", "max_epoch_spread"):
            value = getattr(self, key)
            _require(math.isfinite(value) and value >= 0, f"timing.{key}", value, "a number >= 0")


SERVER_PATIENCE_S = 120.0
HEARTBEAT_TIMEOUT_S = 60.0  # covers a run's start (its warm-up and first epoch) on a slow, loaded node
MIN_HEARTBEAT_TIMEOUT_S = 6.0  # a run beats every timeout / 3 s: at most every 2 s
DEFAULT_EXPERIMENT = "mnist-bench"  # the experiment every run and tool uses unless told otherwise


@dataclass
class TrackingConfig:
    """Where runs are logged."""

    # null = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the launch directory.
    uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    # How long one call to a tracking server that does not answer is tried again before the run fails
    # (it sets MLflow's MLFLOW_HTTP_REQUEST_* variables; MLflow's own default is about 4 minutes a call).
    patience_s: float = SERVER_PATIENCE_S
    # How long a RUNNING run may go without a heartbeat, beyond 3 of its own longest epochs, before any
    # reaper (mnist-bench reap, a sweep's start, a sweep watching its lost jobs) marks it KILLED.
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S

    def __post_init__(self) -> None:
        _require(
            bool(self.experiment.strip()) and self.experiment == self.experiment.strip(),
            "tracking.experiment",
            self.experiment,
            "an MLflow experiment name, not empty and without leading or trailing spaces (default: mnist-bench)",
        )
        _require(
            math.isfinite(self.patience_s) and 1 <= self.patience_s <= 3600,
            "tracking.patience_s",
            self.patience_s,
            "seconds from 1 to 3600",
        )
        _require(
            math.isfinite(self.heartbeat_timeout_s) and MIN_HEARTBEAT_TIMEOUT_S <= self.heartbeat_timeout_s <= 86400,
            "tracking.heartbeat_timeout_s",
            self.heartbeat_timeout_s,
            f"seconds from {MIN_HEARTBEAT_TIMEOUT_S:g} to 86400 (default {HEARTBEAT_TIMEOUT_S:g})",
        )


@dataclass
class Config:
    """One training job: the model, the optimiser, the data, and where it is logged."""

    backend: BackendConfig = field(default_factory=BackendConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)

    # The Hydra app's default is the backend's (backend.default_activation); built directly, numpy's.
    activation: str = "sigmoid"
    # The predicted class: the largest logit, or the largest activated output (the tutorial's rule: where
    # several sigmoid outputs saturate to exactly 1.0 they tie, and the lowest class wins).
    predict_from: str = "logits"
    lr: float = 0.1
    epochs: int = 10
    # null = full-batch gradient descent; N = minibatch SGD with batches of N.
    batch_size: int | None = None
    shuffle: bool = True
    momentum: float = 0.0
    lr_schedule: str = "constant"
    # How the weight gradient is reduced over a batch; the bias gradient is always a mean.
    grad_reduction: str = "mean"
    init: str = "normal"
    init_scale: float = 0.01
    normalize: bool = True
    dtype: str = "float32"
    seed: int = 0

    target_accuracy: float | None = None
    target_metric: str = "test_accuracy"
    stop_at_target: bool = False

    progress: str = "auto"
    # Skip a job whose config already has a FINISHED run in the experiment.
    resume: bool = True
    # In a sweep: skip the remaining jobs once one has failed.
    fail_fast: bool = False
    # The sweep's parent run name; null = sweep-YYYYmmdd-HHMMSS.
    sweep_name: str | None = None

    def __post_init__(self) -> None:
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("predict_from", self.predict_from, PREDICT_FROM)
        _finite_positive("lr", self.lr)
        _require(1 <= self.epochs <= MAX_EPOCHS, "epochs", self.epochs, f"an integer from 1 to {MAX_EPOCHS:,}")
        if self.batch_size is not None:
            _require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1 or null (full batch)")
        _require(math.isfinite(self.momentum) and 0 <= self.momentum < 1, "momentum", self.momentum, "in [0, 1)")
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("grad_reduction", self.grad_reduction, GRAD_REDUCTIONS)
        _choice("init", self.init, INITS)
        _require(math.isfinite(self.init_scale) and self.init_scale >= 0, "init_scale", self.init_scale, ">= 0")
        _choice("dtype", self.dtype, DTYPES)
        _require(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        if self.target_accuracy is not None:
            t = self.target_accuracy
            _require(math.isfinite(t) and 0 < t <= 1, "target_accuracy", t, "in (0, 1] or null")
        _require(
            not self.stop_at_target or self.target_accuracy is not None,
            "stop_at_target",
            self.stop_at_target,
            "false unless target_accuracy is set",
        )
        _choice("target_metric", self.target_metric, TARGET_METRICS)
        _choice("progress", self.progress, PROGRESS)
        if self.backend.name == "numpy" and self.device.name == "gpu":
            raise ConfigError("device=gpu is not allowed with backend=numpy: NumPy runs on the CPU (use tf or keras)")

    def spec(self) -> TrainingSpec:
        """What a backend sees of this job: its numbers and its device, as copies (nothing a backend does
        reaches the config), and nothing of how the run is logged, shown, resumed or timed."""
        values = {f.name: getattr(self, f.name) for f in fields(TrainingSpec)}
        return TrainingSpec(**values | {"backend": replace(self.backend), "device": replace(self.device)})


@dataclass(frozen=True)
class TrainingSpec:
    """All a backend is given: what to compute and where. Made by ``Config.spec`` once the config is valid."""

    backend: BackendConfig
    device: DeviceConfig
    activation: str
    predict_from: str
    lr: float
    epochs: int
    batch_size: int | None
    shuffle: bool
    momentum: float
    lr_schedule: str
    grad_reduction: str
    init: str
    init_scale: float
    normalize: bool
    dtype: str
    seed: int


# Keys that change where or how a run is logged or shown, never what it computes.
_NOT_IN_HASH = {"tracking", "timing", "progress", "resume", "fail_fast", "sweep_name"}
_DATA_LOCATION_KEYS = {"dir", "cache_dir", "mirrors", "download"}
# Defaults a backend declares for top-level keys: what a run computes is the key it resolved to.
_BACKEND_DEFAULT_KEYS = {"default_activation"}
# Backend keys added after runs were logged, with their defaults: hashed only when set otherwise, so that those
# runs keep their hashes and resume still finds them.
_LATER_BACKEND_KEYS: dict[str, object] = {"keras_backend": "tensorflow", "compile": False, "options": {}}


@functools.cache
def _schema() -> DictConfig:
    """The schema as OmegaConf builds it from the dataclasses, once (docs/performance.md); merging copies it."""
    return OmegaConf.structured(Config)


def validate(cfg: DictConfig) -> Config:
    """Turn a composed config into checked objects; raises ConfigError naming the bad key."""
    _require_backend_default(cfg)
    try:
        job = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
        checked = OmegaConf.to_object(OmegaConf.merge(_schema(), job))
    except ConfigError:
        raise
    except ConfigKeyError as err:
        key = str(err.full_key or err.key)
        raise ConfigError(
            f"unknown key '{key}': mnist-bench has no such setting; {_allowed_keys(key)}"
            " (python -m mnist_bench --cfg job lists them)"
        ) from err
    except Exception as err:  # OmegaConf's own type errors: keep only the message, with the key
        key = getattr(err, "full_key", None)
        message = str(err).splitlines()[0]
        raise ConfigError(f"{key}: {message}" if key else message) from err
    from mnist_bench.backends import options  # here: the read-side tools use this module without the backends

    options(checked.backend)
    return checked


def _require_backend_default(cfg: DictConfig) -> None:
    """activation: ${backend.default_activation} needs the backend's yaml to declare one: say where."""
    if OmegaConf.is_interpolation(cfg, "activation") and OmegaConf.select(cfg, "backend.default_activation") is None:
        name = OmegaConf.select(cfg, "backend.name")
        raise ConfigError(
            f"backend={name} declares no default activation: add default_activation: sigmoid or softmax"
            f" to conf/backend/{name}.yaml, or give activation=sigmoid or activation=softmax"
        )


def _allowed_keys(full_key: str) -> str:
    """The settings allowed beside an unknown dotted key, e.g. 'allowed in dataset: name, folder, ...'."""
    node: object = Config()
    parents: list[str] = []
    for part in full_key.split(".")[:-1]:
        child = getattr(node, part, None)
        if not is_dataclass(child):
            break
        node, parents = child, [*parents, part]
    where = f"in {'.'.join(parents)}" if parents else "at the top level"
    return f"allowed {where}: " + ", ".join(f.name for f in fields(node))


def changes_numbers(param: str) -> bool:
    """Whether a flattened config key (a run's param) can change what the run computes."""
    top, _, rest = param.partition(".")
    return top not in _NOT_IN_HASH and not (
        (top == "dataset" and rest in _DATA_LOCATION_KEYS) or (top == "backend" and rest in _BACKEND_DEFAULT_KEYS)
    )


def is_data_provenance(key: str) -> bool:
    """Whether a dotted config key says where a run's data came from, or what its files' checksums are:
    the run's MLflow dataset input records that, so its params keep to the settings a user sets."""
    section, _, rest = key.partition(".")
    if section != "dataset":
        return False
    return rest in _DATA_LOCATION_KEYS or rest == "folder" or rest.endswith((".name", ".sha256"))


def as_flat_dict(cfg: Config) -> dict[str, object]:
    """The config as dotted keys: what MLflow stores as params."""
    return flatten(asdict(cfg))


def config_hash(cfg: Config) -> str:
    """A short hash of everything that determines a run's numbers (not where it is logged).

    A backend key added later (backend.keras_backend, compile, options) counts only when it is not at its
    default, so that the runs logged before it existed keep their hashes and resume still finds them.
    """
    data = asdict(cfg)
    for key in _NOT_IN_HASH:
        data.pop(key)
    for key in _DATA_LOCATION_KEYS:
        data["dataset"].pop(key)
    for key in _BACKEND_DEFAULT_KEYS:
        data["backend"].pop(key)
    for key, default in _LATER_BACKEND_KEYS.items():
        if data["backend"][key] == default:
            data["backend"].pop(key)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def backend_label(
    name: str, keras_backend: str | None, compiled: bool = False, options: dict[str, object] | None = None
) -> str:
    """The backend as runs and reports name it: its name, with ``[jax]`` for Keras on a non-default engine,
    ``+compile`` for torch through torch.compile (as bench names it) and ``{key=value}`` for an installed
    backend's options: each a model of its own, compared with the others in the report."""
    label = f"{name}[{keras_backend}]" if keras_backend and keras_backend != KERAS_BACKENDS[0] else name
    label += "+compile" if compiled else ""
    return label + ("{" + ",".join(f"{k}={v}" for k, v in sorted(options.items())) + "}" if options else "")


def run_name(cfg: Config) -> str:
    """A readable run name such as ``numpy-sigmoid-lr0.1-s0-e100-b128`` (``keras[jax]-softmax-...``, no options): what
    a sweep usually varies first, seed included, since MLflow's runs table shows only the first ~25
    characters and rows that differ only past them look like one run twice."""
    batch = "" if cfg.batch_size is None else f"-b{cfg.batch_size}"
    data = "" if cfg.dataset.name == "mnist" else f"-{cfg.dataset.name}"
    backend = backend_label(cfg.backend.name, cfg.backend.keras_backend, cfg.backend.compile)
    return f"{backend}-{cfg.activation}-lr{cfg.lr:g}-s{cfg.seed}-e{cfg.epochs}{batch}{data}"


def register() -> None:
    """Make the schema available to Hydra as ``base_config``."""
    from hydra.core.config_store import ConfigStore  # here: the read-side tools use this module without Hydra

    ConfigStore.instance().store(name="base_config", node=Config)
