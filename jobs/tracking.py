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
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):  # artifacts beside the database file: <folder>/mlruns
        artifact_location = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
    return mlflow.create_experiment(experiment_name, artifact_location=artifact_location)


def check_server(uri: str, timeout: float = 5.0) -> None:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            response.read()
    except OSError as error:
        raise ConnectionError(f"MLflow tracking server {uri} is unreachable ({error}); start it or unset "
                              f"MLFLOW_TRACKING_URI to use the embedded store") from None


class RunLogger:
    """Logs metrics in batches, and never lets a tracking outage stop training.

    Metrics are buffered and sent with one log_batch call every `flush_every` seconds. If the server does not
    answer, a warning is printed, the metrics stay buffered (and are written to a local JSONL file) and are
    sent when it answers again.
    """

    def __init__(self, run_id: str, fallback_file: Path, flush_every: float = 5.0):
        self.client = MlflowClient()
        self.run_id, self.fallback_file, self.flush_every = run_id, fallback_file, flush_every
        self.buffer: list[Metric] = []
        self.last_flush = time.monotonic()
        self.failing = False
        self.seconds_spent = 0.0  # time spent logging per-step metrics: the overhead we report

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        start = time.perf_counter()
        timestamp = int(time.time() * 1000)
        self.buffer += [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        if time.monotonic() - self.last_flush >= self.flush_every:
            self.flush()
        self.seconds_spent += time.perf_counter() - start

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.buffer:
            return
        try:
            for start in range(0, len(self.buffer), 1000):  # MLflow takes at most 1000 metrics a batch
                self.client.log_batch(self.run_id, metrics=self.buffer[start : start + 1000], synchronous=True)
            self.buffer = []
            if self.failing:
                print("tracking: MLflow answers again; buffered metrics sent", file=sys.stderr)
            self.failing = False
        except Exception as error:  # any failure of the tracking store: keep training, keep the data
            if not self.failing:
                print(f"tracking: MLflow unavailable ({type(error).__name__}); training goes on, metrics are "
                      f"kept and written to {self.fallback_file}", file=sys.stderr)
            self.failing = True
            self.fallback_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.fallback_file, "a") as out:
                for metric in self.buffer:
                    out.write(json.dumps({"key": metric.key, "value": metric.value, "step": metric.step,
                                          "timestamp": metric.timestamp}) + "\n")
            if len(self.buffer) > 200_000:  # bound memory on a long outage: the file holds them
                self.buffer = self.buffer[-100_000:]

    def safely(self, what: str, fn, *args, **kwargs) -> Any:
        """Run a tracking call (artifact, param, tag); on failure warn and go on."""
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            print(f"tracking: could not {what} ({type(error).__name__}: {str(error)[:200]}); training goes on",
                  file=sys.stderr)
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
