"""``mnist-bench server``: the shared MLflow tracking server of a cluster, on PostgreSQL.

A thin wrapper over ``mlflow server`` that does what a cluster needs and nothing else: a
PostgreSQL backend store (many workers write at once, which SQLite cannot take), artifacts
proxied through the server (workers need no shared disk, only HTTP), a loopback bind unless
``--host`` says otherwise, and the tracking URI workers should use printed at start.

The database password never appears on a command line (``ps`` shows it to every user) nor in
any output: give it in $MNIST_BENCH_DB_PASSWORD or $PGPASSWORD, in ~/.pgpass, or through a
libpq service file (``postgresql:///?service=NAME``). libpq reads it in the server's processes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

from mnist_bench.errors import EXIT_FAILED, EXIT_OK, ArgumentParser, UserError, run_tool, write_failure
from mnist_bench.tracking import holds_password, redact

PASSWORD_ENV = "MNIST_BENCH_DB_PASSWORD"
SCHEMES = ("postgresql", "postgresql+psycopg2", "postgres", "postgresql+psycopg")
# SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the [cluster] extra installs psycopg2: say so.
DEFAULT_DRIVER = "postgresql+psycopg2"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
PROG = "mnist-bench server"
STOP_GRACE_S = 10


class ServerError(UserError):
    """Input or environment that keeps the server from starting; the message says what to do."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(
        prog=PROG,
        description="Run the MLflow tracking server for a cluster: PostgreSQL store, proxied artifacts.",
        epilog="Arguments after -- go to `mlflow server` unchanged. The password comes from "
        f"${PASSWORD_ENV} or $PGPASSWORD, ~/.pgpass, or a libpq service file: never from the URI.",
    )
    parser.add_argument(
        "--backend-store-uri",
        "--db",
        dest="db",
        default=os.environ.get("MNIST_BENCH_DB_URI"),
        help="postgresql://USER@HOST:PORT/DB or postgresql:///?service=NAME, no password "
        "(default: $MNIST_BENCH_DB_URI)",
    )
    parser.add_argument(
        "--artifacts-destination",
        default="mlartifacts",
        help="folder (or s3://, gs://... URI) that holds every run's artifacts (default: ./mlartifacts)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=_port, default=5000, help="port to listen on (default: 5000)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (default: 2)")
    parser.add_argument(
        "--allowed-hosts",
        help="Host headers the server answers (default: MLflow's loopback/private ones, plus this "
        "machine's name when --host is not loopback)",
    )
    parser.add_argument("--no-check", action="store_true", help="skip connecting to the database before starting")
    parser.add_argument("mlflow_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mlflow_args and args.mlflow_args[0] == "--":
        args.mlflow_args = args.mlflow_args[1:]
    return args


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: give a number from 1 to 65535")
    return int(text)


def check_port_free(host: str, port: int) -> None:
    """Fail before anything is printed or started when the server could not listen there."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as err:
        raise ServerError(
            f"cannot listen on {host}:{port} ({os.strerror(err.errno) if err.errno else err}); "
            "stop what uses it or choose another --port"
        ) from None


def check_store_uri(uri: str | None) -> str:
    """The backend store URI in SQLAlchemy's spelling; refuses a password in it."""
    if not uri:
        raise ServerError("--backend-store-uri is required: postgresql://USER@HOST:PORT/DB")
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in SCHEMES:
        raise ServerError(
            f"--backend-store-uri {redact(uri)}: the store must be PostgreSQL (postgresql://USER@HOST:PORT/DB)"
        )
    if holds_password(uri):
        raise ServerError(
            "--backend-store-uri must not hold the password (command lines are visible to every user): "
            f"set ${PASSWORD_ENV} or $PGPASSWORD, or use ~/.pgpass or a libpq service file"
        )
    if parts.scheme in ("postgres", "postgresql"):  # postgres: libpq's alias, which SQLAlchemy 2 does not know
        uri = DEFAULT_DRIVER + uri[len(parts.scheme) :]
    return uri


def check_database(uri: str, password: str | None) -> None:
    """Connect once, so a wrong user, password or database is one clear line, not a server traceback."""
    if not uri.startswith(DEFAULT_DRIVER + "://"):
        return  # another driver: MLflow reports its own errors
    try:
        import psycopg2
    except ImportError as err:
        raise ServerError("PostgreSQL support is missing: pip install 'mnist-bench[cluster]'") from err
    dsn = "postgresql" + uri[len(DEFAULT_DRIVER) :]  # libpq's own URI spelling
    credentials = {"password": password} if password else {}  # else libpq: $PGPASSWORD, ~/.pgpass, service
    try:
        psycopg2.connect(dsn, connect_timeout=10, **credentials).close()
    except psycopg2.Error as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ServerError(f"cannot connect to the backend store {redact(uri)}: {reason}") from err


def tracking_uri(host: str, port: int) -> str:
    """The URI workers log to: this machine's name when the server listens on every interface."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def allowed_hosts(host: str) -> str | None:
    """MLflow answers only Host headers it allows: add this machine's names when it serves others."""
    if host in LOOPBACK:
        return None
    try:
        from mlflow.server.security_utils import get_default_allowed_hosts
    except ImportError:  # an MLflow without host validation
        return None
    names = {socket.gethostname(), socket.getfqdn()}
    if host not in ("0.0.0.0", "::", ""):
        names.add(host)
    extra = [pattern for name in sorted(names) for pattern in (name, f"{name}:*")]
    return ",".join([*get_default_allowed_hosts(), *extra])


def mlflow_command(args: argparse.Namespace, uri: str, artifacts: str) -> list[str]:
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    command += ["--serve-artifacts", "--artifacts-destination", artifacts]
    command += ["--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    hosts = args.allowed_hosts or allowed_hosts(args.host)
    if hosts:
        command += ["--allowed-hosts", hosts]
    return command + list(args.mlflow_args)


def _artifacts_destination(value: str) -> str:
    """A local folder made absolute and created (the server may be started from anywhere); URIs as given."""
    if "://" in value:
        return value
    folder = Path(value).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # a folder that exists but takes no file fails here, not mid-run
            pass
    except OSError as err:
        why = write_failure(err, f"--artifacts-destination {folder}") or f"cannot use {folder} ({err})"
        raise ServerError(f"{why} (or choose another --artifacts-destination)") from None
    return str(folder)


def main(argv: list[str]) -> int:
    """Start ``mlflow server`` and wait for it; SIGTERM or Ctrl-C stops it and all its workers."""
    return run_tool(PROG, lambda: _main(argv))


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    password = os.environ.get(PASSWORD_ENV)
    uri = check_store_uri(args.db)
    if not args.no_check:
        check_database(uri, password or None)
    artifacts = _artifacts_destination(args.artifacts_destination)
    check_port_free(args.host, args.port)
    env = dict(os.environ)
    env.pop(PASSWORD_ENV, None)
    if password:
        env["PGPASSWORD"] = password  # libpq's own variable: read by every server process, shown nowhere
    print(f"mnist-bench server: backend store {redact(uri)}, artifacts in {artifacts}", flush=True)
    print(
        f"mnist-bench server: workers log with tracking.uri={tracking_uri(args.host, args.port)} "
        f"(or MLFLOW_TRACKING_URI={tracking_uri(args.host, args.port)})",
        flush=True,
    )
    # Its own session, so stopping it reaches the worker processes mlflow starts too.
    server = subprocess.Popen(mlflow_command(args, uri, artifacts), env=env, start_new_session=True)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        _signal_group(server, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                code = server.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server.poll() is None:
            _signal_group(server, signal.SIGTERM)
        try:
            server.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(server, signal.SIGKILL)
            server.wait()
        _signal_group(server, signal.SIGKILL)  # any worker left behind
    if stopping:
        return EXIT_OK
    return code if code >= 0 else EXIT_FAILED


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
