"""Tracking overhead: steps/s of the same training with MLflow logging on and off, in one process.

    python -m bench.tracking                        # the CPU demo's model, 2 threads, a local sqlite store

"On" is what the train job does per optimizer step: `RunLogger.log_metrics` with the seven train/* metrics
(appended to a list; a background thread sends them every few seconds) and a synchronous `flush` every
`--flush-every` steps (the train job flushes before each checkpoint). "Off" runs the same steps without it.
Blocks of steps alternate on, off, on, off... on the same model, so a slow moment of a busy machine lands on
both; the overhead is 1 - (median steps/s on) / (median steps/s off). The logger's own time (training thread
plus the sender thread's CPU) is printed too: a direct measurement that machine noise moves less.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch

from jobs.tracking.metrics import RunLogger
from jobs.data.windows import TokenStream, TrainWindows
from jobs.training.runtime import make_runtime
from model_zoo.build import build_model
from model_zoo.config import ModelConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=12, help="blocks of steps, alternating on and off")
    parser.add_argument("--steps-per-block", type=int, default=40)
    parser.add_argument("--flush-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=2048, d_model=128, n_heads=4, n_blocks=4, d_ffn=512, max_seq_len=128)  # cpu_demo
    runtime = make_runtime("torch", build_model(config, "torch"), "cpu")
    runtime.configure_optimizer(3e-3, 0.1, (0.9, 0.95))
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, 2_000_000).astype(np.uint16)
    loader = TrainWindows(TokenStream(tokens, config.max_seq_len), batch_size=16, seed=0)

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        experiment_id = mlflow.create_experiment("bench-tracking")
        run = mlflow.start_run(experiment_id=experiment_id)
        logger = RunLogger(run.info.run_id, Path(tmp) / "journal.jsonl")
        rates = {True: [], False: []}
        step, train_seconds = 0, 0.0
        for _ in range(2):  # warm-up steps, not counted
            runtime.train_step([loader.next_batch()], 1.0)
        for block in range(args.blocks):
            tracked = block % 2 == 0
            start = time.perf_counter()
            for _ in range(args.steps_per_block):
                step += 1
                loss, grad_norm = runtime.train_step([loader.next_batch()], 1.0)
                if tracked:
                    logger.log_metrics({"train/loss": loss, "train/lr": 3e-3, "train/grad_norm": grad_norm,
                                        "train/tokens_per_sec": 1.0, "train/tokens_seen": step,
                                        "train/flops_seen": step, "train/mfu": 0.5}, step)
                    if step % args.flush_every == 0:
                        logger.flush()
            seconds = time.perf_counter() - start
            rates[tracked].append(args.steps_per_block / seconds)
            if tracked:
                train_seconds += seconds
        logger.close()
        mlflow.end_run()
        logged = len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss"))

    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    own = logger.seconds_spent + logger.sender_cpu_seconds
    print(f"\ncpu_demo model (d_model 128, 4 blocks, T 128, batch 16), fp32, {args.threads} threads; "
          f"{args.blocks} blocks of {args.steps_per_block} steps alternating; flush every {args.flush_every} steps")
    print(f"{'':<28}{'steps/s (median block)':>24}")
    print(f"{'MLflow logging off':<28}{off:>24.2f}")
    print(f"{'MLflow logging on':<28}{on:>24.2f}")
    print(f"overhead from throughput: {100 * (1 - on / off):.2f}% (target: under 2%)")
    print(f"overhead from the logger's own time: {own:.3f} s ({logger.seconds_spent:.3f} s in the training thread, "
          f"{logger.sender_cpu_seconds:.3f} s CPU in the sender) of {train_seconds:.1f} s of logged training = "
          f"{100 * own / train_seconds:.2f}%")
    print(f"metrics stored: {logged} train/loss values for {sum(1 for b in range(args.blocks) if b % 2 == 0) * args.steps_per_block} logged steps")


if __name__ == "__main__":
    main()
