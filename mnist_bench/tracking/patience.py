"""A tracking server's calls kept within the run's patience, and one line while it does not answer."""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass

from mnist_bench.config import SERVER_PATIENCE_S
from mnist_bench.tracking.uris import is_server, redact

SERVER_NOTICE_EVERY_S = 10.0  # while a tracking server does not answer, say so this often at most
SERVER_ATTEMPT_S = 8  # one attempt of a call to a tracking server, at most: the first notice comes within 10 s


def bound_server_waits(uri: str, patience_s: float = SERVER_PATIENCE_S) -> None:
    """Keep each call to a tracking server within ``patience_s`` and say, in one line, when it does not answer.

    MLflow retries a call for about 4 minutes (7 retries, pauses from 2 s doubling, 120 s an attempt), and
    urllib3 logs every retry with its internals. Here (retry_schedule) the pauses fill most of the patience,
    so that a refused connection (each attempt fails at once) is tried for about as long as the patience
    says, and the attempts, which a frozen server makes time out, the rest. Set through MLflow's variables,
    which it reads at every call, so the workers this process starts inherit them."""
    if not is_server(uri):
        return
    retries, factor, attempt_s = retry_schedule(patience_s)
    os.environ.update(
        MLFLOW_HTTP_REQUEST_MAX_RETRIES=str(retries),
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=str(factor),
        MLFLOW_HTTP_REQUEST_BACKOFF_JITTER="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT=str(attempt_s),
    )
    retrying = logging.getLogger("urllib3.connectionpool")
    for old in [f for f in retrying.filters if isinstance(f, _ServerNotice)]:
        retrying.removeFilter(old)
    retrying.addFilter(_ServerNotice(redact(uri), patience_s))


MAX_RETRIES = 10  # MLflow's own limit (_MLFLOW_HTTP_REQUEST_MAX_RETRIES_LIMIT)
LONGEST_PAUSE_S = 120  # urllib3's cap on one pause (Retry.DEFAULT_BACKOFF_MAX)
PAUSES_SHARE = 0.75  # of the patience, for the pauses between attempts


def _pauses(retries: int, factor: int) -> int:
    """The seconds urllib3 pauses in all between ``retries + 1`` attempts: 0, 2f, 4f, ... each capped."""
    return sum(min(factor * 2**k, LONGEST_PAUSE_S) for k in range(1, retries))


def retry_schedule(patience_s: float) -> tuple[int, int, int]:
    """Retries, backoff factor (a whole number, for MLflow) and seconds an attempt for a call to take at most
    ``patience_s``: pauses that come near PAUSES_SHARE of the patience, in as many retries as keep within a
    tenth of the nearest, and attempts that fit the rest. The pauses were half the patience rounded down to a
    power of 2: refused connections gave up after 30-37 s of 120."""
    target = PAUSES_SHARE * patience_s
    choices = [
        (_pauses(retries, factor), retries, factor)
        for retries in range(2, MAX_RETRIES + 1)
        for factor in range(1, int(target // 2) + 2)
        if _pauses(retries, factor) <= max(target, 2)
    ]
    nearest = max(pauses for pauses, _, _ in choices)
    near = [choice for choice in choices if choice[0] >= 0.9 * nearest]
    pauses, retries, factor = max(near, key=lambda choice: (choice[1], choice[0], -choice[2]))
    attempt_s = max(1, min(SERVER_ATTEMPT_S, int((patience_s - pauses) / (retries + 1))))
    return retries, factor, attempt_s


# urllib3's line for each retry of a call; a sweep's record factory (hydra_app) has already formatted it.
_RETRYING = re.compile(r"Retrying \(.*?\) after connection broken by '(?P<error>.*)': \S*", re.DOTALL)


@dataclass
class _ServerNotice(logging.Filter):
    """urllib3's warning for each retry of a call, as one line of ours at most every SERVER_NOTICE_EVERY_S."""

    uri: str
    patience_s: float
    said_at: float = -math.inf

    def filter(self, record: logging.LogRecord) -> bool:
        retry = _RETRYING.fullmatch(record.getMessage())
        if retry is None:
            return True
        if time.monotonic() - self.said_at < SERVER_NOTICE_EVERY_S:
            return False
        self.said_at = time.monotonic()
        # NewConnectionError("HTTPConnection(...): Failed to establish a new connection: [Errno 111] Connection
        # refused") says "[Errno 111] Connection refused"; RemoteDisconnected('Remote end closed ...') its text.
        reason = re.sub(r"^\w+\(['\"]?|['\"]?\)$", "", retry["error"]).rsplit(": ", 1)[-1]
        record.msg = (
            f"tracking server {self.uri} is not answering ({reason}); "
            f"each call is tried for up to {self.patience_s:g} s (tracking.patience_s)"
        )
        record.args = ()
        return True


_spent: set[str] = set()  # servers this process gave up on: their patience is spent


def spend_patience(uri: str) -> None:
    """A call to ``uri`` has used up its patience: the calls that close what is open (an error tag, a run's end
    status) and a later job's health check of that server try once each, instead of the whole patience again."""
    _spent.add(uri)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"


def patience_spent(uri: str) -> bool:
    return uri in _spent


def renew_patience(uri: str) -> None:
    """The server answers again: its calls get their whole patience (bound_server_waits sets it)."""
    _spent.discard(uri)


def unreachable(err: BaseException) -> bool:
    """Whether a call failed because the tracking server did not answer (MLflow wraps requests' error)."""
    import requests

    return isinstance(err.__cause__ or err.__context__, requests.RequestException)
