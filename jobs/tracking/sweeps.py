"""A sweep in MLflow: one parent run, and each trial a training run nested under it.

    experiment <study name>
        run "sweep"                      params: the space, the trials asked for; metrics per trial number:
                                         sweep/trial_val_loss, sweep/best_val_loss; artifacts: best.yaml and the
                                         figures; tags: the Optuna study and its storage
          run <trial's run folder>       a normal training run (jobs/training/trainer.py) with the tags below:
                                         the MLflow UI nests it under the sweep, and its parallel-coordinates and
                                         contour views compare the trials by their params and val/loss

An interrupted sweep (its study remembers this run's id) reopens the same parent run when it goes on.
"""

from __future__ import annotations

import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag

from jobs.tracking import store
from jobs.tracking.run import flatten, safely

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: what nests a run under another in the UI
TRIAL_TAG = "sweep.trial"  # the trial's number in its Optuna study
STUDY_TAG = "sweep.study"


def trial_tags(parent_run_id: str, study: str, number: int) -> dict[str, str]:
    """The tags a trial's training run gets (jobs.training.trainer.Trial.tags)."""
    return {PARENT_TAG: parent_run_id, TRIAL_TAG: str(number), STUDY_TAG: study}


class SweepRun:
    """The parent run of a sweep: started (or reopened), told each trial's result, ended."""

    def __init__(self, study: str, storage: str, run_id: str | None = None):
        experiment_id = store.setup(study)
        self.client = store.client()
        if run_id is not None and store.run_exists(run_id):
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name="sweep",
                                                 tags={STUDY_TAG: study, "sweep.storage": storage}).info.run_id

    def log_setup(self, space: dict, settings: dict) -> None:
        """The space (flattened: space.training.learning_rate.low, ...) and the sweep's own settings."""
        params = flatten("space.", space) | flatten("sweep.", settings)
        safely("log the sweep's params", self.client.log_batch, self.run_id,
               params=[Param(key, str(value)[:6000]) for key, value in params.items()])

    def log_trial(self, number: int, state: str, value: float | None, best: float | None) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric("sweep/best_val_loss", best, now, number)] if best is not None else []
        if value is not None:
            metrics.append(Metric("sweep/trial_val_loss", value, now, number))
        safely("log the trial", self.client.log_batch, self.run_id, metrics=metrics,
               tags=[RunTag(f"sweep.trial.{number}", state)])

    def log_artifact(self, path: Path) -> None:
        safely(f"log {path.name}", self.client.log_artifact, self.run_id, str(path))

    def end(self, status: str = "FINISHED") -> None:
        safely("end the sweep run", self.client.set_terminated, self.run_id, status)
