"""MLflow: the one place that knows tracking URIs, names, and how a run is logged.

Embedded default: a sqlite store `mlflow.db` (jobs.config.TRACKING_STORE) and artifacts under `mlruns/` beside
it, in the working folder: nothing to start, model registry included (`mlflow ui --backend-store-uri
sqlite:///mlflow.db` shows it). With MLFLOW_TRACKING_URI set, the same code talks to that server.

Names: one experiment per `experiment_name`; the registered model is `registered_model_name` or the
experiment name; its alias `champion` is the version with the best validation loss, and MLflow's own
`models:/<name>/latest` the newest version (MLflow reserves `latest`, so it cannot be an alias).

Metric names (step = optimizer step), the ones to compare runs by in the UI:
    train/loss, train/lr, train/grad_norm, train/tokens_per_sec, train/mfu
    train/tokens_seen, train/flops_seen      cumulative; plot loss against these for loss per FLOP
    val/loss, val/perplexity, val/bits_per_byte
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from jobs import atomic
from jobs.config import TRACKING_STORE
from jobs.errors import InputError, TrackingError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from jobs.checkpoint import CheckpointState
    from jobs.figures import RunCurves

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
        MlflowClient().get_run(run_id)
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


class RunLogger:
    """Logs metrics from a background thread, and never lets a tracking outage stop training or lose a metric.

    The training loop only appends metrics to a list (microseconds); a sender thread ships them to MLflow with
    one log_batch call every FLUSH_SECONDS. If the store does not answer, a warning is printed once and the
    metrics are appended to a journal file (fsynced) beside the checkpoints; every later send tries the journal
    first, and when the store answers again the journal is sent and removed. Resending is harmless: a metric
    keeps its timestamp, and MLflow stores an identical metric once.

    Checkpoints and metrics agree: `flush()` runs before each checkpoint is written, so the metrics of the steps
    a checkpoint covers are sent or journalled before it exists. After a crash (even kill -9), the resumed run
    replays the journal, and `resume_step` drops the metrics of steps that were logged before the crash but come
    after the checkpoint: they are computed again, identically, and each step stays in the history once.

    Overhead, reported at the end of training: `seconds_spent` (the training thread's time in log_metrics and
    flush) and `sender_cpu_seconds` (CPU time of the sender thread, which competes for the same cores).
    """

    FLUSH_SECONDS = 5.0
    FLUSH_WAIT = 10.0  # the longest a checkpoint waits for the store to take its metrics

    def __init__(self, run_id: str, journal_file: Path, resume_step: int | None = None):
        self.client = MlflowClient()
        self.run_id, self.journal_file = run_id, journal_file
        self.new: list[Metric] = []  # logged, not yet sent
        self.lock, self.send_lock, self.journal_lock = threading.Lock(), threading.Lock(), threading.Lock()
        self.wake, self.closed = threading.Event(), False
        self.failing = False
        self.seconds_spent = 0.0
        self.sender_cpu_seconds = 0.0
        self.already_logged: set[tuple[str, int]] = set()
        if resume_step is not None:
            self._send()  # what the last session journalled
            self.already_logged = self._logged_after(resume_step)
        self.thread = threading.Thread(target=self._send_loop, name="mlflow-metrics", daemon=True)
        self.thread.start()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        start = time.perf_counter()
        timestamp = int(time.time() * 1000)
        with self.lock:
            self.new += [Metric(key, float(value), timestamp, step) for key, value in metrics.items()
                         if (key, step) not in self.already_logged]
        self.seconds_spent += time.perf_counter() - start

    def flush(self) -> None:
        """Send everything logged so far, or journal it, before returning (before a checkpoint is written). During
        an outage it is journalled at once: the training thread never waits on MLflow's retries, the sender thread
        keeps trying in the background. A store that takes the connection but does not answer (a frozen server)
        is given FLUSH_WAIT seconds: then what was to be sent is journalled too (sent twice at worst, which MLflow
        stores once) and the outage begins."""
        start = time.perf_counter()
        if self.failing:
            with self.lock:
                new, self.new = self.new, []
            self._append_journal(new)
        else:
            with self.lock:
                pending = list(self.new)
            sending = threading.Thread(target=self._send, name="mlflow-flush", daemon=True)
            sending.start()
            sending.join(self.FLUSH_WAIT)
            if sending.is_alive():
                if not self.failing:
                    log.warning(f"tracking: MLflow did not answer in {self.FLUSH_WAIT:g} s; training goes on, metrics "
                                f"are journalled to {self.journal_file} and sent when it answers")
                self.failing = True
                self._append_journal(pending)
        self.seconds_spent += time.perf_counter() - start

    def close(self) -> None:
        self.closed = True
        self.wake.set()
        self.thread.join(timeout=60)
        self._send()

    def _logged_after(self, step: int) -> set[tuple[str, int]]:
        """(key, step) of the metrics this run already holds for steps after `step`."""
        try:
            keys = self.client.get_run(self.run_id).data.metrics.keys()
            return {(key, m.step) for key in keys for m in self.client.get_metric_history(self.run_id, key)
                    if m.step > step}
        except Exception as error:  # an outage: at worst a few steps appear twice
            log.warning(f"tracking: could not read the run's metric history ({type(error).__name__}); steps logged "
                        f"after step {step} before the interruption may appear twice")
            return set()

    def _send_loop(self) -> None:
        while not self.closed:
            self.wake.wait(self.FLUSH_SECONDS)
            self.wake.clear()
            self._send()

    def _send(self) -> None:
        with self.send_lock:
            cpu_start = time.thread_time()
            with self.lock:
                new, self.new = self.new, []
            journalled, journal_bytes = self._journalled()
            if journalled or new:
                self._send_batch(journalled + new, new, journal_bytes)
            self.sender_cpu_seconds += time.thread_time() - cpu_start

    def _journalled(self) -> tuple[list[Metric], int]:
        """The journal's metrics, and how many of its bytes they came from (flush may append more meanwhile)."""
        with self.journal_lock:
            data = self.journal_file.read_bytes() if self.journal_file.is_file() else b""
        metrics = []
        for line in data.decode("utf-8", errors="replace").splitlines():
            try:
                m = json.loads(line)
                metrics.append(Metric(m["key"], m["value"], m["timestamp"], m["step"]))
            except (ValueError, KeyError, TypeError):  # a line cut short by a crash mid-write
                continue
        return metrics, len(data)

    def _append_journal(self, metrics: list[Metric]) -> None:
        if not metrics:
            return
        with self.journal_lock:
            self.journal_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.journal_file, "a") as out:
                for metric in metrics:
                    out.write(json.dumps({"key": metric.key, "value": metric.value, "step": metric.step,
                                          "timestamp": metric.timestamp}) + "\n")
                out.flush()
                os.fsync(out.fileno())

    def _drop_sent_journal(self, sent_bytes: int) -> None:
        """Remove the journal's first sent_bytes (sent), keeping what was appended while they were being sent."""
        with self.journal_lock:
            if not self.journal_file.is_file():
                return
            rest = self.journal_file.read_bytes()[sent_bytes:]
            if rest:
                atomic.write_bytes(self.journal_file, rest)
            else:
                self.journal_file.unlink()

    def _send_batch(self, pending: list[Metric], new: list[Metric], journal_bytes: int) -> None:
        try:
            for start in range(0, len(pending), 1000):  # MLflow takes at most 1000 metrics a call
                self.client.log_batch(self.run_id, metrics=pending[start : start + 1000], synchronous=True)
            self._drop_sent_journal(journal_bytes)
            if self.failing:
                log.warning("tracking: MLflow answers again; journalled metrics sent")
            self.failing = False
        except Exception as error:  # any failure of the tracking store: keep training, keep the data
            if not self.failing:
                log.warning(f"tracking: MLflow unavailable ({type(error).__name__}); training goes on, metrics "
                            f"are journalled to {self.journal_file} and sent when it answers")
            self.failing = True
            self._append_journal(new)


class TrackedRun:
    """One training run in MLflow, start to end: the train job's only door to tracking.

        with TrackedRun(experiment, run_name, journal_file) as run:        # starts (or, with run_id, continues)
            run.log_params(...); run.log_metrics(metrics, step); run.flush()
            run.log_artifact(path, folder); run.log_text(text, path); run.register(checkpoint, model_name)
            run.status = "KILLED"                                          # ended by a signal
        # leaving ends the run: FINISHED (or the status set), FAILED on an exception

    Every call goes through one MlflowClient with this run's id (no global "active run"); metrics through a
    RunLogger (background sends, a journal during outages). Every other call is made `safely`: a tracking
    failure logs a warning and training goes on. (One call needs MLflow's active run: logging the model, which
    jobs/registry.py wraps in mlflow.start_run(run_id=...) for that call alone.)
    """

    def __init__(self, experiment_name: str, run_name: str, journal_file: Path, run_id: str | None = None,
                 resume_step: int | None = None, branch: bool = False):
        self.experiment_name, self.run_name, self.run_id = experiment_name, run_name, run_id
        self.journal_file, self.resume_step, self.branch = journal_file, resume_step, branch
        self.branched_from: tuple[str, int] | None = None  # (run id, step) when this run branched from another
        self.status = "FINISHED"
        self.reported_down = False

    def __enter__(self) -> "TrackedRun":
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        from mlflow.tracking.context.registry import resolve_tags

        experiment_id = setup(self.experiment_name)
        self.client = MlflowClient()
        continued = self.run_id is not None
        if continued and self.branch and self._logged_after_resume():
            self._branch(experiment_id, resolve_tags)
            continued = False
        elif continued:
            self.client.update_run(self.run_id, status="RUNNING")
        else:  # with the tags MLflow's start_run would add: user, source file, git commit
            self.run_id = self.client.create_run(experiment_id, run_name=self.run_name, tags=resolve_tags()).info.run_id
        self.system_metrics = SystemMetricsMonitor(self.run_id, resume_logging=continued)  # CPU, memory, GPU
        safely("start system metrics", self.system_metrics.start)
        self.logger = RunLogger(self.run_id, self.journal_file, self.resume_step)
        return self

    def _logged_after_resume(self) -> bool:
        """Whether the run holds metrics of steps after the one it resumes from (steps about to be trained again)."""
        history = safely("read the run's history", self.client.get_metric_history, self.run_id, "train/loss") or []
        return any(metric.step > self.resume_step for metric in history)

    def _branch(self, experiment_id: str, resolve_tags) -> None:
        """Steps after resume_step are trained again with changed settings: their metrics must describe the model
        trained now, and MLflow keeps a metric's history for good. So the new session is a new run, nested under the
        one it branched from (mlflow.parentRunId), tagged with where, and holding that run's metrics up to there,
        so its curves are whole from step 1."""
        old, step = self.run_id, self.resume_step
        RunLogger(old, self.journal_file, step).close()  # what the old run's last session journalled goes to it
        tags = resolve_tags() | {"mlflow.parentRunId": old, "branched_from_run": old, "branched_at_step": str(step)}
        self.run_id = self.client.create_run(experiment_id, run_name=f"{self.run_name}-from-step-{step}",
                                             tags=tags).info.run_id
        earlier = [m for key in self.client.get_run(old).data.metrics
                   for m in self.client.get_metric_history(old, key) if m.step <= step]
        for start in range(0, len(earlier), 1000):  # MLflow takes at most 1000 metrics a call
            self.client.log_batch(self.run_id, metrics=earlier[start:start + 1000], synchronous=True)
        self.branched_from, self.resume_step = (old, step), None
        log.info(f"tracking: steps after {step} were already logged with other settings; this session is run "
                 f"{self.run_id}, branched from {old} at step {step} (nested under it in the MLflow UI)")

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.logger.close()
        safely("stop system metrics", self.system_metrics.finish)
        if self._still_down("end the run"):  # it stays RUNNING; its next start finishes it
            return
        self._upload_pending_artifacts()
        safely("end the run", self.client.set_terminated, self.run_id, "FAILED" if exc_type else self.status)

    def _still_down(self, what: str) -> bool:
        """During an outage (the metric sender found MLflow down) the end-of-run calls (registration, figures,
        scores, ending the run) are not waited for through MLflow's retries: True, with one line saying what
        waits, unless the server answers again now. The run's next start (`--resume auto` too) finishes them:
        it sends the journal, registers once and ends the run."""
        if not self.logger.failing:
            return False
        if self.reported_down:  # judged down once at the end: not asked again (each ask may wait seconds)
            return True
        uri = tracking_uri()
        if uri.startswith(("http://", "https://")):
            try:
                check_server(uri, timeout=3.0)
                return False
            except TrackingError:
                pass
        self.reported_down = True  # one line, at the first call that waits
        log.warning(f"tracking: MLflow is unreachable, so this run will {what} (and end in MLflow) at its next start: "
                    f"python -m jobs train --config ... --resume auto; its metrics wait in {self.journal_file}")
        return True

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logger.log_metrics(metrics, step)

    def flush(self) -> None:
        self.logger.flush()

    def log_params(self, params: dict[str, Any]) -> None:
        values = {**params, "mlflow_version": mlflow.__version__}
        safely("log params", self.client.log_batch, self.run_id,
               params=[Param(key, str(value)) for key, value in values.items()])

    def set_tags(self, tags: dict[str, Any]) -> None:
        safely("set tags", self.client.log_batch, self.run_id,
               tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_dict(self, values: dict, name: str) -> None:
        if not self._keep_while_down(name, lambda path: path.write_text(json.dumps(values, indent=2))):
            safely(f"log {name}", self.client.log_dict, self.run_id, values, name)

    def log_artifact(self, path: str | Path, folder: str) -> None:
        name = f"{folder}/{Path(path).name}"
        if not self._keep_while_down(name, lambda kept: shutil.copyfile(path, kept)):
            safely(f"log {path}", self.client.log_artifact, self.run_id, str(path), folder)

    def log_text(self, text: str, name: str) -> None:
        if not self._keep_while_down(name, lambda path: path.write_text(text)):
            safely(f"log {name}", self.client.log_text, self.run_id, text, name)

    @property
    def pending_artifacts(self) -> Path:
        return self.journal_file.parent / "pending-artifacts"

    def _keep_while_down(self, name: str, write) -> bool:
        """During an outage (the metric sender found MLflow down) an artifact is kept on disk instead of waiting
        on MLflow's retries in the training thread; kept ones are uploaded when the run ends. True if kept."""
        if not self.logger.failing:
            return False
        kept = self.pending_artifacts / name
        kept.parent.mkdir(parents=True, exist_ok=True)
        write(kept)
        return True

    def _upload_pending_artifacts(self) -> None:
        if not self.pending_artifacts.is_dir() or self.logger.failing:
            return  # still down: they stay on disk, in the run's folder
        try:
            self.client.log_artifacts(self.run_id, str(self.pending_artifacts))
        except Exception as error:
            log.warning(f"tracking: the artifacts kept during the outage stay in {self.pending_artifacts} "
                        f"({type(error).__name__}: {str(error)[:200]})")
            return
        shutil.rmtree(self.pending_artifacts, ignore_errors=True)

    def register(self, checkpoint: Path, model_name: str) -> str | None:
        """Log `checkpoint` as this run's model, a new version of model_name (see jobs/registry.py); the version."""
        from jobs.registry import log_and_register  # imported here: it brings pandas and MLflow's model code

        if self._still_down("register its model"):
            return None
        version = safely("register the model", log_and_register, checkpoint, model_name, self.run_id)
        # logging the model needs MLflow's active run, which ends (FINISHED) with that call: the run goes on
        safely("reopen the run", self.client.update_run, self.run_id, status="RUNNING")
        return version

    def log_scores(self, metrics: dict[str, float], step: int, model_name: str, version: str | None,
                   version_tags: dict[str, str]) -> None:
        """Evaluation scores of the registered model: the run's metrics at `step`, and the version's (see
        log_version_scores)."""
        def log():
            registered = MlflowClient().get_model_version(model_name, version) if version else None
            log_version_scores(self.run_id, metrics, step, registered, version_tags)

        self.flush()
        if not self._still_down("log its evaluation scores"):
            safely("log the evaluation scores", log)

    def log_figures(self, folder: Path) -> None:
        """The run's loss (vs step and vs FLOPs), schedule and throughput figures, drawn from its logged metrics."""
        from jobs.figures import plot

        self.flush()
        if self._still_down("draw its figures"):
            return
        paths = safely("draw the figures", lambda: plot(load_runs([self.run_id]), folder)) or []
        for path in paths:
            self.log_artifact(path, "figures")

    @property
    def overhead_seconds(self) -> tuple[float, float]:
        """(seconds of the training thread in tracking calls, CPU seconds of the sender thread)."""
        return self.logger.seconds_spent, self.logger.sender_cpu_seconds


class NullRun:
    """What ranks other than 0 get in a distributed run (only rank 0 tracks): TrackedRun's calls, each doing
    nothing. Written out, so that a misspelt call fails on every rank, not only on rank 0."""

    run_id, status, overhead_seconds, branched_from = None, "FINISHED", (0.0, 0.0), None

    def __enter__(self) -> "NullRun":
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_dict(self, values: dict, name: str) -> None:
        pass

    def log_artifact(self, path: str | Path, folder: str) -> None:
        pass

    def log_text(self, text: str, name: str) -> None:
        pass

    def register(self, checkpoint: Path, model_name: str) -> None:
        return None

    def log_scores(self, metrics: dict[str, float], step: int, model_name: str, version: str | None,
                   version_tags: dict[str, str]) -> None:
        pass

    def log_figures(self, folder: Path) -> None:
        pass


def log_evaluation(state: "CheckpointState", model_ref: str, params: dict[str, Any], metrics: dict[str, float],
                   tags: dict[str, str] | None = None, run_name: str = "evaluate",
                   version_tags: dict[str, str] | None = None) -> None:
    """An evaluation of a trained model, as a run of its experiment: params, metrics and tags, with the training
    run it came from (`trained_in_run`, which `compare` follows). For a registry URI the metrics are also the
    model version's (see log_version_scores). A tracking failure is a warning: the figures are printed."""
    from jobs.registry import version_of

    try:
        experiment_id = setup((state.experiment or {}).get("experiment_name") or "evaluations")
        version = version_of(model_ref)
        client = MlflowClient()
        run = client.create_run(experiment_id, run_name=run_name, tags={
            **(tags or {}), "trained_in_run": str(state.mlflow_run_id), "model": model_ref[:500],
            **({"model_version": f"{version.name}/{version.version}"} if version else {})})
        client.log_batch(run.info.run_id, params=[Param(key, str(value)[:500])
                                                  for key, value in {"model": model_ref, **params}.items()])
        log_version_scores(run.info.run_id, metrics, 0, version, version_tags)
        client.set_terminated(run.info.run_id)
        log.info(f"logged to MLflow: run {run.info.run_id} of experiment {experiment_id}"
                 + (f", and on version {version.version} of {version.name}" if version else ""))
    except InputError:
        raise
    except Exception as error:
        log.warning(f"tracking: evaluation not logged ({type(error).__name__}: {str(error)[:200]})")


def log_comparison(experiment_id: str, compared_run_ids: list[str], figures: list[Path]) -> str:
    """compare --log: a 'compare' run in the first run's experiment, with the compared runs and the figures."""
    client = MlflowClient()
    run_id = client.create_run(experiment_id, run_name="compare",
                               tags={"compared_runs": ",".join(compared_run_ids)}).info.run_id
    for path in figures:
        client.log_artifact(run_id, str(path), "figures")
    client.set_terminated(run_id)
    return run_id


def log_version_scores(run_id: str, metrics: dict[str, float], step: int, version=None,
                       version_tags: dict[str, str] | None = None) -> None:
    """Metrics of a run that measure a registered model version: logged against the version's logged model too
    (MLflow 3 shows them on the version's page), and version_tags set on the version (the registry's list shows
    tags)."""
    from jobs.registry import logged_model_id

    client = MlflowClient()
    model_id = logged_model_id(version) if version is not None else None
    now = int(time.time() * 1000)
    client.log_batch(run_id, [Metric(key, float(value), now, step, model_id=model_id) for key, value in metrics.items()])
    for key, value in (version_tags or {}).items() if version is not None else ():
        client.set_model_version_tag(version.name, version.version, key, value)


def load_runs(refs: list[str]) -> list[RunCurves]:
    """The curves and scores of training runs, by experiment name (all its training runs) or run id, for the
    figures (jobs/figures.py draws them; it never talks to MLflow itself)."""
    from jobs.figures import CURVES, RunCurves

    connect()
    client = MlflowClient()
    found = []
    for ref in refs:
        experiment = client.get_experiment_by_name(ref)
        if experiment is not None:
            candidates = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
            found += [r for r in candidates if "flops_per_token" in r.data.params]  # training runs only
            continue
        try:
            found.append(client.get_run(ref))
        except Exception:
            raise InputError(f"{ref!r} is neither an experiment name nor a run id in {tracking_uri()}") from None
    if not found:
        raise InputError(f"no training runs found for {', '.join(refs)}")
    runs = []
    for run in found:
        curves = {}
        for key in CURVES:
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            curves[key] = ([m.step for m in history], [m.value for m in history])
        runs.append(RunCurves(run.info.run_id, run.info.run_name or run.info.run_id[:8], run.info.experiment_id,
                              run.data.params, curves, _scores(client, run)))
    return runs


def _scores(client: MlflowClient, run) -> dict[str, float]:
    """A training run's minimal-pair scores: its own (training.final_evals), else the newest `evaluate --suite` of
    its model (evaluation runs name the training run they measure in the tag trained_in_run)."""
    def accuracies(metrics: dict) -> dict[str, float]:
        return {k: v for k, v in metrics.items()
                if (k.endswith("/accuracy") or "/phenomenon/" in k) and "/during_training/" not in k}

    scores = {}
    evaluations = client.search_runs([run.info.experiment_id], f"tags.trained_in_run = '{run.info.run_id}'",
                                     order_by=["attributes.start_time ASC"])
    for evaluation in evaluations:  # oldest first, so the newest evaluation of a suite wins
        scores |= accuracies(evaluation.data.metrics)
    return scores | accuracies(run.data.metrics)


def safely(what: str, fn, *args, **kwargs) -> Any:
    """Run a tracking call (artifact, param, tag, registration); on failure warn and go on."""
    try:
        return fn(*args, **kwargs)
    except Exception as error:
        log.warning(f"tracking: could not {what} ({type(error).__name__}: {str(error)[:200]}); training goes on")
        return None


def flatten(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    """{'training': {'lr': 1}} -> {'training.lr': 1}, for mlflow params."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(f"{name}.", value))
        else:
            out[name] = value
    return out
