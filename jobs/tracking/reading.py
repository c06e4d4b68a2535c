"""Reading training runs back (their curves and scores) for the figures and `compare`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlflow.tracking import MlflowClient

from jobs.errors import InputError
import jobs.tracking.store as store
from jobs.tracking.store import connect, tracking_uri

if TYPE_CHECKING:
    from jobs.figures import RunCurves


def load_runs(refs: list[str]) -> list[RunCurves]:
    """The curves and scores of training runs, by experiment name (all its training runs) or run id, for the
    figures (jobs/figures.py draws them; it never talks to MLflow itself)."""
    from jobs.figures import CURVES, RunCurves

    connect()
    client = store.client()
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
