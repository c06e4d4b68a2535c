"""`python -m jobs train --config configs/X.yaml [--model-type torch|custom] [--resume [PATH|auto]] [--KEY=VALUE ...]`

Prepares missing data, trains either model type, tracks everything in MLflow, keeps checkpoints, and
registers the best one as a model version that generate and chat load by alias.

--resume             continue the newest run of this experiment from its newest checkpoint (an error if none)
--resume PATH        continue from the checkpoint folder PATH
--resume auto        continue the newest run if it has a checkpoint, else start a fresh run: the command a
                     restarted pod or container runs, with nothing to edit between the first start and a restart
A run that already reached its end (training.max_steps, or the time budget) has nothing to resume: the job
says so, trains nothing and registers nothing.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mlflow
import torch

from jobs import atomic, tracking
from jobs.cli import typed
from jobs.config import ExperimentConfig, load_config
from jobs.data import prepare
from jobs.data.shards import TrainWindows, check_validation_fits, open_tokens
from jobs.errors import CheckpointError
from jobs.training import checkpoint as ckpt
from jobs.training.distributed import Distributed
from jobs.training.evaluation import validation_loss
from jobs.training.runtime import ModelRuntime, resolve_device
from jobs.training.schedule import learning_rate
from model_zoo.config import ConfigError, count_parameters, flops_per_token
from model_zoo.generation import generate_tokens


class TrainingDiverged(RuntimeError):
    pass


NOTHING_TO_DO = "nothing to do"
SIGNAL_EXIT_STATUS = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM,
                      "signal on another rank": 128 + signal.SIGTERM}


@dataclass
class TrainResult:
    run_id: str
    steps: int
    best_val_loss: float
    checkpoint_dir: Path
    losses: list[float]
    train_seconds: float
    stopped_by: str | None = None
    model_version: str | None = None  # the registered version, when the run registered one


@typed
def train(config: str | None = None, model_type: Literal["torch", "custom"] | None = None,
          resume: str | bool | None = None, **overrides) -> None:
    """Fire entry point; see run_training for the work."""
    if model_type is not None:
        overrides["training.model_type"] = model_type
    cfg = load_config(config, overrides)
    result = run_training(cfg, resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for all
        if result.stopped_by in SIGNAL_EXIT_STATUS:
            sys.exit(SIGNAL_EXIT_STATUS[result.stopped_by])
        return
    if result.stopped_by == NOTHING_TO_DO:
        print(f"nothing to do: the run in {result.checkpoint_dir} already reached its end at step {result.steps} "
              f"(training.max_steps or training.max_time_minutes); to train it further, resume with a larger "
              f"--training.max_steps=N or --training.max_time_minutes=M")
        return
    if result.stopped_by in SIGNAL_EXIT_STATUS:  # shells and schedulers read 128+N as "stopped by signal N"
        flags = ([f"--config {config}"] if config else []) + [f"--{key}={value}" for key, value in overrides.items()]
        print(f"stopped by {result.stopped_by} at step {result.steps}; continue with:\n"
              f"  python -m jobs train {' '.join(flags)} --resume {result.checkpoint_dir / 'latest'}", file=sys.stderr)
        sys.exit(SIGNAL_EXIT_STATUS[result.stopped_by])
    print(f"done: {result.steps} steps, best val loss {result.best_val_loss:.4f}, run {result.run_id}, "
          f"checkpoints in {result.checkpoint_dir}")
    print(next_steps(cfg, result))


def next_steps(cfg: ExperimentConfig, result: TrainResult) -> str:
    """What a person does after training: talk to the model, and look at the run."""
    uri = tracking.tracking_uri()
    ui = (f"open {uri}" if uri.startswith(("http://", "https://"))
          else f"mlflow ui --backend-store-uri {uri}   # then http://127.0.0.1:5000")
    model = f"models:/{cfg.model_name}@{tracking.CHAMPION}"
    if result.model_version is None:
        model = str(result.checkpoint_dir / "best")
        registered = "not registered (see the tracking warnings above); the checkpoint serves directly"
    else:
        registered = f"registered as version {result.model_version} of {cfg.model_name!r} ({model} serves the best version)"
    return (f"model: {registered}\n"
            f"next:  python -m jobs chat --model {model}\n"
            f"       python -m jobs generate --model {model} --prompt \"{cfg.training.sample_prompt}\"\n"
            f"       {ui}")


def checkpoint_root(cfg: ExperimentConfig) -> Path:
    """Where an experiment's runs of one model type keep their checkpoints: <root>/<run name>/{best,latest,...},
    and <root>/LATEST names the newest run folder (what a bare --resume continues)."""
    return Path(cfg.data.assets_dir) / "checkpoints" / cfg.experiment_name / cfg.training.model_type


def latest_run_folder(cfg: ExperimentConfig) -> Path:
    marker = checkpoint_root(cfg) / "LATEST"
    if not marker.is_file():
        raise CheckpointError(f"nothing to resume: no run of {cfg.experiment_name} ({cfg.training.model_type}) "
                              f"under {checkpoint_root(cfg)}")
    return checkpoint_root(cfg) / marker.read_text().strip()


def newest_checkpoint(run_folder: Path) -> Path | None:
    """The checkpoint of a run folder with the highest step (latest, best or step-N; each holds the full training
    state), or None when the run saved none yet."""
    found = []
    for folder in run_folder.iterdir() if run_folder.is_dir() else []:
        state = folder / "state.json"
        if folder.is_dir() and not folder.name.endswith((".tmp", ".old")) and state.is_file():
            try:
                found.append((int(json.loads(state.read_text())["step"]), folder.name == "latest", folder))
            except (ValueError, KeyError, TypeError):
                found.append((-1, False, folder))  # damaged: load_checkpoint names the problem if it is chosen
    return max(found, key=lambda f: f[:2])[2] if found else None


def checkpoint_to_resume(cfg: ExperimentConfig, resume: str | bool | None) -> Path | None:
    """The folder that --resume names, or None for a fresh run (see the module docstring)."""
    if not resume:
        return None
    if resume is True or resume == "auto":
        marker = checkpoint_root(cfg) / "LATEST"
        newest = newest_checkpoint(latest_run_folder(cfg)) if marker.is_file() else None
        if newest is None and resume is True:
            raise CheckpointError(f"nothing to resume: no checkpoint of {cfg.experiment_name} "
                                  f"({cfg.training.model_type}) under {checkpoint_root(cfg)}")
        return newest
    return Path(resume)


def run_training(cfg: ExperimentConfig, resume: str | bool | None = None, stop_after_steps: int | None = None) -> TrainResult:
    """Train as the config says. stop_after_steps ends early as an interruption would (used by tests)."""
    tc = cfg.training
    device = resolve_device(tc.device)
    distributed = Distributed.from_env(device)
    device = distributed.device(device)
    try:
        return _train(cfg, resume, stop_after_steps, device, distributed)
    finally:
        distributed.close()


def _train(cfg: ExperimentConfig, resume, stop_after_steps, device: str, distributed: Distributed) -> TrainResult:
    tc = cfg.training
    main = distributed.is_main
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    if not main:  # rank 0 prepares missing data; the others wait, then find it ready
        distributed.barrier()
    prepared = prepare.prepare(cfg.data)
    if main:
        distributed.barrier()
    tokenizer = prepared.tokenizer

    model_values = dict(cfg.model)
    model_values.setdefault("vocab_size", tokenizer.vocab_size)
    if model_values["vocab_size"] < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size ({model_values['vocab_size']}) is smaller than the tokenizer's "
                          f"{tokenizer.vocab_size} tokens")
    cfg = cfg.model_copy(update={"model": model_values})
    model_config = cfg.model_config_
    T = model_config.max_seq_len

    # <model type>-<date>-<time>-<6 random hex digits>: sortable by start, and two runs started in the same
    # second still get folders of their own
    run_name = f"{tc.model_type}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    root = checkpoint_root(cfg) / run_name  # this run's checkpoints; a resumed run keeps its folder
    resume_from = None
    resume_folder = checkpoint_to_resume(cfg, resume)
    if resume_folder is not None:
        resume_from = ckpt.load_checkpoint(resume_folder)
        root = resume_from.folder.parent
        if resume_from.state["model_type"] != tc.model_type:
            raise CheckpointError(f"{resume_from.folder} holds a {resume_from.state['model_type']} model, not {tc.model_type}")

    torch.manual_seed(tc.seed)
    runtime = ModelRuntime(tc.model_type, model_config, device, tc.dtype, tc.compile, distributed)
    runtime.configure_optimizer(tc.learning_rate, tc.weight_decay, (tc.beta1, tc.beta2))
    train_tokens = open_tokens(prepared.tokens_dir, "train", tokenizer)
    val_tokens = open_tokens(prepared.tokens_dir, "validation", tokenizer)
    check_validation_fits(val_tokens, T)  # found now, not at the first validation minutes into training
    loader = TrainWindows(train_tokens, tc.batch_size, T, seed=tc.seed, rank=distributed.rank,
                          world_size=distributed.world_size)

    tokens_per_step = tc.batch_size * T * tc.gradient_accumulation_steps * distributed.world_size  # all ranks
    total_steps = tc.max_steps or max(1, math.ceil(tc.num_epochs * len(train_tokens) / tokens_per_step))
    flops_token = flops_per_token(model_config, T)

    start_step, best_val, run_id, elapsed = 0, math.inf, None, 0.0
    if resume_from is not None:  # every check before MLflow is touched: a failed resume changes no tracked run
        ckpt.check_weights_fit(resume_from.folder, resume_from.weights, runtime.model.state_dict())
        runtime.model.load_state_dict({k: v.to(device) for k, v in resume_from.weights.items()})
        runtime.load_optimizer_state(resume_from.optimizer, resume_from.state.get("optimizer_scalars", {}))
        loader.load_state_dict(resume_from.state["loader"])
        ckpt.restore_rng_state(resume_from.state["rng"])
        start_step, best_val = resume_from.state["step"], resume_from.state.get("best_val_loss", math.inf)
        elapsed = resume_from.state.get("train_seconds", 0.0)  # the time budget goes on from where it stopped
        run_id = resume_from.state.get("mlflow_run_id")
        budget_left = not tc.max_time_minutes or elapsed < 60 * tc.max_time_minutes
        if start_step >= total_steps or not budget_left:  # before MLflow: a finished run stays as it is
            return TrainResult(run_id, start_step, best_val, root, [], 0.0, NOTHING_TO_DO)

    if main:
        experiment_id = tracking.setup(cfg.experiment_name)
        run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                               run_name=None if run_id else run_name, log_system_metrics=True)
        run_id = run.info.run_id
        logger = tracking.RunLogger(run_id, root / "metrics-journal.jsonl",
                                    resume_step=start_step if resume_from is not None else None)
    else:
        logger = tracking.NullLogger()  # only rank 0 tracks
    if resume_from is None and main:
        params = tracking.flatten("", cfg.to_dict())
        params.update({
            "architecture": model_config.architecture,
            "n_parameters": count_parameters(model_config), "flops_per_token": flops_token,
            "tokens_per_step": tokens_per_step, "total_steps": total_steps, "device": device,
            "dataset_id": prepared.meta["dataset_id"], "dataset_source": prepared.meta["source"],
            "tokenizer_sha256": tokenizer.sha256, "train_tokens": len(train_tokens), "val_tokens": len(val_tokens),
            "git_commit": _git_commit(), "torch_version": torch.__version__, "mlflow_version": mlflow.__version__,
            "python_version": platform.python_version(), "world_size": distributed.world_size,
        })
        logger.safely("log params", mlflow.log_params, params)
        logger.safely("log config", mlflow.log_dict, cfg.to_dict(), "config.yaml")
        logger.safely("log tokenizer", mlflow.log_artifact, tokenizer.path, "tokenizer")

    peak_flops = _peak_flops(device)
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signal.Signals(signum).name
        print(f"\n{stop['signal']}: saving a checkpoint and ending the run after this step", file=sys.stderr)

    previous_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def val_loss() -> float:  # every rank scores its share of the batches; the all-reduce gives all the total
        return validation_loss(runtime, val_tokens, tc.batch_size, T, tc.eval_batches, distributed)[0]

    def save(name: str, step: int) -> Path | None:
        if not main:  # only rank 0 writes checkpoints (all ranks hold the same weights)
            return None
        if not (checkpoint_root(cfg) / "LATEST").is_file() or latest_run_folder(cfg) != root:
            root.mkdir(parents=True, exist_ok=True)
            atomic.write_text(checkpoint_root(cfg) / "LATEST", root.name)
        logger.flush()  # the metrics of the steps this checkpoint covers are sent or journalled before it exists
        opt_tensors, opt_scalars = runtime.optimizer_state()
        state = {
            "step": step, "model_type": tc.model_type, "model_config": model_config.to_dict(),
            "experiment": cfg.to_dict(), "best_val_loss": best_val, "loader": loader.state_dict(),
            "optimizer_scalars": opt_scalars, "rng": ckpt.rng_state(), "mlflow_run_id": run_id,
            "tokenizer_sha256": tokenizer.sha256, "eot_id": tokenizer.eot_id, "train_seconds": elapsed,
            "dataset_id": prepared.meta["dataset_id"],
        }
        return ckpt.save_checkpoint(root / name, runtime.model.state_dict(), opt_tensors, state, tokenizer.path)

    losses: list[float] = []
    step = start_step
    resumed_seconds = elapsed
    train_start = time.perf_counter() - elapsed  # so that now - train_start counts earlier sessions of this run too
    stopped_by, model_version = None, None
    budget = 60 * tc.max_time_minutes if tc.max_time_minutes else None  # seconds
    try:
        bar = _progress_bar(total_steps, start_step, budget, elapsed) if main else None
        while step < total_steps:
            step_start = time.perf_counter()
            lr = learning_rate(step + 1, total_steps, tc, elapsed, budget)
            runtime.set_learning_rate(lr)
            windows = [loader.next_batch() for _ in range(tc.gradient_accumulation_steps)]
            loss, grad_norm = runtime.train_step(windows, tc.max_grad_norm)
            # One all-reduce gives every rank the global batch's loss (each rank saw its own slice), the same clock
            # (so the schedule and the time budget agree) and whether any rank was signalled: ranks that stopped
            # at different steps would wait for each other forever.
            loss, elapsed, signalled = distributed.mean(loss, time.perf_counter() - train_start,
                                                        float(stop["signal"] is not None))
            if not math.isfinite(loss):
                saved = newest_checkpoint(root)
                raise TrainingDiverged(
                    f"loss is {loss} at step {step + 1}; stopped. "
                    + (f"The last good checkpoint is {saved}" if saved else "No checkpoint was saved before it")
                    + " (lower training.learning_rate or check the data)")
            if torch.device(device).type == "cuda":  # "cuda:N" under DDP
                torch.cuda.synchronize()
            step += 1
            losses.append(loss)
            seconds = time.perf_counter() - step_start
            tokens_per_sec = tokens_per_step / seconds
            if step % tc.log_every == 0 or step == total_steps:
                metrics = {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                           "train/tokens_per_sec": tokens_per_sec, "train/tokens_seen": step * tokens_per_step,
                           "train/flops_seen": step * tokens_per_step * flops_token}
                if peak_flops:
                    metrics["train/mfu"] = tokens_per_sec * flops_token / peak_flops
                logger.log_metrics(metrics, step)
            if bar is not None:  # counts steps, or seconds of the time budget when there is one
                bar.update(1 if budget is None else min(elapsed, budget) - bar.n)
                bar.set_postfix(step=step, loss=f"{loss:.3f}", lr=f"{lr:.1e}", tok_s=f"{tokens_per_sec:,.0f}")

            last = step == total_steps
            out_of_time = budget is not None and elapsed > budget
            if step % tc.eval_every == 0 or last or out_of_time:
                current = val_loss()
                logger.log_metrics({"val/loss": current, "val/perplexity": math.exp(min(current, 50)),
                                    "val/bits_per_byte": prepared.bits_per_byte(current)}, step)
                _say(bar, f"step {step}: val loss {current:.4f} (perplexity {math.exp(min(current, 50)):.1f})")
                if current < best_val:
                    best_val = current
                    save("best", step)
                if tc.sample_every is None and main:
                    _log_sample(runtime, tokenizer, tc, step, logger, bar)
            if tc.sample_every is not None and step % tc.sample_every == 0 and main:
                _log_sample(runtime, tokenizer, tc, step, logger, bar)
            if step % tc.checkpoint_every == 0 and not last:
                save(f"step-{step:07d}", step)
                ckpt.rotate(root, tc.keep_checkpoints)
                save("latest", step)
            if signalled or out_of_time or (stop_after_steps is not None and step - start_step >= stop_after_steps):
                stopped_by = ((stop["signal"] or "signal on another rank") if signalled
                              else "time limit" if out_of_time else "stop_after_steps")
                break
        if bar is not None:
            bar.close()
        save("latest", step)
        logger.close()
        if main and (step == total_steps or stopped_by == "time limit"):
            model_version = register_best(cfg, root, run_id, logger)
            logger.safely("log figures", _log_figures, run_id, root / "figures")
        if best_val == math.inf:
            best_val = val_loss()
        if main:
            logger.safely("end the run", mlflow.end_run, status="KILLED" if stop["signal"] else "FINISHED")
    except BaseException:
        logger.close()
        if main:
            logger.safely("end the run", mlflow.end_run, status="FAILED")
        raise
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    # All ranks leave together: rank 0 may still be registering the model, and a rank that tears its process
    # group down and exits meanwhile was seen to end with torchrun stopping every worker (about 1 run in 8 of
    # the 2-process test), rank 0 mid-registration included.
    distributed.barrier()
    train_seconds = time.perf_counter() - train_start - resumed_seconds  # this session's
    if main:
        print(f"tracking overhead: {logger.seconds_spent:.3f} s in the training loop + "
              f"{logger.sender_cpu_seconds:.3f} s CPU in the sender thread, of {train_seconds:.1f} s of training "
              f"({100 * (logger.seconds_spent + logger.sender_cpu_seconds) / train_seconds:.2f}%)")
    return TrainResult(run_id, step, best_val, root, losses, train_seconds, stopped_by, model_version)


def register_best(cfg: ExperimentConfig, root: Path, run_id: str, logger: tracking.RunLogger) -> str | None:
    """Log the best checkpoint as an MLflow model, a new version of cfg.model_name (champion if it is the best)."""
    from jobs.serving.registry import log_and_register

    best = root / "best" if (root / "best").is_dir() else root / "latest"
    return logger.safely("register the model", log_and_register, best, cfg.model_name, run_id)


def _log_sample(runtime, tokenizer, tc, step, logger, bar) -> None:
    prompt_ids = tokenizer.encode(tc.sample_prompt)
    if not prompt_ids:
        return
    ids = [i for i in generate_tokens(runtime.model, prompt_ids, max_new_tokens=tc.sample_length, temperature=0.8,
                                      top_k=50, seed=step, eos_id=tokenizer.eot_id) if i != tokenizer.eot_id]
    text = tc.sample_prompt + tokenizer.decode(ids)
    _say(bar, f"sample @ {step}: {text!r}")
    logger.safely("log a sample", mlflow.log_text, text, f"samples/step-{step:07d}.txt")


def _log_figures(run_id: str, folder: Path) -> None:
    """The run's loss (vs step and vs FLOPs), schedule and throughput figures, as artifacts."""
    from jobs.figures import load_runs, plot

    for path in plot(load_runs([run_id]), folder):
        mlflow.log_artifact(str(path), "figures")


def _say(bar, message: str) -> None:
    if bar is not None:
        bar.write(message)


def _progress_bar(total_steps: int, start_step: int, budget: float | None, start_seconds: float):
    """Steps out of training.max_steps, or with max_time_minutes, seconds out of the budget that ends the run."""
    from tqdm.auto import tqdm

    if budget is None:
        return tqdm(total=total_steps, initial=start_step, desc="training", unit="step", dynamic_ncols=True)
    return tqdm(total=budget, initial=min(start_seconds, budget), desc="training", unit="s",
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s of the time budget [{elapsed}<{remaining}{postfix}]")


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
