"""The trainer: one run, set up from a config and run to its end (what `train` and `finetune` run).

    run_training(cfg)   suites and data first, then Trainer(...).run(): optimizer steps, and every so often a
                        validation, a sample and a checkpoint; at the end, registration and scoring

Its parts live beside it in jobs/training/: the runtime (either model type's step), the schedule, run folders
and --resume, distributed ranks, validation and throughput. The `train` command (jobs/train.py) prints what a
run ends with; here the run reports as it goes through logging.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import os
import platform
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from jobs import minimal_pairs, tracking
from jobs.checkpoint import Checkpoint, CheckpointState, load_weights, restore_rng_state, rng_state, rotate, \
    save_checkpoint
from jobs.config import ExperimentConfig
from jobs.data import chat_template, text_data
from jobs.errors import CheckpointError
from jobs.tracking.registry import registered_version
from jobs.training import run_end
from jobs.training.data import StartingPoint, TrainingData, settle_config
from jobs.training.distributed import Distributed
from jobs.training.validation import validation_loss
from jobs.training.run_folders import (RunLock, checkpoint_to_resume, mark_latest, new_run_folder, newest_checkpoint,
                                       resume_changes)
from jobs.training.runtime import make_runtime
from jobs.training.schedule import lr_scale
from model_zoo.build import build_model, resolve_device
from model_zoo.config import count_parameters, flops_per_token
from model_zoo.generation import generate_tokens

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    pass


class StopReason(str, enum.Enum):
    """Why a training session ended, and the exit status the job ends with. A str, so `reason == "SIGTERM"`."""

    END = "end"  # trained its steps
    TIME_LIMIT = "time limit"  # training.max_time_minutes spent
    SIGINT = "SIGINT"
    SIGTERM = "SIGTERM"
    OTHER_RANK = "signal on another rank"  # under torchrun: this rank stops because another was signalled
    NOTHING_TO_DO = "nothing to do"  # a resumed run that had already reached its end
    PRUNED = "pruned"  # a sweep's trial stopped early: its validation loss was no match for the other trials'

    @property
    def reached_the_end(self) -> bool:
        """The run is complete: its best checkpoint is registered and scored."""
        return self in (StopReason.END, StopReason.TIME_LIMIT)

    @property
    def exit_status(self) -> int:
        """128 + N after signal N (what shells and schedulers read as "stopped by signal N"), else 0."""
        return {StopReason.SIGINT: 128 + signal.SIGINT, StopReason.SIGTERM: 128 + signal.SIGTERM,
                StopReason.OTHER_RANK: 128 + signal.SIGTERM}.get(self, 0)


@dataclass
class TrainResult:
    run_id: str | None
    steps: int
    best_val_loss: float
    checkpoint_dir: Path
    losses: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    stopped_by: StopReason = StopReason.END
    model_version: str | None = None  # the registered version, when the run registered one
    tracking_seconds: tuple[float, float] = (0.0, 0.0)  # in the training loop, and CPU of the sender thread


StepHook = Callable[[int, Callable[[], tuple[float, float]]], tuple[float, float]]


@dataclass(frozen=True)
class Trial:
    """What a sweep (jobs/sweep.py) asks of a run it starts: MLflow tags (its parent run, its trial number), a
    judge of each validation loss (on_validation(step, loss) -> True stops the run: pruned), and no registration
    (a trial is a measurement; its winner is trained again at the full budget, and that run registers)."""

    tags: dict[str, str] = field(default_factory=dict)
    on_validation: Callable[[int, float], bool] | None = None
    register: bool = False
    run_name: str | None = None  # the MLflow run's name (default: the run folder's)


def run_training(cfg: ExperimentConfig, resume: str | bool | None = None, step_hook: StepHook | None = None,
                 progress: Callable | None = None, load_data: Callable = text_data.load,
                 start: StartingPoint = StartingPoint(), trial: Trial | None = None) -> TrainResult:
    """Train as the config says (on every rank, under torchrun). load_data(cfg, distributed, start) gives the
    TrainingData (text by default; jobs/data/chat_data.py: load for fine-tuning); start: where the weights start.
    step_hook: the tests' seam, see Trainer.step_hook; progress: what shows the steps (see Trainer.progress_view);
    trial: set when a sweep runs this as one of its trials."""
    device = resolve_device(cfg.training.device)
    distributed = Distributed.from_env(device)
    try:
        # Before the trainer is built: the suites to score at the end (read first: a bad one is refused before any
        # work), then the data, prepared (tokenizer, token files) when it is not already; then the config settled
        suites = [minimal_pairs.read_suite(path, "training.final_evals")
                  for path in cfg.training.final_evals] if distributed.is_main else []
        data = load_data(cfg, distributed, start)
        cfg = settle_config(cfg, data, start)
        run = Trainer(cfg, data, start, suites, resume, distributed.device(device), distributed, step_hook, progress,
                      trial)
        # one process continues a run at a time (rank 0 holds the lock for all ranks; the others never write there)
        with RunLock(run.root) if distributed.is_main else contextlib.nullcontext():
            return run.run()
    finally:
        distributed.close()


@dataclass
class Progress:
    """Where a run stands: what a checkpoint saves of the loop, and --resume restores."""

    step: int = 0  # optimizer steps done
    best_val_loss: float = math.inf
    train_seconds: float = 0.0  # seconds trained, over every session of the run: the time budget counts these


class Trainer:
    """One training run. __init__ sets it up (model, optimizer, the checkpoint to resume); run() is the loop:
    optimizer steps, and every so often a validation, a sample and a checkpoint; then registration."""

    def __init__(self, cfg: ExperimentConfig, data: TrainingData, start: StartingPoint, suites: list,
                 resume: str | bool | None, device: str, distributed: Distributed, step_hook: StepHook | None = None,
                 progress_view: Callable | None = None, trial: Trial | None = None):
        """cfg: settled (settle_config); data: what this run learns from; start: where new weights start; suites:
        minimal-pair suites to score at the end (training.final_evals, read by rank 0).
        step_hook(n, step): the tests' seam, runs optimizer step n by calling step() (the real one) and returns its
        (loss, grad norm); tests slow steps down, send a signal or stop a server during one, or replace a loss.
        progress_view(trainer): what shows the run's progress, given by the command (a context manager whose .step()
        is called after each optimizer step, on rank 0); None: no bar."""
        tc = cfg.training
        self.distributed, self.device, self.main = distributed, device, distributed.is_main
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        self.suites, self.data, self.tokenizer, self.start = suites, data, data.tokenizer, start
        self.step_hook, self.progress_view, self.trial = step_hook, progress_view, trial
        self.cfg, self.tc, self.model_config = cfg, tc, cfg.model_config_
        T = self.model_config.max_seq_len
        for suite in suites:  # scored after training: every sentence must fit the context, known now
            minimal_pairs.check_fits(suite, self.tokenizer, T)
        checkpoint = checkpoint_to_resume(cfg, resume)
        if checkpoint is not None and checkpoint.state.model_type != tc.model_type:
            raise CheckpointError(f"{checkpoint.folder} holds a {checkpoint.state.model_type} model, not {tc.model_type}")
        self.resume_changes = {}
        if checkpoint is not None:  # the same experiment, trained with the same tokenizer, or a refusal saying why not
            self.resume_changes = resume_changes(checkpoint.state.experiment, cfg)
            if checkpoint.state.tokenizer_sha256 not in (None, self.tokenizer.sha256):
                raise CheckpointError(f"--resume: {checkpoint.folder} was trained with another tokenizer than the data "
                                      f"prepared now ({self.tokenizer.path}): the training text or its settings changed; "
                                      f"start a new run")
            if checkpoint.state.world_size != distributed.world_size:  # each rank draws its slice of a global batch
                n = checkpoint.state.world_size
                raise CheckpointError(f"--resume: {checkpoint.folder} was trained by {n} process(es), and this is "
                                      f"{distributed.world_size}: the global batch and its data stream would change; "
                                      f"resume with {n} (" + (f"python -m jobs.launch --standalone --nproc_per_node={n} "
                                      f"-m jobs train ...)" if n > 1 else "python -m jobs train ...)"))
            if data.content_id is not None and checkpoint.state.dataset_id not in (None, data.content_id):
                was = checkpoint.state.dataset_id
                raise CheckpointError(f"--resume: {checkpoint.folder} was trained on other data ({was}; the data now "
                                      f"is {data.content_id}): its files changed; start a new run")
        self.root = checkpoint.folder.parent if checkpoint else new_run_folder(cfg)  # this run's checkpoints

        torch.manual_seed(tc.seed)
        model = self.initial_model(checkpoint is not None)
        self.runtime = make_runtime(tc.model_type, model, device, tc.dtype, tc.compile, distributed, data.objective)
        self.runtime.configure_optimizer(tc.learning_rate, tc.weight_decay, (tc.beta1, tc.beta2), tc.muon_settings())
        self.loader = self.data.loader(tc.batch_size, T, tc.seed, distributed)

        self.tokens_per_step = tc.batch_size * T * tc.gradient_accumulation_steps * distributed.world_size  # all ranks
        self.total_steps = tc.max_steps or max(1, math.ceil(tc.num_epochs * self.data.train_tokens / self.tokens_per_step))
        self.flops_per_token = flops_per_token(self.model_config, T)
        self.budget = 60 * tc.max_time_minutes if tc.max_time_minutes else None  # seconds
        self.progress, self.run_id, self.resumed = Progress(), None, checkpoint is not None
        if checkpoint is not None:  # every check before MLflow is touched: a failed resume changes no tracked run
            self.restore(checkpoint)
        self.tracked: tracking.TrackedRun | tracking.NullRun = tracking.NullRun()
        self.bar = None

    def initial_model(self, resuming: bool):
        """The model a run starts from: the base's weights (fine-tuning) or fresh ones; a resume then loads its
        checkpoint's weights into it."""
        model = build_model(self.model_config, self.tc.model_type)
        if self.start.base is not None and not resuming:
            model.load_state_dict(self.start.base.model.state_dict())  # same names, either model type
        return model

    def restore(self, checkpoint: Checkpoint) -> None:
        """Weights, optimizer, data position, RNG and progress from the checkpoint, and its MLflow run, which must
        exist: all of it checked before the run is reopened, so a refused resume leaves the run as it was."""
        load_weights(self.runtime.model, checkpoint)
        try:  # the optimizer's layout (moments per parameter, torch's param_groups) must fit this model
            self.runtime.load_optimizer_state(checkpoint.optimizer, checkpoint.state.optimizer_scalars or {})
        except (KeyError, ValueError, TypeError, IndexError) as error:
            raise CheckpointError(f"{checkpoint.folder}: the optimizer state does not fit the model "
                                  f"({type(error).__name__}: {str(error)[:120]})") from None
        state = checkpoint.state  # each part takes back what it gave in save()
        self.loader.load_state_dict(state.loader.model_dump())
        restore_rng_state(state.rng)
        self.progress = Progress(state.step, state.best_val_loss, state.train_seconds)  # the time budget goes on
        self.run_id = state.mlflow_run_id
        if self.main and self.run_id is not None and not tracking.run_exists(self.run_id):
            raise CheckpointError(f"{checkpoint.folder / 'state.json'}: mlflow_run_id {self.run_id[:40]!r} is not a "
                                  f"run in {tracking.tracking_uri()} (another tracking store?)")

    # --- the loop ------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        if self.resumed and self.reached_the_end():
            # Rank 0 asks MLflow; one all-reduce tells every rank, so all of them finish the run or none does
            finished = self.main and run_end.finished_in_tracking(self.run_id, self.journal_file)
            (unfinished,) = self.distributed.sum(float(self.main and not finished))
            if not unfinished:  # before MLflow is written to: a finished run stays as it is
                self.distributed.barrier()  # as at the end of a run: no rank leaves while another still talks to it
                return TrainResult(self.run_id, self.progress.step, self.progress.best_val_loss, self.root,
                                   stopped_by=StopReason.NOTHING_TO_DO)
            return self.finish()
        self.peak_flops = _peak_flops(self.device)  # for MFU; measured only when there is training to do
        losses, stopped_by, model_version = [], StopReason.END, None
        if self.main:  # what is about to train, before the progress bar
            log.info(self.header())
        view = self.progress_view(self) if self.progress_view and self.main else contextlib.nullcontext()
        with self.tracked_run() as self.tracked, StopOnSignal() as signals, view as self.bar:
            if not self.resumed or self.tracked.branched_from:  # a new MLflow run
                self.run_id = self.tracked.run_id
                self.log_run_params()
            if not self.resumed and self.suites and self.tc.final_evals_history:  # the untrained model: where the
                self.save(f"step-{0:07d}")  # growth starts
            if self.resumed and self.resume_changes:  # what this session changed, said and kept with the run
                changed = {key: {"was": old, "now": new} for key, (old, new) in self.resume_changes.items()}
                self.say("resumed with " + ", ".join(f"{k} {v['now']} (was {v['was']})" for k, v in changed.items()))
                self.tracked.log_dict(changed, f"resume-changes/step-{self.progress.step:07d}.json")
            session_start = time.perf_counter()
            clock_start = session_start - self.progress.train_seconds  # the clock counts earlier sessions too
            while self.progress.step < self.total_steps:
                loss, signalled = self.optimizer_step(clock_start, signals)
                losses.append(loss)
                last = self.progress.step == self.total_steps
                out_of_time = self.budget is not None and self.progress.train_seconds > self.budget
                pruned = False
                if self.progress.step % self.tc.eval_every == 0 or last or out_of_time:
                    val_loss = self.validate()
                    if val_loss < self.progress.best_val_loss:  # the best so far is kept: it is what gets registered
                        self.progress.best_val_loss = val_loss
                        self.save("best")
                    pruned = bool(self.trial and self.trial.on_validation
                                  and self.trial.on_validation(self.progress.step, val_loss) and not last)
                if self.sample_due(last or out_of_time):
                    self.log_sample()
                if self.progress.step % self.tc.checkpoint_every == 0 and not last:
                    self.save_periodic()
                if signalled or out_of_time or pruned:
                    stopped_by = (StopReason(signals.caught or StopReason.OTHER_RANK) if signalled
                                  else StopReason.TIME_LIMIT if out_of_time else StopReason.PRUNED)
                    break
            self.save("latest")
            if stopped_by.reached_the_end and (self.trial is None or self.trial.register):  # register the best
                model_version = self.register_and_score()  # checkpoint, and score it
            if self.progress.best_val_loss == math.inf:  # stopped before its first validation
                self.progress.best_val_loss = self.validation_loss()
            if stopped_by.exit_status:  # a signal stopped training (one that comes during registration does not:
                self.tracked.status = "KILLED"  # the run is whole and registered, so it ends FINISHED, exit 0)
        # All ranks leave together: rank 0 may still be registering the model, and a rank that tears its process
        # group down and exits meanwhile was seen to end with torchrun stopping every worker (about 1 run in 8 of
        # the 2-process test), rank 0 mid-registration included.
        self.distributed.barrier()
        train_seconds = time.perf_counter() - session_start  # this session's
        return TrainResult(self.tracked.run_id, self.progress.step, self.progress.best_val_loss, self.root, losses,
                           train_seconds, stopped_by, model_version, self.tracked.overhead_seconds)

    def header(self) -> str:
        """One line saying what trains: architecture, size, model type, device, data, run."""
        config = self.model_config
        budget = f"{self.tc.max_time_minutes:g} min" if self.budget else f"{self.total_steps:,} steps"
        return (f"{'resuming' if self.resumed else 'training'} {config.architecture} ({count_parameters(config):,} "
                f"parameters, {config.n_blocks} blocks, d_model {config.d_model}) as the {self.tc.model_type} model "
                f"on {self.device} x{self.distributed.world_size}: {self.data.train_tokens:,} training tokens, "
                f"{budget} of batches of {self.tokens_per_step:,} tokens; run {self.root.name}")

    def finish(self) -> TrainResult:
        """The end of a run that reached it in an earlier session but was not registered (or its metrics not all
        sent): reopen the run (which sends the journal), register once, score, end it FINISHED."""
        if self.main:
            log.warning(f"run {self.run_id} reached its end at step {self.progress.step} but was not finished in "
                        f"MLflow (a crash or an outage during registration): finishing it")
        model_version = registered_version(self.run_id)
        with self.tracked_run() as self.tracked:
            if model_version is None:
                model_version = self.register_and_score()
        self.distributed.barrier()
        return TrainResult(self.tracked.run_id, self.progress.step, self.progress.best_val_loss, self.root,
                           stopped_by=StopReason.END, model_version=model_version)

    def reached_the_end(self) -> bool:
        out_of_budget = self.budget is not None and self.progress.train_seconds >= self.budget
        return self.progress.step >= self.total_steps or out_of_budget

    def optimizer_step(self, clock_start: float, signals: "StopOnSignal") -> tuple[float, bool]:
        """One step of the global batch; returns (its loss, whether any rank was signalled to stop)."""
        tc, step_start = self.tc, time.perf_counter()
        scale = lr_scale(self.progress.step + 1, self.total_steps, tc, self.progress.train_seconds, self.budget)
        self.runtime.set_lr_scale(scale)
        windows = [self.loader.next_batch() for _ in range(tc.gradient_accumulation_steps)]

        def step() -> tuple[float, float]:
            return self.runtime.train_step(windows, tc.max_grad_norm)

        loss, grad_norm = step() if self.step_hook is None else self.step_hook(self.progress.step + 1, step)
        # One all-reduce gives every rank the global batch's loss (each rank saw its own slice), the same clock
        # (so the schedule and the time budget agree) and whether any rank was signalled: ranks that stopped
        # at different steps would wait for each other forever.
        loss, seconds, signalled = self.distributed.mean(loss, time.perf_counter() - clock_start,
                                                         float(signals.caught is not None))
        if not math.isfinite(loss):
            saved = newest_checkpoint(self.root)
            raise TrainingDiverged(
                f"loss is {loss} at step {self.progress.step + 1}; stopped. "
                + (f"The last good checkpoint is {saved}" if saved else "No checkpoint was saved before it")
                + " (lower training.learning_rate or check the data)")
        if torch.device(self.device).type == "cuda":  # the step's kernels are done before it is timed
            torch.cuda.synchronize()
        self.progress.step += 1
        self.progress.train_seconds = seconds
        self.log_step(loss, scale, grad_norm, tokens_per_sec=self.tokens_per_step / (time.perf_counter() - step_start))
        return loss, bool(signalled)

    def log_step(self, loss: float, scale: float, grad_norm: float, tokens_per_sec: float) -> None:
        step, lr = self.progress.step, self.tc.learning_rate * scale  # AdamW's learning rate now
        if step % self.tc.log_every == 0 or step == self.total_steps:
            tokens_seen = step * self.tokens_per_step
            metrics = {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                       "train/tokens_per_sec": tokens_per_sec, "train/tokens_seen": tokens_seen,
                       "train/flops_seen": tokens_seen * self.flops_per_token}
            if self.tc.optimizer == "muon":
                metrics["train/muon_lr"] = self.tc.muon_learning_rate * scale
            if self.peak_flops:
                metrics["train/mfu"] = tokens_per_sec * self.flops_per_token / self.peak_flops
            self.tracked.log_metrics(metrics, step)
        if self.bar is not None:
            self.bar.step(loss, lr, tokens_per_sec)

    def validation_loss(self) -> float:
        """Every rank scores its share of the validation batches; the all-reduce gives all of them the total."""
        batches = self.data.validation_batches(self.tc.batch_size, self.model_config.max_seq_len, self.tc.eval_batches,
                                               self.distributed)
        return validation_loss(self.runtime, batches, self.distributed)[0]

    def validate(self) -> float:
        """The validation loss now: logged, said, returned."""
        step, loss = self.progress.step, self.validation_loss()
        metrics = {"val/loss": loss} | self.runtime.objective.validation_metrics(loss) | self.data.metrics(loss)
        self.tracked.log_metrics(metrics, step)
        shown = f" (perplexity {metrics['val/perplexity']:.1f})" if "val/perplexity" in metrics else ""
        self.say(f"step {step}: val loss {loss:.4f}{shown}")
        return loss

    def sample_due(self, end: bool) -> bool:
        """training.sample_every steps, or with each validation when it is unset."""
        step = self.progress.step
        if self.tc.sample_every is None:
            return step % self.tc.eval_every == 0 or end
        return step % self.tc.sample_every == 0

    def log_sample(self) -> None:
        """A short generation from training.sample_prompt, printed and kept as an artifact (rank 0)."""
        tc, step = self.tc, self.progress.step
        if not self.main:
            return
        prompt_ids, shown = self.data.sample_prompt(tc.sample_prompt)
        if not prompt_ids:
            return
        stops = chat_template.stop_ids(self.tokenizer)
        ids = [i for i in generate_tokens(self.runtime.model, prompt_ids, max_new_tokens=tc.sample_length,
                                          temperature=0.8, top_k=50, seed=step, stop_ids=stops) if i not in stops]
        text = shown + self.tokenizer.decode(ids)
        self.say(f"sample @ {step}: {text!r}")
        self.tracked.log_text(text, f"samples/step-{step:07d}.txt")

    # --- checkpoints and the end -----------------------------------------------------------------------------

    def save_periodic(self) -> None:
        self.save(f"step-{self.progress.step:07d}")
        rotate(self.root, self.tc.keep_checkpoints)
        self.save("latest")

    def save(self, name: str) -> None:
        """A checkpoint holding everything --resume needs (rank 0 writes it: all ranks hold the same weights)."""
        if not self.main:
            return
        mark_latest(self.cfg, self.root)
        self.tracked.flush()  # the metrics of the steps this checkpoint covers are sent or journalled before it exists
        opt_tensors, opt_scalars = self.runtime.optimizer_state()
        state = CheckpointState(  # what the model is, where it came from, and each part's own state (restore())
            model_type=self.tc.model_type, model_config=self.model_config.to_dict(), experiment=self.cfg.to_dict(),
            mlflow_run_id=self.tracked.run_id, tokenizer_sha256=self.tokenizer.sha256, eot_id=self.tokenizer.eot_id,
            dataset_id=self.data.dataset_id, **asdict(self.progress),  # step, best_val_loss, train_seconds
            loader=self.loader.state_dict(), rng=rng_state(), optimizer_scalars=opt_scalars,
            world_size=self.distributed.world_size)
        save_checkpoint(self.root / name, self.runtime.model.state_dict(), opt_tensors, state, self.tokenizer.path)

    def register_and_score(self) -> str | None:
        """The end of a run that reached it (rank 0): jobs/training/run_end.py registers the best checkpoint, draws
        the figures and scores the final_evals suites; returns the registered version."""
        if not self.main:
            return None
        version = run_end.register(self.tracked, self.root, self.cfg.model_name)
        if self.suites:
            run_end.score_suites(self.tracked, self.root, self.suites, self.device, self.tc.final_evals_history,
                                 self.cfg.model_name, version)
        return version

    # --- tracking and the terminal ----------------------------------------------------------------------------

    @property
    def journal_file(self) -> Path:
        """Where metrics MLflow could not take yet wait (see jobs/tracking/metrics.py: RunLogger)."""
        return self.root / "metrics-journal.jsonl"

    def tracked_run(self) -> tracking.TrackedRun | tracking.NullRun:
        """The MLflow run (rank 0 only): a new one, or the resumed run continued."""
        if not self.main:
            return tracking.NullRun()
        run_name = self.trial.run_name if self.trial and self.trial.run_name else self.root.name
        return tracking.TrackedRun(self.cfg.experiment_name, run_name, self.journal_file, self.run_id,
                                   resume_step=self.progress.step if self.resumed else None,
                                   branch=bool(self.resume_changes),  # new settings: steps trained again differ
                                   tags=self.trial.tags if self.trial else None)

    def log_run_params(self) -> None:
        """What a run is: its config (flattened, and whole as config.yaml), sizes, data, code and versions."""
        params = tracking.flatten("", self.cfg.to_dict())
        params.update({
            "architecture": self.model_config.architecture, "n_parameters": count_parameters(self.model_config),
            "flops_per_token": self.flops_per_token, "tokens_per_step": self.tokens_per_step,
            "total_steps": self.total_steps, "device": self.device, "world_size": self.distributed.world_size,
            "tokenizer_sha256": self.tokenizer.sha256, "git_commit": _git_commit(), "torch_version": torch.__version__,
            "python_version": platform.python_version(),
        })
        lineage = {f"base_{key}": value for key, value in self.start.lineage.items()}  # where a fine-tune starts
        self.tracked.log_params(params | self.data.params() | lineage)
        if lineage:
            self.tracked.set_tags(lineage)
        self.tracked.log_dict(self.cfg.to_dict(), "config.yaml")
        self.tracked.log_artifact(self.tokenizer.path, "tokenizer")

    def say(self, message: str) -> None:
        """What the run reports as it goes (validation, samples, scores): one log line (above the progress bar)."""
        if self.main:
            log.info(message)


class StopOnSignal:
    """While active, SIGINT and SIGTERM do not kill the process: they are noted (`caught`), and the loop saves a
    checkpoint and ends the run after the step in progress. A handler of the signal that was there before (a test
    runner's, when a test trains in-process) is called then, so that the signal meant for it is not swallowed;
    Python's own SIGINT handler is not (the command line reports the stop and exits 130 itself)."""

    def __enter__(self) -> "StopOnSignal":
        self.caught: str | None = None
        self.previous = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def on_signal(self, signum, frame) -> None:
        self.caught = signal.Signals(signum).name
        log.warning(f"{self.caught}: saving a checkpoint and ending the run after this step")

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        before = self.previous.get(signal.Signals[self.caught]) if self.caught else None
        if callable(before) and before is not signal.default_int_handler:
            before(signal.Signals[self.caught], None)


def _peak_flops(device: str) -> float | None:
    """Measured matmul FLOP/s of this device, for MFU (a 1024^3 matmul: well under a second)."""
    from jobs.training.throughput import measure_matmul_flops

    try:
        dtype = torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
        return measure_matmul_flops(device, dtype, n=1024, repeats=3)
    except Exception:
        return None


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=os.path.dirname(__file__)).stdout.strip() or "unknown"
    except Exception:
        return "unknown"
