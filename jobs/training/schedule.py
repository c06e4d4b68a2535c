"""The learning-rate schedule: linear warmup from 0 over a number of optimizer steps, then cosine or linear
decay to the minimum.

Warmup counts optimizer steps (training.warmup_steps, or training.warmup_ratio of the planned steps), never
seconds: on a busy machine the first steps are slow, and a warmup measured in time would reach the peak
learning rate after a handful of steps (measured: by step 10 instead of about 50, and a final loss 0.34 nats
worse). The decay follows the run's progress: steps done / total steps, or, for a run with a time budget
(training.max_time_minutes), whichever of that and elapsed / budget is further along, so a time-limited run
still anneals to the minimum learning rate by the end of its budget. (Checkpoints keep the seconds trained, so
--resume goes on with the budget; runs without a budget are exactly reproducible.)
"""

from __future__ import annotations

import math

from jobs.config import TrainingConfig


def warmup_steps(total_steps: int, config: TrainingConfig) -> int:
    if config.warmup_steps is not None:
        return config.warmup_steps
    return round(config.warmup_ratio * total_steps)


def learning_rate(step: int, total_steps: int, config: TrainingConfig, elapsed_seconds: float = 0.0,
                  budget_seconds: float | None = None) -> float:
    """LR for optimizer step `step` (1 for the first) of `total_steps`, `elapsed_seconds` into the run."""
    warmup = warmup_steps(total_steps, config)
    if step < warmup:
        return config.learning_rate * step / warmup
    if config.lr_decay == "constant":
        return config.learning_rate
    decay_progress = decay_fraction(step - warmup, total_steps - warmup, elapsed_seconds, budget_seconds)
    if config.lr_decay == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * decay_progress))
    else:
        factor = 1.0 - decay_progress
    return config.min_learning_rate + factor * (config.learning_rate - config.min_learning_rate)


def decay_fraction(steps_done: int, decay_steps: int, elapsed_seconds: float = 0.0,
                   budget_seconds: float | None = None) -> float:
    """How far along the decay is, in [0, 1]: by steps, or by time if that is further."""
    by_steps = steps_done / decay_steps if decay_steps > 0 else 1.0
    by_time = elapsed_seconds / budget_seconds if budget_seconds else 0.0
    return min(max(by_steps, by_time, 0.0), 1.0)
