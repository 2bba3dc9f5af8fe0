"""A sweep's cells trained in rounds: epoch k of every cell, then epoch k + 1, so that a drift in the machine's
speed or a passing neighbour hits every cell of a round alike and two cells compare round by round
(timing.compare_rounds) instead of as whole runs timed minutes apart.

Each cell is its own job, in its own thread of the sweep's process, and exactly one of them runs at any
moment: a cell holds the turn from the start of its job (set-up, warm-up and first epoch in round 1) and hands
it on after each epoch, from its epoch callback, so waiting happens between epochs, never inside a timed one.
Round 1 follows the launcher, which starts the jobs one after another; from round 2 on, each round visits the
cells still training in an order drawn for that round (seeded), so that no cell always follows the same one.
A cell that ends (its last epoch done, stopped early, failed or skipped) finishes its run in its own turn and
leaves the rotation.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from mnist_bench import machine, timing

MEMORY_SHARE = 0.5  # of the memory available at a sweep's start, for the data copies one batch of rounds holds
QUIET_LOOK_S = 0.05  # one look at other processes' CPU share (/proc/stat counts in 10 ms ticks)
QUIET_WAIT_MAX_S = 1.0  # the longest wait for other processes to go quiet after a disturbed epoch


def cells_that_fit(data_copy_bytes: Sequence[int]) -> int | None:
    """How many cells one batch of rounds may hold, given each cell's own copy of its data: in rounds every cell
    of a batch holds it at once (24 cells of full MNIST, 12 of them TensorFlow's, peaked at 4.4 GB), so as many
    as fit in MEMORY_SHARE of the memory available now. None when all of them fit, or memory cannot be read."""
    available, largest = machine.available_memory_bytes(), max(data_copy_bytes, default=0)
    if available is None or largest == 0:
        return None
    fit = max(1, int(MEMORY_SHARE * available // largest))
    return fit if fit < len(data_copy_bytes) else None


def wait_for_quiet(max_other_cpu_share: float) -> bool:
    """Wait, at most QUIET_WAIT_MAX_S, until other processes use no more than ``max_other_cpu_share`` of the CPU
    over a look; whether they did. A neighbour busy in bursts then mostly falls between epochs, not in them."""
    deadline = time.perf_counter() + QUIET_WAIT_MAX_S
    while time.perf_counter() < deadline:
        share = timing.other_cpu_share_during(QUIET_LOOK_S)
        if share is None or share <= max_other_cpu_share:
            return True
    return False


class Turn:
    """One cell's place in the rounds, for its epoch callback."""

    def __init__(self, rounds: Rounds) -> None:
        self.rounds = rounds
        self.waited_seconds = 0.0  # in next_epoch, while the other cells trained
        # The cell's heartbeat while it waits (set once its run is open): called by the cell holding the turn,
        # between its epochs, so that no store call falls beside a timed epoch and a long wait never looks dead.
        self.keep_alive: Callable[[], None] = lambda: None

    @property
    def session(self) -> str:
        """Names the rounds this cell trained in: cells with the same one can be compared round by round."""
        return self.rounds.session

    @property
    def round(self) -> int:
        """The round the cell's current epoch runs in (1 for the first)."""
        return self.rounds.round

    def next_epoch(self, other_cpu_share: float | None, max_other_cpu_share: float) -> None:
        """Hand the turn on and wait for it back; raises what stopped the rounds (Ctrl-C, SIGTERM, fail_fast).
        The epoch just timed had other processes use ``other_cpu_share`` of the CPU: above the most a clean
        epoch allows, the next waits for quiet first."""
        start = time.perf_counter()
        try:
            disturbed = other_cpu_share is not None and other_cpu_share > max_other_cpu_share
            self.rounds.pass_turn(self, disturbed, max_other_cpu_share)
        finally:
            self.waited_seconds += time.perf_counter() - start


class Rounds:
    """Turn-taking among a sweep's cells, driven by the sweep's main thread: ``launch`` each job (the
    launcher calls it through the job function), then ``run`` the remaining rounds, or ``stop`` them."""

    def __init__(self) -> None:
        self.session = uuid.uuid4().hex[:12]
        self.round = 1
        self._changed = threading.Condition()
        self._holder: Turn | None = None  # whose turn it is; None: the main thread's (launching)
        self._launching = True
        self._rotation: list[Turn] = []  # the cells still training, in launch order
        self._queue: list[Turn] = []  # this round's cells still to take their turn
        self._stop: BaseException | None = None
        self._error: BaseException | None = None  # what a cell raised past its job's own isolation
        self._patient = True  # whether a disturbed epoch is followed by a wait for quiet

    def launch(self, train: Callable[[Turn], None], name: str) -> None:
        """Start one cell's job in a thread holding the turn; return once its first turn has ended."""
        turn = Turn(self)
        with self._changed:
            self._rotation.append(turn)
            self._holder = turn
        threading.Thread(target=self._cell, args=(train, turn), name=f"mnist-bench {name}", daemon=True).start()
        with self._changed:
            self._changed.wait_for(lambda: self._holder is None)

    def run(self) -> None:
        """After the last launch: rounds 2, 3, ... until every cell has left; then raises what a cell raised
        past its job's own failure isolation, if one did."""
        with self._changed:
            self._launching = False
            if self._rotation and self._holder is None:  # else a cell interrupted in round 1 still holds it
                self._hand_on()
            self._changed.wait_for(lambda: not self._rotation)
        if self._error is not None:
            raise self._error

    def halt(self, why: BaseException) -> None:
        """Every cell raises ``why`` at its next turn, the one training now once its epoch ends."""
        with self._changed:
            self._stop = self._stop or why

    def stop(self, why: BaseException) -> None:
        """``halt``, then wait until every cell has closed its run and left."""
        self.halt(why)
        self.run()

    def pass_turn(self, turn: Turn, disturbed: bool, max_other_cpu_share: float) -> None:
        """Between two timed epochs: the waiting cells' beats, this process's threads settled, and after a
        disturbed epoch a wait for quiet, unless the last such wait found none (a machine busy throughout:
        waiting again would only lengthen the sweep; the next clean epoch renews the patience)."""
        with self._changed:
            waiting = [other for other in self._rotation if other is not turn]
        for other in waiting:
            with contextlib.suppress(Exception):  # a store that fails now is that cell's to report, at its turn
                other.keep_alive()
        timing.settle()
        if not disturbed:
            self._patient = True
        elif self._patient:
            self._patient = wait_for_quiet(max_other_cpu_share)
        with self._changed:
            self._raise_if_stopped()
            self._hand_on()
            self._changed.wait_for(lambda: self._holder is turn)
            self._raise_if_stopped()

    def _cell(self, train: Callable[[Turn], None], turn: Turn) -> None:
        try:
            train(turn)
        except BaseException as err:
            if self._stop is None or not isinstance(err, type(self._stop)):
                self._error = self._error or err
        finally:
            with self._changed:
                self._rotation.remove(turn)
                self._hand_on()

    def _hand_on(self) -> None:
        """The turn to the main thread while it launches, else to the next cell of the round, drawing the next
        round's order when this one is done (lock held)."""
        if self._launching:
            self._holder = None
        else:
            self._queue = [turn for turn in self._queue if turn in self._rotation]
            if not self._queue and self._rotation:
                self.round += 1
                self._queue = random.Random(self.round).sample(self._rotation, len(self._rotation))
            self._holder = self._queue.pop(0) if self._queue else None
        self._changed.notify_all()

    def _raise_if_stopped(self) -> None:
        if self._stop is not None:
            raise type(self._stop)(*self._stop.args)
