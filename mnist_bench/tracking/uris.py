"""Where runs are kept, as a URI, and the one redaction of secrets in what the harness prints or writes."""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

SQLITE = "sqlite:///"


def resolve_uri(uri: str | None, launch_dir: Path) -> str:
    """The tracking URI to use, made absolute from the launch directory.

    Default: $MLFLOW_TRACKING_URI, else MLflow's own default ``sqlite:///mlflow.db`` in the
    directory the command was started from, so ``mlflow ui`` there shows the runs.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE}mlflow.db"
    if (path := sqlite_path(uri)) is not None:
        query = uri.partition("?")[1:]
        return sqlite_uri((launch_dir / path).resolve()) + "".join(query)
    if "://" not in uri:  # a plain folder: MLflow's file store
        return str((launch_dir / uri).resolve())
    return uri


# A URL's user:password@ part, and the value of a query parameter that names a secret. Hydra writes an
# unquoted override's value with its ":" escaped (postgresql\://user\:pw@host, in its launch line, its
# .hydra files and the overrides a sweep plans), so a ":" may follow a backslash.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*\\?://)[^/\s'\"]*@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|secret|token|access_token|api_key|apikey|sslpassword)\\?=)[^&;#\s'\"]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` (a URI, an override, a command line, a config file) with every URL's ``user:password@`` removed
    and every password or token query value replaced by ``***``: safe to print, log or store. The one
    redaction the harness applies to what it prints, logs as params and tags, and writes."""
    return _SECRET_QUERY.sub(r"\g<key>***", _USERINFO.sub(r"\g<scheme>", text))


def holds_password(uri: str) -> bool:
    """Whether a URI carries a password: in its ``user:password@`` part or as a password or token query value."""
    return urllib.parse.urlsplit(uri).password is not None or _SECRET_QUERY.search(uri) is not None


def sqlite_uri(path: Path) -> str:
    """The URI of the SQLite store at ``path``. SQLAlchemy ends the path at a ``?`` and unquotes ``%XX``, so
    those two are quoted: a folder named ``q?x`` or ``p%41`` stays the store's folder. Nothing else is, since
    MLflow creates the store's folder from the URI's text as it stands (see open_store)."""
    return SQLITE + str(path).replace("%", "%25").replace("?", "%3F")


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI (its query, if any, left out), or None for any other store."""
    if not uri.startswith(SQLITE):
        return None
    return Path(urllib.parse.unquote(uri.removeprefix(SQLITE).partition("?")[0]))


def is_server(uri: str) -> bool:
    """Whether the store is a tracking server (MLflow's REST API), not a database or a folder."""
    return uri.startswith(("http://", "https://"))


def local_store(uri: str) -> Path | None:
    """The database file or folder of a local store; None for a tracking server."""
    if (db := sqlite_path(uri)) is not None:
        return db
    if uri.startswith("file://") or "://" not in uri:
        return Path(uri.removeprefix("file://"))
    return None
