"""Where a training run keeps its checkpoints, and which checkpoint `--resume` continues.

    <data.assets_dir>/checkpoints/<experiment>/<model type>/
        LATEST                                   the name of the newest GPT-2 run folder (what a bare --resume
                                                 continues); LATEST-llama the newest Llama run's
        <model type>-<date>-<time>-<6 hex>/      one run: best/, latest/, step-N/, metrics-journal.jsonl
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import uuid
from pathlib import Path

from jobs import atomic
from jobs.checkpoint import Checkpoint, load_checkpoint
from jobs.config import ExperimentConfig
from jobs.errors import CheckpointError

log = logging.getLogger(__name__)


def checkpoint_root(cfg: ExperimentConfig) -> Path:
    """The folder of an experiment's runs of one model type."""
    return Path(cfg.data.assets_dir) / "checkpoints" / cfg.experiment_name / cfg.training.model_type


def new_run_folder(cfg: ExperimentConfig) -> Path:
    """<model type>-<date>-<time>-<6 random hex digits>: sortable by start, and two runs started in the same
    second still get folders of their own. Created when the run saves its first checkpoint."""
    return checkpoint_root(cfg) / f"{cfg.training.model_type}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def latest_marker(cfg: ExperimentConfig) -> Path:
    """The file naming the newest run of the experiment, model type and architecture (GPT-2 and Llama runs of one
    experiment each resume their own)."""
    architecture = cfg.model_config_.architecture
    return checkpoint_root(cfg) / ("LATEST" if architecture == "gpt2" else f"LATEST-{architecture}")


def mark_latest(cfg: ExperimentConfig, run_folder: Path) -> None:
    """Make run_folder the one a bare --resume continues (once, when it saves its first checkpoint)."""
    marker = latest_marker(cfg)
    if not marker.is_file() or marker.read_text().strip() != run_folder.name:
        run_folder.mkdir(parents=True, exist_ok=True)
        atomic.write_text(marker, run_folder.name)


def latest_run_folder(cfg: ExperimentConfig) -> Path:
    marker = latest_marker(cfg)
    if not marker.is_file():
        raise CheckpointError(f"nothing to resume: no run of {cfg.experiment_name} ({cfg.training.model_type}) "
                              f"under {checkpoint_root(cfg)}")
    name = marker.read_text(errors="replace").strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name) or ".." in name:  # a marker leads nowhere else
        raise CheckpointError(f"{marker} does not hold a run folder's name (it holds {name[:40]!r}); resume with "
                              f"--resume PATH, or delete the marker")
    return checkpoint_root(cfg) / name


def checkpoints_newest_first(run_folder: Path) -> list[Path]:
    """The checkpoints of a run folder (latest, best, step-N; each holds the full training state), highest step
    first (latest before another of the same step); one whose state.json cannot be read comes last."""
    found = []
    for folder in run_folder.iterdir() if run_folder.is_dir() else []:
        state = folder / "state.json"
        if folder.is_dir() and not folder.name.endswith((".tmp", ".old")) and state.is_file():
            try:
                found.append((int(json.loads(state.read_text())["step"]), folder.name == "latest", folder))
            except (ValueError, KeyError, TypeError):
                found.append((-1, False, folder))  # damaged: load_checkpoint names the problem if it is chosen
    return [folder for *_, folder in sorted(found, key=lambda f: f[:2], reverse=True)]


def newest_checkpoint(run_folder: Path) -> Path | None:
    """The checkpoint of a run folder with the highest step, or None when the run saved none yet."""
    found = checkpoints_newest_first(run_folder)
    return found[0] if found else None


def newest_usable_checkpoint(run_folder: Path) -> Checkpoint | None:
    """The newest checkpoint that loads whole, loaded: a damaged newer one (a crash mid-write on a disk that lies,
    an edited file) is skipped, and said, so a restarted pod goes on from the intact one beside it."""
    first_error = None
    for folder in checkpoints_newest_first(run_folder):
        try:
            return load_checkpoint(folder)
        except CheckpointError as error:
            first_error = first_error or error
            log.warning(f"--resume: skipping {folder} ({error})")
    if first_error is not None:
        raise first_error
    return None


def checkpoint_to_resume(cfg: ExperimentConfig, resume: str | bool | None) -> Checkpoint | None:
    """The checkpoint --resume names, loaded (read once), or None for a fresh run (see the train command's
    docstring, jobs/train.py)."""
    if not resume:
        return None
    if resume is True or resume == "auto":
        newest = newest_usable_checkpoint(latest_run_folder(cfg)) if latest_marker(cfg).is_file() else None
        if newest is None and resume is True:
            raise CheckpointError(f"nothing to resume: no checkpoint of {cfg.experiment_name} "
                                  f"({cfg.training.model_type}) under {checkpoint_root(cfg)}")
        return newest
    return load_checkpoint(resume)


# What a resumed run may change from the settings it started with: how long it goes on, and how it is run and
# watched. Anything else (the model, the data, the optimiser's settings) would make it another experiment.
RESUMABLE_CHANGES = {f"training.{key}" for key in (
    "max_steps", "max_time_minutes", "num_epochs", "device", "num_threads", "compile", "log_every", "eval_every",
    "checkpoint_every", "keep_checkpoints", "sample_every", "sample_prompt", "sample_length", "final_evals",
    "final_evals_history")} | {"data.num_proc"}


def _with_defaults(saved: dict) -> dict:
    """A saved experiment with the keys added to the schema since it was written at their defaults (a run
    started before a key existed resumes with the key's default, which is no change)."""
    from pydantic import ValidationError

    from jobs.config import ExperimentConfig

    try:
        return ExperimentConfig.model_validate(saved).to_dict()
    except ValidationError:  # a schema that changed otherwise: compare what was saved, key by key
        return saved


def resume_changes(saved: dict | None, cfg: ExperimentConfig) -> dict[str, tuple]:
    """{key: (run's value, new value)} of the settings a resume changes, all of them in RESUMABLE_CHANGES; a
    CheckpointError naming the first other difference (a checkpoint without its experiment is not compared)."""
    from jobs.tracking import flatten

    if not saved:
        return {}
    before, after = flatten("", _with_defaults(saved)), flatten("", cfg.to_dict())
    changes = {key: (before.get(key), after.get(key)) for key in sorted(set(before) | set(after))
               if before.get(key) != after.get(key)}
    for key, (old, new) in changes.items():
        if key not in RESUMABLE_CHANGES:
            raise CheckpointError(
                f"--resume: {key} is {str(new)[:60]!r} here but {str(old)[:60]!r} in the run being resumed; a resumed "
                f"run keeps its settings (only how long it trains and how it is run may change): give the run's "
                f"value, or start a new run without --resume")
    return changes


class RunLock:
    """One writer per run: an exclusive lock on <run folder>/.lock while a process trains it. The kernel drops
    the lock when that process ends, however it ends (kill -9 included), so a killed run never leaves it stuck;
    a second process that tries to continue the run meanwhile is refused before it changes anything."""

    def __init__(self, folder: Path):
        import fcntl
        import os
        import socket

        try:  # a read-only assets folder, or a file where a folder should be, is refused before any training
            folder.mkdir(parents=True, exist_ok=True)
            self.file = open(folder / ".lock", "a+")
        except OSError as error:
            raise CheckpointError(f"cannot write checkpoints in {folder} ({error.strerror or error}): data.assets_dir "
                                  f"must be a folder this process can write") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip()[:100] or "another process"
            self.file.close()
            raise CheckpointError(f"run {folder} is being trained by {holder}: one process at a time continues a "
                                  f"run (wait for it to end, or stop it)") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}")
        self.file.flush()
        # Half-written checkpoints of a process that died mid-write: only the lock holder writes here, so any
        # temporary folder now is stale (and may be what filled the disk)
        for stale in folder.glob("*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)

    def release(self) -> None:
        self.file.close()  # closing the file releases the lock

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
