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
    urllib3 logs every retry with its internals. Here the pauses (0, 2, 4, ... s) take at most half the
    patience and the attempts the other half. Set through MLflow's variables, which it reads at every call,
    so the workers this process starts inherit them."""
    if not is_server(uri):
        return
    retries = int(math.log2(patience_s / 2 + 2))  # the pauses add up to 2**retries - 2 s
    os.environ.update(
        MLFLOW_HTTP_REQUEST_MAX_RETRIES=str(retries),
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
        MLFLOW_HTTP_REQUEST_BACKOFF_JITTER="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT=str(max(1, min(SERVER_ATTEMPT_S, int(patience_s / 2 / (retries + 1))))),
    )
    retrying = logging.getLogger("urllib3.connectionpool")
    for old in [f for f in retrying.filters if isinstance(f, _ServerNotice)]:
        retrying.removeFilter(old)
    retrying.addFilter(_ServerNotice(redact(uri), patience_s))


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


def unreachable(err: BaseException) -> bool:
    """Whether a call failed because the tracking server did not answer (MLflow wraps requests' error)."""
    import requests

    return isinstance(err.__cause__ or err.__context__, requests.RequestException)
