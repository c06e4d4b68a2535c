"""Runs that record a measurement of a trained model: an evaluation (with the model version it measured), and a
comparison of runs."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param

from jobs.errors import InputError
import jobs.tracking.store as store
from jobs.tracking.store import setup

log = logging.getLogger(__name__)


def log_evaluation(state, model_ref: str, params: dict[str, Any], metrics: dict[str, float],
                   tags: dict[str, str] | None = None, run_name: str = "evaluate",
                   version_tags: dict[str, str] | None = None) -> None:
    """An evaluation of a trained model (state: its checkpoint's CheckpointState), as a run of its experiment: params, metrics and tags, with the training
    run it came from (`trained_in_run`, which `compare` follows). For a registry URI the metrics are also the
    model version's (see log_version_scores). A tracking failure is a warning: the figures are printed."""
    from jobs.tracking.registry import version_of

    try:
        experiment_id = setup((state.experiment or {}).get("experiment_name") or "evaluations")
        version = version_of(model_ref)
        client = store.client()
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
    client = store.client()
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
    from jobs.tracking.registry import logged_model_id

    client = store.client()
    model_id = logged_model_id(version) if version is not None else None
    now = int(time.time() * 1000)
    client.log_batch(run_id, [Metric(key, float(value), now, step, model_id=model_id) for key, value in metrics.items()])
    for key, value in (version_tags or {}).items() if version is not None else ():
        client.set_model_version_tag(version.name, version.version, key, value)
