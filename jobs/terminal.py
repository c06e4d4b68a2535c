"""What a training command shows in the terminal: the progress bar, and the report a run ends with (`train`
and `finetune` alike; the trainer itself only logs)."""

from __future__ import annotations

import os
import sys

from jobs import tracking
from jobs.checkpoint import best_checkpoint
from jobs.config import ExperimentConfig
from jobs.tracking.registry import CHAMPION, champion_version
from jobs.training.trainer import StopReason, TrainResult


class ProgressBar:
    """The command's progress bar (the trainer calls step() after each optimizer step, on rank 0): steps out of
    training.max_steps, or with training.max_time_minutes, seconds out of the time budget."""

    def __init__(self, run):
        from tqdm.auto import tqdm

        self.run = run
        if run.budget is None:
            self.bar = tqdm(total=run.total_steps, initial=run.progress.step, desc="training", unit="step",
                            dynamic_ncols=True)
        else:
            self.bar = tqdm(total=run.budget, initial=min(run.progress.train_seconds, run.budget), desc="training",
                            unit="s", dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s of the time "
                                                                     "budget [{elapsed}<{remaining}{postfix}]")

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc_info) -> None:
        self.bar.close()

    def step(self, loss: float, lr: float, tokens_per_sec: float) -> None:
        run = self.run
        self.bar.update(1 if run.budget is None else min(run.progress.train_seconds, run.budget) - self.bar.n)
        self.bar.set_postfix(step=run.progress.step, loss=f"{loss:.3f}", lr=f"{lr:.1e}", tok_s=f"{tokens_per_sec:,.0f}")


def report_run(job: str, config: str | None, overrides: dict, cfg: ExperimentConfig, result: "TrainResult") -> None:
    """report() for a training command (train, finetune, prefer), with the command line that resumes it."""
    flags = ([f"--config {config}"] if config else []) + [f"--{key}={value}" for key, value in overrides.items()]
    report(cfg, result, f"{launcher()} {job} {' '.join(flags)}")


def report(cfg: ExperimentConfig, result: "TrainResult", command: str) -> None:
    """What the job prints at its end (rank 0), and its exit status after a signal (every rank)."""
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for all
        if result.stopped_by.exit_status:
            sys.exit(result.stopped_by.exit_status)
        return
    if result.stopped_by == StopReason.NOTHING_TO_DO:
        print(f"nothing to do: the run in {result.checkpoint_dir} already reached its end at step {result.steps} "
              f"(training.max_steps or training.max_time_minutes); to train it further, resume with a larger "
              f"--training.max_steps=N or --training.max_time_minutes=M")
        return
    in_loop, sender_cpu = result.tracking_seconds
    if result.train_seconds > 0:
        print(f"tracking overhead: {in_loop:.3f} s in the training loop + {sender_cpu:.3f} s CPU in the sender thread, "
              f"of {result.train_seconds:.1f} s of training ({100 * (in_loop + sender_cpu) / result.train_seconds:.2f}%)",
              file=sys.stderr)
    if result.stopped_by.exit_status:
        print(f"stopped by {result.stopped_by.value} at step {result.steps}; continue with:\n"
              f"  {command} --resume {result.checkpoint_dir / 'latest'}", file=sys.stderr)
        sys.exit(result.stopped_by.exit_status)
    print(f"done: {result.steps} steps, best val loss {result.best_val_loss:.4f}, run {result.run_id}, "
          f"checkpoints in {result.checkpoint_dir}")
    print(next_steps(cfg, result))


def next_steps(cfg: ExperimentConfig, result: TrainResult) -> str:
    """What a person does after training: talk to the model, and look at the run."""
    uri = tracking.tracking_uri()
    ui = (f"open {uri}" if uri.startswith(("http://", "https://"))
          else f"mlflow ui --backend-store-uri {uri}   # then http://127.0.0.1:5000")
    model = f"models:/{cfg.model_name}@{CHAMPION}"
    champion = champion_version(cfg.model_name) if result.model_version is not None else None
    if result.model_version is None:
        model = str(best_checkpoint(result.checkpoint_dir))
        registered = "not registered (see the tracking warnings above); the checkpoint serves directly"
    elif champion == result.model_version:
        registered = f"registered as version {result.model_version} of {cfg.model_name!r}, the champion: {model} serves it"
    else:  # the alias stayed where it was (a better version, or one measured on other data: said above)
        registered = (f"registered as version {result.model_version} of {cfg.model_name!r}; {model} still serves "
                      f"version {champion}, so this run's model is models:/{cfg.model_name}/{result.model_version}")
        model = f"models:/{cfg.model_name}/{result.model_version}"
    return (f"model: {registered}\n"
            f"next:  python -m jobs chat --model {model}\n"
            f"       python -m jobs generate --model {model} --prompt \"{cfg.training.sample_prompt}\"\n"
            f"       {ui}")


def launcher() -> str:
    """How this process was started, for the --resume command it prints: under torchrun, the launcher with the
    same process count (a resume on another count is refused: the global batch would change)."""
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if world == 1:
        return "python -m jobs"
    if world == local:
        return f"python -m jobs.launch --standalone --nproc_per_node={local} -m jobs"
    return (f"python -m jobs.launch --nnodes={world // local} --nproc_per_node={local} --rdzv_backend=c10d "
            f"--rdzv_endpoint=HOST:PORT -m jobs")
