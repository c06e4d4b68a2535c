"""The tracking store: which one (MLFLOW_TRACKING_URI, or the embedded sqlite file), whether it works, and the
one MlflowClient of the process that every tracking module uses."""

from __future__ import annotations

import functools
import json
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from jobs.config import TRACKING_STORE
from jobs.errors import TrackingError

# Stores MLflow can use: a tracking server, a database (SQLAlchemy URLs), a file store (a path or file:).
SCHEMES = {"http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks", ""}


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or the embedded sqlite store in the working folder. A kind of store MLflow cannot use is
    an input error here, in one line that never shows a password, not a traceback deep in MLflow (whether the
    store answers, or can be written, connect() checks)."""
    uri = (os.environ.get("MLFLOW_TRACKING_URI") or "").strip() or f"sqlite:///{Path(TRACKING_STORE).resolve()}"
    try:
        shown = redact(uri)
        scheme = urllib.parse.urlparse(uri).scheme.split("+")[0]
    except ValueError as error:  # http://[::1 (an unclosed address), a port that is not a number...
        raise TrackingError(f"MLFLOW_TRACKING_URI is not a URL this can read ({error})") from None
    if scheme not in SCHEMES:
        raise TrackingError(f"MLFLOW_TRACKING_URI={shown}: unsupported scheme {scheme!r} (use http(s)://host:port "
                            f"for a server, sqlite:///path/mlflow.db, or unset it for the embedded store)")
    if scheme in ("file", "") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise TrackingError(f"MLFLOW_TRACKING_URI={shown}: MLflow 3 refuses file stores unless "
                            f"MLFLOW_ALLOW_FILE_STORE=true; use sqlite:///path/mlflow.db, a server, or unset it for "
                            f"the embedded store")
    return uri


def check_sqlite_writable(database: Path, shown: str) -> None:
    """sqlite writes the database file and a journal beside it: a folder where no file can be made (read-only,
    /proc) or a database that cannot be opened for writing fails now, not after minutes of MLflow's retries."""
    folder = database.parent
    if not folder.is_dir():
        raise TrackingError(f"MLFLOW_TRACKING_URI={shown}: the folder {folder} does not exist (create it, or point "
                            f"at an existing folder)")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise TrackingError(f"MLFLOW_TRACKING_URI={shown}: cannot write in {folder}, where the database and its "
                            f"journal live ({error.strerror})") from None
    if database.exists():
        try:
            with open(database, "r+b"):
                pass
        except OSError as error:
            raise TrackingError(f"MLFLOW_TRACKING_URI={shown}: cannot open {database} for writing "
                                f"({error.strerror})") from None


def redact(uri: str) -> str:
    """The URI without a password (user:password@host -> user:***@host): what may be printed."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def connect() -> str:
    """Point MLflow at the store and check that it can work: a server answers within seconds, an sqlite database
    can be written; before any work."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        check_sqlite_writable(Path(uri.removeprefix("sqlite:///")), redact(uri))
    mlflow.set_tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        # MLflow's client retries a failed request 7 times with growing pauses (minutes in all); during an
        # outage the sender thread would sit in those. A few quick retries, then the next flush tries again.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    return uri


def setup(experiment_name: str) -> str:
    """Connect to the store and return the experiment id (created if new)."""
    uri = connect()
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):  # artifacts beside the database file: <folder>/mlruns
        artifact_location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
    # The tag opens the experiment in the UI's model-training view (runs, charts), not the GenAI overview.
    return mlflow.create_experiment(experiment_name, artifact_location=artifact_location,
                                    tags={"mlflow.experimentKind": "custom_model_development"})


def run_exists(run_id: str) -> bool:
    """Whether the store holds this run (asked before a resume reopens it)."""
    connect()
    try:
        client().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def check_server(uri: str, timeout: float = 5.0) -> None:
    """The server answers /health within seconds. Credentials in the URI (user:password@host) go in a basic-auth
    header, as MLflow's client sends them, and never into a message."""
    import base64

    parts = urllib.parse.urlsplit(uri)
    if not parts.hostname:
        raise TrackingError(f"MLFLOW_TRACKING_URI={redact(uri)}: no host in it (use http(s)://host:port)")
    bare = urllib.parse.urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
    request = urllib.request.Request(f"{bare.rstrip('/')}/health")
    if parts.username is not None:
        login = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    not_mlflow = (f"MLFLOW_TRACKING_URI={redact(uri)} answers, but is not an MLflow tracking server "
                  f"({{}}); check the address and port")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
        # Any web server may answer /health: an MLflow server also answers its REST API, in JSON
        request.full_url = f"{bare.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read(1_000_000))
        if not isinstance(answer, dict):
            raise TrackingError(not_mlflow.format("its API answered something other than a JSON object"))
    except urllib.error.HTTPError as error:
        raise TrackingError(not_mlflow.format(f"HTTP {error.code} for {urllib.parse.urlsplit(error.url).path}")) from None
    except ValueError:
        raise TrackingError(not_mlflow.format("its API did not answer JSON")) from None
    except OSError as error:
        raise TrackingError(f"MLflow tracking server {redact(uri)} is unreachable ({redact(str(error))}); start it or "
                            f"unset MLFLOW_TRACKING_URI to use the embedded store") from None


def client() -> MlflowClient:
    """The process's MlflowClient for the store in use now (one per tracking URI: tests point at several)."""
    return _client_for(tracking_uri())


@functools.lru_cache(maxsize=None)
def _client_for(uri: str) -> MlflowClient:
    return MlflowClient(uri)
