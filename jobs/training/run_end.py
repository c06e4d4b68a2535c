"""The end of a training run (rank 0): the best checkpoint registered as a model version, the run's figures drawn,
the minimal-pair suites of training.final_evals scored; and whether a run that reached its end in an earlier
session was finished in MLflow (a crash or an outage during registration leaves it unfinished, and its next
start finishes it)."""

from __future__ import annotations

import logging
from pathlib import Path

from jobs import minimal_pairs, tracking
from jobs.checkpoint import best_checkpoint, load_model_folder, step_folders
from jobs.tracking.registry import registered_version

log = logging.getLogger(__name__)


def register(tracked, run_folder: Path, model_name: str) -> str | None:
    """The best checkpoint becomes a new version of model_name (champion if it is the best); then the figures.
    Returns the version (None when tracking could not register it)."""
    version = tracked.register(best_checkpoint(run_folder), model_name)
    draw_figures(tracked, run_folder / "figures")
    return version


def draw_figures(tracked, folder: Path) -> None:
    """The run's loss (vs step and vs FLOPs), schedule and throughput figures, drawn from its curves as MLflow
    holds them (every session's), and logged with the run."""
    from jobs.figures import plot

    tracked.flush()
    if tracked.still_down("draw its figures"):
        return
    paths = tracking.safely("draw the figures", lambda: plot(tracking.load_runs([tracked.run_id]), folder))
    for path in paths or []:
        tracked.log_artifact(path, "figures")


def score_suites(tracked, run_folder: Path, suites: list, device: str, history: bool, model_name: str,
                 version: str | None) -> None:
    """Each minimal-pair suite scored on the registered (best) checkpoint, logged with the run and the model
    version; with history also on each kept step-N checkpoint (and the untrained model, saved as step 0), logged at
    its step as <suite>/during_training/... (the metrics' history in MLflow is how accuracy grew), and drawn."""
    from jobs.figures import plot_suite_history

    best = best_checkpoint(run_folder)
    scores: dict[str, dict[int, minimal_pairs.SuiteScore]] = {suite.name: {} for suite in suites}
    for folder in (step_folders(run_folder) if history else []) + [best]:
        loaded = load_model_folder(folder, device)
        for suite in suites:
            score = minimal_pairs.score_suite(loaded.model, loaded.tokenizer, suite, device)
            scores[suite.name][loaded.state.step] = score
            log.info(f"{suite.name} @ step {loaded.state.step} ({folder.name}): {score.accuracy:.1%} of "
                     f"{score.pairs:,} pairs ({score.seconds:.0f} s)")
            if folder == best:
                log.info(score.table())
                tracked.log_scores(score.metrics(), loaded.state.step, model_name, version, score.version_tags())
            else:  # apart from the registered model's scores, which a later step-N must not shadow
                tracked.log_metrics(score.metrics("during_training"), loaded.state.step)
    for name, by_step in scores.items():
        if len(by_step) > 1:
            figure = plot_suite_history(name, by_step, run_folder / "figures" / f"{name}_accuracy.png")
            tracked.log_artifact(figure, "figures")


def finished_in_tracking(run_id: str | None, journal_file: Path) -> bool:
    """A run that reached its end is finished when its model is registered and no metric waits in its journal."""
    return registered_version(run_id) is not None and not journal_file.exists()
