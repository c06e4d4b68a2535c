"""`python -m jobs sweep --config configs/X.yaml --space space.yaml --trials N [--steps S | --minutes M] [--name NAME]`

Search a config's settings with Optuna (TPE sampling, median pruning): each trial is a normal training run of the
config with the trial's settings (jobs/training/search.py reads the space), logged to MLflow as a child of one
sweep run (jobs/tracking/sweeps.py), so the MLflow UI's parallel-coordinates and contour views compare the
trials. The first trial is the config as written (when its values lie inside the space, and never pruned): the
reference the others are judged against. Trials are short: --steps S trains each for S optimizer steps (comparable however busy the machine is;
note that a fixed step count favours bigger models, which a time budget would not), --minutes M for M minutes
each; without either, the config's own budget. A trial whose validation loss is worse than the median of the
earlier trials at the same step is stopped early (pruned; --prune false turns that off). Trials do not register
models or score final_evals suites: a trial is a measurement. Confirm the winner at the full budget with
`python -m jobs train --config <best.yaml>`.

The study lives in <assets>/sweeps/<name>/study.db (Optuna's sqlite storage, beside the checkpoints): running the
same command again goes on where an interrupted sweep stopped, up to --trials finished trials; the same name with
another config or space is refused. At the end, best.yaml there (and --out, when given) is the config with the
best trial's settings, ready to train; figures of the search go to the sweep run. --name defaults to
<experiment_name>-sweep, which is also the MLflow experiment of the sweep and its trials.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field

from jobs import atomic
from jobs.data import pipeline
from jobs.config import NAME_PATTERN, apply_overrides, load_config, read_yaml, validate_config
from jobs.errors import ConfigError
from jobs.terminal import ProgressBar
from jobs.tracking import flatten
from jobs.tracking.sweeps import SweepRun, trial_tags
from jobs.training.run_folders import RunLock
from jobs.training.search import check_space, read_space, sample
from jobs.training.trainer import StopReason, Trial, run_training

log = logging.getLogger(__name__)

Trials = Annotated[int, Field(ge=1, le=10_000)]
Steps = Annotated[int, Field(ge=1)]
Minutes = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


def sweep(config: str, space: str, trials: Trials = 20, steps: Steps | None = None, minutes: Minutes | None = None,
          name: Name | None = None, prune: bool = True, seed: int = 0, out: str | None = None, **overrides) -> None:
    # the command line; run_sweep does the work (the module docstring is what --help shows)
    if steps is not None and minutes is not None:
        raise ConfigError("--steps and --minutes both given: a trial's length is one or the other")
    load_config(config, overrides)  # the config itself, checked (and its errors named) before the space
    base = apply_overrides(read_yaml(Path(config)) or {}, overrides)
    result = run_sweep(base, space, trials, steps, minutes, name, prune, seed, out)
    if result.stopped_by.exit_status:
        sys.exit(result.stopped_by.exit_status)


@dataclass
class SweepResult:
    study: Any  # the optuna.Study
    best_file: Path | None  # best.yaml, when a trial completed
    stopped_by: StopReason = StopReason.END


def trial_settings(base: dict[str, Any], steps: int | None, minutes: float | None, study_name: str) -> dict[str, Any]:
    """What every trial changes in the config: its length, its experiment (the sweep's), and no final suites."""
    fixed: dict[str, Any] = {"experiment_name": study_name, "training.final_evals": [],
                             "training.final_evals_history": False}
    if steps is not None:
        fixed |= {"training.max_steps": steps, "training.max_time_minutes": None}
    elif minutes is not None:
        fixed |= {"training.max_time_minutes": minutes}
    return fixed


def run_sweep(base: dict[str, Any], space_file: str, trials: int, steps: int | None = None,
              minutes: float | None = None, name: str | None = None, prune: bool = True, seed: int = 0,
              out: str | None = None, step_hook=None) -> SweepResult:
    """The sweep of the raw config `base` (YAML with overrides applied); step_hook: the tests' seam (Trainer's)."""
    import optuna

    cfg = validate_config(base)
    study_name = name or f"{cfg.experiment_name}-sweep"
    fixed = trial_settings(base, steps, minutes, study_name)
    space = read_space(space_file)
    check_space(space, base, fixed, space_file)  # every problem of the space, before any trial
    out_file = Path(out) if out else None
    if out_file is not None and (out_file.exists() or not out_file.parent.is_dir()):
        raise ConfigError(f"--out {out_file}: " + ("exists; name a new file (the best config is also written to "
                          "the sweep's folder)" if out_file.exists() else "its folder does not exist"))
    pipeline.prepare(cfg.data)  # the data's problems too, before any trial (trials then reuse its tokens)
    folder = Path(cfg.data.assets_dir) / "sweeps" / study_name
    fingerprint = hashlib.sha256(json.dumps({"config": base, "fixed": fixed, "space": [(d.key, d.describe())
                                 for d in space]}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    with RunLock(folder):  # one process drives a study at a time
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = f"sqlite:///{(folder / 'study.db').resolve()}"
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=(steps or 0) // 3) if prune \
            else optuna.pruners.NopPruner()
        study = optuna.create_study(study_name=study_name, storage=storage, direction="minimize", pruner=pruner,
                                    load_if_exists=True)
        # seeded past the trials already asked for: a sweep that goes on draws new settings, not the first ones again
        study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
        known = study.user_attrs.get("fingerprint")
        if known not in (None, fingerprint):
            raise ConfigError(f"sweep {study_name} ({folder}) was started with another config, space or trial length; "
                              f"give --name a new name to start another sweep, or delete that folder")
        study.set_user_attr("fingerprint", fingerprint)
        _fail_stale(study)  # trials a killed process left RUNNING: the lock says no one is running them
        _enqueue_baseline(study, space, cfg)
        parent = SweepRun(study_name, storage, study.user_attrs.get("mlflow_run_id"))
        study.set_user_attr("mlflow_run_id", parent.run_id)
        parent.log_setup({d.key: d.describe() for d in space},
                         {"trials": trials, "steps": steps, "minutes": minutes, "prune": prune, "seed": seed})
        stopped_by = StopReason.END
        try:
            while (done := _finished(study)) < trials:
                stopped_by = run_trial(study, space, base, fixed, parent, done + 1, trials, step_hook)
                if stopped_by.exit_status:  # a signal: the study keeps every finished trial; the same command goes on
                    log.warning(f"sweep {study_name} stopped by {stopped_by.value} after {_finished(study)} of "
                                f"{trials} trials; run the same command to go on")
                    parent.end("KILLED")
                    return SweepResult(study, None, stopped_by)
        except BaseException:
            parent.end("FAILED")
            raise
        best_file = _write_best(study, base, space, folder, out_file, parent)
        parent.end()
    _print_summary(study, best_file, out_file)
    return SweepResult(study, best_file)


def run_trial(study, space, base: dict, fixed: dict, parent: SweepRun, count: int, trials: int,
              step_hook=None) -> StopReason:
    """Ask the study for settings, train them, tell it the best validation loss (or that the trial was pruned)."""
    import optuna

    trial = study.ask()
    settings = sample(trial, space)
    shown = ", ".join(f"{key}={_short(value)}" for key, value in settings.items())
    log.info(f"trial {trial.number} ({count} of {trials}): {shown}")
    try:
        cfg = validate_config(apply_overrides(base, fixed | settings))
    except ConfigError as error:  # a combination of settings (not a corner) the schema refuses: that trial fails
        log.warning(f"trial {trial.number}: {error}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        parent.log_trial(trial.number, "FAIL", None, _best_value(study))
        return StopReason.END

    baseline = bool(trial.user_attrs.get("baseline"))

    def judge(step: int, val_loss: float) -> bool:
        trial.report(val_loss, step)
        return not baseline and trial.should_prune()  # the reference runs whole

    try:
        result = run_training(cfg, step_hook=step_hook, progress=ProgressBar,
                              trial=Trial(trial_tags(parent.run_id, study.study_name, trial.number), judge,
                                          run_name=f"trial-{trial.number}"))
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    if result.stopped_by.exit_status:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return result.stopped_by
    trial.set_user_attr("mlflow_run_id", result.run_id)
    trial.set_user_attr("steps", result.steps)
    if result.stopped_by == StopReason.PRUNED:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        state, value = "PRUNED", None
        log.info(f"trial {trial.number}: pruned at step {result.steps} (val loss {result.best_val_loss:.4f})")
    else:
        study.tell(trial, result.best_val_loss)
        state, value = "COMPLETE", result.best_val_loss
        log.info(f"trial {trial.number}: val loss {result.best_val_loss:.4f} after {result.steps} steps")
    parent.log_trial(trial.number, state, value, _best_value(study))
    return result.stopped_by


def _enqueue_baseline(study, space, cfg) -> None:
    """The config as written is the next trial, once per study, when its values lie inside the space: every
    sweep then holds the reference its other trials are judged against (marked `baseline` in its user attrs)."""
    if any(trial.user_attrs.get("baseline") for trial in study.get_trials(deepcopy=False)):
        return
    config_values = flatten("", cfg.to_dict())  # {"training.learning_rate": ..., ...}
    values = {d.key: config_values.get(d.key.replace("-", "_")) for d in space}
    if all(d.contains(values[d.key]) for d in space):
        study.enqueue_trial(values, user_attrs={"baseline": True})
    else:
        log.info("the config's own settings lie outside the space: no baseline trial")


def _finished(study) -> int:
    """Trials that count towards --trials: complete or pruned (a failed one is tried again)."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _fail_stale(study) -> None:
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        log.warning(f"trial {trial.number} was left running by a process that ended; counted as failed")


def _best_value(study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no complete trial yet
        return None


def _write_best(study, base: dict, space, folder: Path, out_file: Path | None, parent: SweepRun) -> Path | None:
    """best.yaml: the config (at its own budget) with the best trial's settings; figures of the search."""
    if _best_value(study) is None:
        log.warning("no trial completed: nothing to write")
        return None
    best = study.best_trial
    settings = {d.key: best.params[d.key] for d in space}
    text = (f"# The best of {len(study.trials)} trials of sweep {study.study_name}: trial {best.number}, validation "
            f"loss {best.value:.4f}\n# after {best.user_attrs.get('steps')} steps (MLflow run "
            f"{best.user_attrs.get('mlflow_run_id')}). Settings searched:\n"
            + "".join(f"#   {key}: {_short(value)}\n" for key, value in settings.items())
            + "# Train it at the config's own budget: python -m jobs train --config <this file>\n"
            + yaml.safe_dump(apply_overrides(base, settings), sort_keys=False))
    best_file = folder / "best.yaml"
    atomic.write_text(best_file, text)
    if out_file is not None:
        atomic.write_text(out_file, text)
    parent.log_artifact(best_file)
    for figure in _figures(study, folder):
        parent.log_artifact(figure)
    return best_file


def _figures(study, folder: Path) -> list[Path]:
    """The search as pictures (matplotlib, through Optuna): loss by trial, and each trial's settings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for name, plot in (("history", optuna_plots.plot_optimization_history),
                           ("parallel-coordinates", optuna_plots.plot_parallel_coordinate)):
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as error:  # too few complete trials for this plot
                log.info(f"figure {name}: skipped ({error})")
                continue
            path = folder / f"{name}.png"
            axes.figure.savefig(path, dpi=120, bbox_inches="tight")
            plt.close(axes.figure)
            paths.append(path)
    return paths


def _print_summary(study, best_file: Path | None, out_file: Path | None) -> None:
    from optuna.trial import TrialState

    print(f"\nsweep {study.study_name}: {len(study.trials)} trials")
    for trial in study.get_trials(deepcopy=False):
        value = f"{trial.value:.4f}" if trial.state == TrialState.COMPLETE else trial.state.name.lower()
        shown = ", ".join(f"{key}={_short(v)}" for key, v in trial.params.items())
        print(f"  {trial.number:>4}  {value:>9}  {shown}" + ("  (the config as written)"
                                                         if trial.user_attrs.get("baseline") else ""))
    if best_file is not None:
        print(f"best: trial {study.best_trial.number}, val loss {study.best_value:.4f}; its config: {best_file}"
              + (f" and {out_file}" if out_file else ""))
        print(f"confirm it at the full budget: python -m jobs train --config {out_file or best_file}")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

