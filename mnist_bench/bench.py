"""``mnist-bench bench``: every backend side by side in one process, against the machine and against Keras.

In one process, on full MNIST (float32, inputs in [0, 1]):

1. the roofline floor of an epoch, measured now (see ``mnist_bench.roofline``);
2. the seconds of one epoch of each backend (tf and keras also with XLA; by default every backend whose
   framework imports here), full batch and minibatch, as the backend times it (training compute only,
   after a warm-up epoch), each over the floor at the same thread count (as runs choose them: numpy
   and torch minibatches 1, else all cores; or --threads). The backends take turns epoch by epoch, A B C A B C ...,
   so a drift in the machine's speed hits them alike, and each pair gets its ratio with a 95% interval
   that resamples whole rounds, and a verdict by the rules of ``mnist_bench.timing`` (the conditions of
   the rounds, load and other processes' CPU share, make a verdict ``unreliable`` as they would a run's);
   each figure names its form (``FORMS``: a Python loop, one compiled function per epoch, XLA or not,
   ``model.fit``). With minibatches, each backend with a hand-written same-work peer (``mnist_bench.peers``)
   is followed in every round by the peer's epoch, and gets its ratio to it (> 1: our loop is slower);
3. the training seconds each backend takes to reach the target test accuracy (0.92) with the fast
   preset (conf/experiment/fast.yaml), and the same for the model most Keras users would write:
   ``Dense(10, softmax)`` trained by ``model.fit`` with Adam at Keras' defaults (lr 0.001, batch 32).
   Each is timed per epoch with test accuracy checked after every epoch (untimed), over seeds
   0..repeats-1; the ratio is Keras+Adam's time over each backend's.

Figures are min, median and max over the repeats. The load average before and after is printed
with them: on a shared machine it says how far to trust them.

    mnist-bench bench [--threads N] [--repeats 5]
                      [--backends numpy,tf,tf+xla,keras,keras+xla,keras[jax],jax,torch,torch+compile,keras[torch]]
                      [--reference keras-adam|none] [--batch-size 256] [--json PATH]

Exit status: 0 when every figure was measured, 2 on bad input (one line).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from mnist_bench import atomic, backends, data, experiment, hydra_app, machine, peers, roofline, timing
from mnist_bench.backends import base
from mnist_bench.config import KERAS_BACKENDS, BackendConfig, Config, DatasetConfig, TimingConfig, TrainingSpec
from mnist_bench.errors import EXIT_OK, ArgumentParser, UserError, run_tool
from mnist_bench.stepper import EpochStepper

PROG = "mnist-bench bench"
# Each label bench takes, and how its epoch runs (the form its figures are of): a backend, tf/keras with
# backend.xla=true ("tf+xla"), torch with backend.compile=true ("torch+compile"), or Keras on another
# engine ("keras[jax]").
FORMS = {
    "numpy": "Python loop over NumPy/BLAS calls",
    "tf": "one tf.function per epoch (graph, no XLA)",
    "tf+xla": "one tf.function per epoch, XLA-compiled (jit_compile)",
    "keras": "model.fit, its tf.function train step",
    "keras+xla": "model.fit, its train step XLA-compiled",
    "keras[jax]": "model.fit on JAX, its train step jitted (XLA)",
    "jax": "one jax.jit per epoch, lax.scan over batches (XLA)",
    "torch": "Python loop, one eager torch step a batch",
    "torch+compile": "Python loop, one torch.compile'd step a batch",
    "keras[torch]": "model.fit on PyTorch, its train step eager",
}
BACKENDS = tuple(FORMS)
REFERENCES = ("keras-adam", "none")
TARGET = 0.92
MAX_REFERENCE_EPOCHS = 10

# One contender's figure for one seed: (training seconds to TARGET or None, epochs run, final test accuracy).
Attempt = tuple[float | None, int, float]


class BenchError(UserError):
    """Bad input: one line, exit status 2."""


@dataclass(frozen=True)
class EpochFigure:
    backend: str
    batch: str
    threads: int
    seconds: timing.Spread
    floor_ratio: float
    form: str


@dataclass(frozen=True)
class PeerFigure:
    """A backend's minibatch epoch over its hand-written same-work peer's (mnist_bench.peers), the two timed in
    turns: our epochs and the peer's, the ratio of medians (> 1: the harness is slower), its 95% interval, and
    the verdict on the peer (``faster``: the peer beats our loop beyond the interval)."""

    backend: str
    batch: str
    seconds: timing.Spread
    peer_seconds: timing.Spread
    ratio: float
    ratio_low: float
    ratio_high: float
    verdict: str


@dataclass(frozen=True)
class PairFigure:
    """Two backends' epochs timed in the same alternating rounds: first's seconds over second's (> 1: second
    is faster), its 95% interval, and the verdict on the second (mnist_bench.timing's rules)."""

    batch: str
    first: str
    second: str
    speed_ratio: float
    speed_ratio_low: float
    speed_ratio_high: float
    speed_verdict: str


@dataclass(frozen=True)
class TargetFigure:
    contender: str
    seconds: timing.Spread | None  # None when some repeat never reached the target
    epochs: list[int]
    final_test_accuracy: list[float]


@functools.cache
def _composed(*overrides: str) -> Config:
    return hydra_app.compose(*overrides)


def mnist_spec() -> DatasetConfig:
    """conf/dataset/mnist.yaml as the harness composes it."""
    return copy.deepcopy(_composed().dataset)


def load_mnist() -> base.TrainData:
    """Full MNIST as runs find it (dataset.dir, $MNIST_BENCH_DATA_DIR, the cache, a mirror), normalized float32."""
    dataset = data.load(mnist_spec())
    return base.prepare(dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, Config(normalize=True).spec())


def backend_config(label: str, threads: int | None) -> BackendConfig:
    """``numpy``, ``tf+xla``, ``keras[jax]``, ... as a backend config with one warm-up epoch (not counted)."""
    name, engine, compiler = backends.split_label(label)
    return BackendConfig(
        name=name,
        threads=threads,
        warmup_epochs=1,
        xla=compiler == "xla",
        compile=compiler == "compile",
        keras_backend=engine or KERAS_BACKENDS[0],
    )


def fast_preset(label: str, threads: int | None, seed: int) -> Config:
    """conf/experiment/fast.yaml, composed as a run composes it, on the backend ``label`` names."""
    return dataclasses.replace(_composed("+experiment=fast"), backend=backend_config(label, threads), seed=seed)


def _ready(cfg: Config) -> tuple[base.Backend, TrainingSpec]:
    """The backend and what it is given, set up as a run sets them up: threads chosen as a run chooses them,
    then the device, which also sets TF's thread pools before its runtime starts."""
    spec = experiment.with_threads(cfg, jobs_at_once=1).spec()
    backend = backends.get(spec.backend.name)
    backend.resolve_device(spec)
    return backend, spec


def epoch_rounds(
    labels: Sequence[str], train: base.TrainData, threads: int | None, batch_size: int | None, rounds: int
) -> tuple[dict[str, list[float]], dict[str, int], timing.ConditionsProbe]:
    """Each backend's epoch seconds (softmax SGD at lr 0.1, after its warm-up and one untimed epoch), timed
    in alternating rounds, A B C A B C ..., so that a drift in the machine's speed hits every backend alike;
    the threads each used; and the probe of the conditions, started with the first round. With minibatches,
    each backend that has a hand-written peer (mnist_bench.peers) then trains as many epochs in turns with the
    peer's (at the same batch size, rate and threads), under ``beside_peer_key(label)`` and
    ``peer_key(label)``."""
    steppers: dict[str, EpochStepper] = {}
    peer_steppers: dict[str, peers.PeerStepper] = {}
    used: dict[str, int] = {}
    try:
        for label in labels:
            cfg = Config(
                backend=backend_config(label, threads),
                activation="softmax",
                batch_size=batch_size,
                epochs=2 * rounds + 1,
            )
            backend, spec = _ready(cfg)
            steppers[label] = EpochStepper(backend, train, spec)
            used[label] = spec.backend.threads
            if batch_size is not None and peers.peer_file(label):
                peer_steppers[label] = peers.PeerStepper(label, train, batch_size, spec.lr, spec.backend.threads)
        probe = timing.ConditionsProbe()
        seconds = {label: [] for label in labels}
        seconds |= {key(label): [] for label in peer_steppers for key in (beside_peer_key, peer_key)}
        for _ in range(rounds):
            for label, stepper in steppers.items():
                timing.settle()  # the last contender's threads, still spinning, would run beside this one's epoch
                seconds[label].append(stepper.step())
        # Each backend beside its peer alone: right after another framework's epoch, TF's XLA-compiled epoch
        # measured 1.22x its peer, and 1.00x after its peer's (docs/performance.md).
        for label, peer in peer_steppers.items():
            for _ in range(rounds):
                timing.settle()
                seconds[beside_peer_key(label)].append(steppers[label].step())
                timing.settle()
                seconds[peer_key(label)].append(peer.step())
    finally:
        for stepper in steppers.values():
            stepper.close()
    return seconds, used, probe


def peer_key(label: str) -> str:
    """Where epoch_rounds keeps the seconds of a backend's peer."""
    return f"{label} peer"


def beside_peer_key(label: str) -> str:
    """Where epoch_rounds keeps the seconds of a backend's epochs timed in turn with its peer's."""
    return f"{label} beside its peer"


def time_to_target(label: str, train: base.TrainData, threads: int | None, seed: int) -> Attempt:
    """(training seconds until test accuracy >= TARGET or None, epochs run, final test accuracy) of the fast preset."""
    history: list[base.EpochMetrics] = []
    backend, spec = _ready(fast_preset(label, threads, seed))
    backend.fit(train, spec, lambda m: history.append(m) or m.test_accuracy >= TARGET)
    reached = history[-1].test_accuracy >= TARGET
    return (sum(m.epoch_seconds for m in history) if reached else None), len(history), history[-1].test_accuracy


def keras_adam_time_to_target(train: base.TrainData, threads: int | None, seed: int) -> Attempt:
    """The same figure for Dense(10, softmax) + Adam + model.fit at Keras' defaults, on TensorFlow.

    One training step on a throwaway batch first traces and compiles fit's step function (as the
    backends' warm-up epochs do); weights and Adam's state are then reset to where they started.
    """
    backends.get("keras").resolve_device(Config(backend=BackendConfig(name="keras", threads=threads)).spec())
    from mnist_bench.backends import keras_backend

    # Keras on its default engine, TensorFlow, whichever engine the backends measured before loaded last
    keras = keras_backend.load(KERAS_BACKENDS[0]).keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((train.n_features,)), keras.layers.Dense(base.NUM_CLASSES, "softmax")])
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    start = [model.get_weights(), [v.numpy() for v in model.optimizer.variables]]
    model.fit(train.x_train[:32], train.y_train[:32], epochs=1, verbose=0)
    model.set_weights(start[0])
    for variable, value in zip(model.optimizer.variables, start[1], strict=True):
        variable.assign(value)

    class TimeToTarget(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self.accuracy = 0.0

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None) -> None:
            self.seconds.append(time.perf_counter() - self.start)
            weights, bias = self.model.get_weights()
            self.accuracy = float(((train.x_test @ weights + bias).argmax(axis=1) == train.y_test).mean())
            self.model.stop_training = self.accuracy >= TARGET

    timer = TimeToTarget()
    model.fit(train.x_train, train.y_train, epochs=MAX_REFERENCE_EPOCHS, verbose=0, callbacks=[timer])
    reached = timer.accuracy >= TARGET
    return (sum(timer.seconds) if reached else None), len(timer.seconds), timer.accuracy


def _target_figure(contender: str, measure: Callable[[int], Attempt], repeats: int) -> TargetFigure:
    results = [measure(seed) for seed in range(repeats)]
    seconds = [s for s, _, _ in results]
    spread = timing.Spread.of(seconds) if all(s is not None for s in seconds) else None
    return TargetFigure(contender, spread, [e for _, e, _ in results], [a for _, _, a in results])


# ---------------------------------------------------------------- command line


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: backends must be a comma-separated list of {', '.join(BACKENDS)}")
    return names


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number >= 1")
    return int(text)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--threads",
        type=machine.measured_threads,
        help="BLAS/TF/torch threads (default: as runs choose: numpy and torch minibatches 1, else all)",
    )
    parser.add_argument("--repeats", type=_positive, default=5, help="epochs, and seeds, per figure (default 5)")
    parser.add_argument(
        "--backends", type=_names, help=f"comma-separated ({','.join(BACKENDS)}; default: those that import here)"
    )
    parser.add_argument(
        "--reference", choices=REFERENCES, help="time-to-target reference (default: keras-adam where Keras imports)"
    )
    parser.add_argument("--batch-size", type=_positive, default=256, help="minibatch of the epoch figures (256)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    if args.json is not None and not args.json.parent.is_dir():
        raise BenchError(f"--json {args.json}: folder {args.json.parent} does not exist")
    if args.backends is None:
        args.backends = [label for label in BACKENDS if not backends.unavailable(label)]
    if args.reference is None:
        args.reference = "none" if backends.unavailable("keras") else "keras-adam"
    needed = set(args.backends)
    if args.reference == "keras-adam":
        needed.add("keras")
    for label in sorted(needed):  # before anything is measured: a missing TensorFlow is bad input
        if why := backends.unavailable(label):
            raise BenchError(f"{why} (or leave it out: --backends numpy --reference none)")
    return args


def _peer_figures(
    batch: str, names: Sequence[str], times: dict[str, list[float]], probe: timing.ConditionsProbe
) -> list[PeerFigure]:
    """Each backend timed in turn with its peer (epoch_rounds) over that peer, printed: ratio > 1 when ours is
    slower."""
    figures = []
    for name in names:
        if peer_key(name) not in times:
            continue
        ours, peer_seconds = times[beside_peer_key(name)], times[peer_key(name)]
        reasons = [(who, timing.unstable_reasons(probe.finish(seconds), TimingConfig()))
                   for who, seconds in ((name, ours), ("its peer", peer_seconds))]  # fmt: skip
        why = "; ".join(f"{who}: {'; '.join(reason)}" for who, reason in reasons if reason)
        verdict = timing.compare_paired(ours, peer_seconds, why)
        spreads = (timing.Spread.of(ours), timing.Spread.of(peer_seconds))
        figure = PeerFigure(name, batch, *spreads, verdict.ratio, verdict.low, verdict.high, verdict.verdict)
        if not figures:
            print("  each backend over its hand-written same-work peer (tests/benchmarks/peers), in turns with it:")
        note = f"  {timing.UNRELIABLE} ({why})" if why else ""
        shown = f"{verdict.ratio:.2f} [{verdict.low:.2f}-{verdict.high:.2f}]"
        print(f"    {name:10s} {shown}  ours {figure.seconds}  peer {figure.peer_seconds}{note}")
        figures.append(figure)
    return figures


def _load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(PROG, lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    train = load_mnist()
    if args.batch_size > len(train.x_train):  # before anything is measured
        raise BenchError(
            f"--batch-size {args.batch_size}: MNIST has {len(train.x_train)} training images; give 1 to that"
        )

    load_before = _load_average()
    print(f"cpu: {machine.cpu_model()}, {machine.cpu_count()} cores; load average {load_before}")
    # The floor at every thread count the figures use: the one given, or 1 (numpy, torch minibatches) and all cores.
    roofs = {n: roofline.measure(n) for n in sorted({args.threads} if args.threads else {1, machine.cpu_count()})}
    for threads, roof in roofs.items():
        print(
            f"roofline, {threads} threads: read {roof.read_gb_per_s:.1f} GB/s, sgemm {roof.sgemm_gflop_per_s:.0f}"
            f" GFLOP/s -> epoch floor {roof.epoch_floor_for(train.x_train) * 1000:.1f} ms"
        )

    def floor(threads: int) -> float:
        return roofs[threads].epoch_floor_for(train.x_train)

    epochs: list[EpochFigure] = []
    pairs: list[PairFigure] = []
    peer_figures: list[PeerFigure] = []
    for batch, size in (("full", None), (f"b{args.batch_size}", args.batch_size)):
        print(f"\n{batch} epochs in {args.repeats} alternating rounds: seconds, median (min-max), x the floor")
        times, threads, probe = epoch_rounds(args.backends, train, args.threads, size, args.repeats)
        unstable = {}
        for name in args.backends:
            conditions = probe.finish(times[name])
            unstable[name] = "; ".join(timing.unstable_reasons(conditions, TimingConfig()))
            seconds = timing.Spread.of(times[name])
            ratio = seconds.median / floor(threads[name])
            figure = EpochFigure(name, batch, threads[name], seconds, ratio, FORMS[name])
            epochs.append(figure)
            note = f"  unstable: {unstable[name]}" if unstable[name] else ""
            print(f"  {name:10s} {threads[name]} threads  {seconds!s:24s} {ratio:6.1f}x  {figure.form}{note}")
        print("  each pair, round by round (first's seconds over second's, 95% interval):")
        for first, second in itertools.combinations(args.backends, 2):
            why = "; ".join(f"{n}: {unstable[n]}" for n in (first, second) if unstable[n])
            verdict = timing.compare_paired(times[first], times[second], why)
            pairs.append(PairFigure(batch, first, second, verdict.ratio, verdict.low, verdict.high, verdict.verdict))
            shown = f"{verdict.ratio:.2f} [{verdict.low:.2f}-{verdict.high:.2f}]"
            said = f"{timing.UNRELIABLE} (unstable above)" if why else verdict.verdict
            print(f"    {second} vs {first}: {shown}  {second} {said}")
        peer_figures.extend(_peer_figures(batch, args.backends, times, probe))

    print(f"\ntraining seconds to {TARGET} test accuracy, median (min-max) over seeds 0-{args.repeats - 1}")
    contenders: dict[str, Callable[[int], Attempt]] = {
        f"{name} fast": functools.partial(time_to_target, name, train, args.threads) for name in args.backends
    }
    if args.reference == "keras-adam":
        contenders["keras model.fit + Adam"] = functools.partial(keras_adam_time_to_target, train, args.threads)
    targets = []
    for contender, measure in contenders.items():
        figure = _target_figure(contender, measure, args.repeats)
        targets.append(figure)
        shown = str(figure.seconds) if figure.seconds else f"not reached every time: {figure.final_test_accuracy}"
        print(f"  {contender:26s} {shown:24s} epochs {figure.epochs}")

    reference = targets[-1] if args.reference == "keras-adam" else None
    speedups = {}
    if reference is not None and reference.seconds is not None:
        print("\nKeras+Adam's time to target over each backend's (medians)")
        for figure in targets[:-1]:
            if figure.seconds is not None:
                speedups[figure.contender] = reference.seconds.median / figure.seconds.median
                print(f"  {figure.contender:26s} {speedups[figure.contender]:6.1f}x faster")
    load_after = _load_average()
    print(f"\nload average before {load_before}, after {load_after}")

    if args.json is not None:
        report = {
            "cpu_model": machine.cpu_model(),
            "cpu_count": machine.cpu_count(),
            "repeats": args.repeats,
            "load_average": {"before": load_before, "after": load_after},
            "rooflines": [
                asdict(roof) | {"epoch_floor_seconds": roof.epoch_floor_for(train.x_train)} for roof in roofs.values()
            ],
            "epochs": [asdict(e) for e in epochs],
            "pairs": [asdict(p) for p in pairs],
            "peers": [asdict(p) for p in peer_figures],
            "time_to_target": {"target": TARGET, "figures": [asdict(t) for t in targets]},
            "keras_adam_over": speedups,
        }
        try:
            atomic.write(args.json, json.dumps(report, indent=2).encode())
        except OSError as err:
            raise BenchError(f"--json {args.json}: cannot write it ({err.strerror})") from None
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
