"""MLflow: the one place that knows tracking URIs, names, and how a run is logged.

Embedded default: a sqlite store `mlflow.db` and artifacts under `mlruns/` in the project folder: nothing to
start, model registry included (`mlflow ui --backend-store-uri sqlite:///mlflow.db` shows it). With
MLFLOW_TRACKING_URI set, the same code talks to that server.

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
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHAMPION = "champion"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def setup(experiment_name: str) -> str:
    """Point MLflow at the store, check it answers, and return the experiment id (created if new)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        # MLflow's client retries a failed request 7 times with growing pauses (minutes in all); during an
        # outage the sender thread would sit in those. A few quick retries, then the next flush tries again.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):  # artifacts beside the database file: <folder>/mlruns
        artifact_location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
    # The tag opens the experiment in the UI's model-training view (runs, charts), not the GenAI overview.
    return mlflow.create_experiment(experiment_name, artifact_location=artifact_location,
                                    tags={"mlflow.experimentKind": "custom_model_development"})


def check_server(uri: str, timeout: float = 5.0) -> None:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            response.read()
    except OSError as error:
        raise ConnectionError(f"MLflow tracking server {uri} is unreachable ({error}); start it or unset "
                              f"MLFLOW_TRACKING_URI to use the embedded store") from None


class RunLogger:
    """Logs metrics from a background thread, and never lets a tracking outage stop training.

    The training loop only appends metrics to a list (microseconds); a sender thread ships them to MLflow with
    one log_batch call every FLUSH_SECONDS. If the store does not answer, a warning is printed once, the
    metrics are appended to a local JSONL file (so nothing is lost even if the outage outlasts the run) and
    kept for another try; when the store answers again they are sent.

    Overhead, reported at the end of training: `seconds_spent` (the training thread's time in log_metrics)
    and `sender_cpu_seconds` (CPU time of the sender thread, which competes for the same cores).
    """

    FLUSH_SECONDS = 5.0
    MAX_KEPT = 100_000  # metrics kept in memory for retry during a long outage (the file keeps them all)

    def __init__(self, run_id: str, fallback_file: Path):
        self.client = MlflowClient()
        self.run_id, self.fallback_file = run_id, fallback_file
        self.new: list[Metric] = []  # not yet tried
        self.retry: list[Metric] = []  # tried, failed, already in the fallback file
        self.lock, self.send_lock = threading.Lock(), threading.Lock()
        self.wake, self.closed = threading.Event(), False
        self.failing = False
        self.seconds_spent = 0.0
        self.sender_cpu_seconds = 0.0
        self.thread = threading.Thread(target=self._send_loop, name="mlflow-metrics", daemon=True)
        self.thread.start()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        start = time.perf_counter()
        timestamp = int(time.time() * 1000)
        with self.lock:
            self.new += [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        self.seconds_spent += time.perf_counter() - start

    def flush(self) -> None:
        """Try to send everything now (the caller waits)."""
        self._send()

    def close(self) -> None:
        self.closed = True
        self.wake.set()
        self.thread.join(timeout=60)
        self._send()

    def _send_loop(self) -> None:
        while not self.closed:
            self.wake.wait(self.FLUSH_SECONDS)
            self._send()

    def _send(self) -> None:
        with self.send_lock:
            cpu_start = time.thread_time()
            with self.lock:
                new, self.new = self.new, []
                batch, self.retry = self.retry + new, []
            if batch:
                self._send_batch(batch, new)
            self.sender_cpu_seconds += time.thread_time() - cpu_start

    def _send_batch(self, batch: list[Metric], new: list[Metric]) -> None:
        try:
            for start in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics a call
                self.client.log_batch(self.run_id, metrics=batch[start : start + 1000], synchronous=True)
            if self.failing:
                print("tracking: MLflow answers again; kept metrics sent", file=sys.stderr)
            self.failing = False
        except Exception as error:  # any failure of the tracking store: keep training, keep the data
            if not self.failing:
                print(f"tracking: MLflow unavailable ({type(error).__name__}); training goes on, metrics are "
                      f"kept and written to {self.fallback_file}", file=sys.stderr)
            self.failing = True
            self.fallback_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.fallback_file, "a") as out:
                for metric in new:
                    out.write(json.dumps({"key": metric.key, "value": metric.value, "step": metric.step,
                                          "timestamp": metric.timestamp}) + "\n")
            with self.lock:
                self.retry = (batch + self.retry)[-self.MAX_KEPT :]

    def safely(self, what: str, fn, *args, **kwargs) -> Any:
        """Run a tracking call (artifact, param, tag); on failure warn and go on."""
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            print(f"tracking: could not {what} ({type(error).__name__}: {str(error)[:200]}); training goes on",
                  file=sys.stderr)
            return None


class NullLogger:
    """What ranks other than 0 get in a distributed run: logging does nothing."""

    seconds_spent = sender_cpu_seconds = 0.0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def safely(self, what: str, fn, *args, **kwargs) -> None:
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
