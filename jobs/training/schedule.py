"""The learning-rate schedule: linear warmup from 0, then cosine or linear decay to the minimum.

The schedule is a function of training progress, a fraction from 0 to 1: step / total steps, or, for a run
with a time budget (training.max_time_minutes), whichever of that and elapsed / budget is further along, so a
time-limited run still anneals to the minimum learning rate by the end of its budget.
"""

from __future__ import annotations

import math

from jobs.config import TrainingConfig


def learning_rate(progress: float, config: TrainingConfig) -> float:
    """LR at `progress` in [0, 1] of the run."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < config.warmup_ratio:
        return config.learning_rate * progress / config.warmup_ratio
    if config.lr_decay == "constant":
        return config.learning_rate
    decay_progress = (progress - config.warmup_ratio) / (1.0 - config.warmup_ratio)  # 0 -> 1 over the decay
    if config.lr_decay == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * decay_progress))
    else:
        factor = 1.0 - decay_progress
    return config.min_learning_rate + factor * (config.learning_rate - config.min_learning_rate)


def progress(steps_done: int, total_steps: int, elapsed_seconds: float = 0.0,
             budget_seconds: float | None = None) -> float:
    """Fraction of the run done once `steps_done` steps have run: by steps, or by time if that is further.
    (Checkpoints keep the seconds trained, so --resume goes on with the budget; runs without a budget are
    exactly reproducible.)"""
    by_steps = steps_done / total_steps
    if budget_seconds is None:
        return by_steps
    return max(by_steps, elapsed_seconds / budget_seconds)
