"""A training run in MLflow, start to end (TrackedRun), and what the ranks that do not track get (NullRun)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Param, RunTag

from jobs.errors import TrackingError
from jobs.tracking.metrics import RunLogger
from jobs.tracking.records import log_version_scores
import jobs.tracking.store as store
from jobs.tracking.store import check_server, setup, tracking_uri

log = logging.getLogger(__name__)


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
    registry.py wraps in mlflow.start_run(run_id=...) for that call alone.)
    """

    def __init__(self, experiment_name: str, run_name: str, journal_file: Path, run_id: str | None = None,
                 resume_step: int | None = None, branch: bool = False, tags: dict[str, str] | None = None):
        """tags: added to a new run's (a sweep's trial: its parent run and trial number, jobs/tracking/sweeps.py)."""
        self.experiment_name, self.run_name, self.run_id, self.tags = experiment_name, run_name, run_id, tags or {}
        self.journal_file, self.resume_step, self.branch = journal_file, resume_step, branch
        self.branched_from: tuple[str, int] | None = None  # (run id, step) when this run branched from another
        self.status = "FINISHED"
        self.reported_down = False

    def __enter__(self) -> "TrackedRun":
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        from mlflow.tracking.context.registry import resolve_tags

        experiment_id = setup(self.experiment_name)
        self.client = store.client()
        continued = self.run_id is not None
        if continued and self.branch and self._logged_after_resume():
            self._branch(experiment_id, resolve_tags)
            continued = False
        elif continued:
            self.client.update_run(self.run_id, status="RUNNING")
        else:  # with the tags MLflow's start_run would add: user, source file, git commit
            self.run_id = self.client.create_run(experiment_id, run_name=self.run_name,
                                                 tags=resolve_tags() | self.tags).info.run_id
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
        if self.still_down("end the run"):  # it stays RUNNING; its next start finishes it
            return
        self._upload_pending_artifacts()
        safely("end the run", self.client.set_terminated, self.run_id, "FAILED" if exc_type else self.status)

    def still_down(self, what: str) -> bool:
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
        """Log `checkpoint` as this run's model, a new version of model_name (see registry.py); the version."""
        from jobs.tracking.registry import log_and_register  # imported here: it brings pandas and MLflow's model code

        if self.still_down("register its model"):
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
            registered = store.client().get_model_version(model_name, version) if version else None
            log_version_scores(self.run_id, metrics, step, registered, version_tags)

        self.flush()
        if not self.still_down("log its evaluation scores"):
            safely("log the evaluation scores", log)

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

    def still_down(self, what: str) -> bool:
        return False


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
