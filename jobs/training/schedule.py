"""The learning-rate schedule: linear warmup from 0 over a number of optimizer steps, then cosine or linear
decay to the minimum, or warmup-stable-decay ("wsd": the peak held, then a linear cool-down to the minimum over
the last training.cooldown_ratio of the run, the schedule of the modded-nanoGPT speed records: no need to know
the length of the run when the plateau starts, and the cool-down is where the loss drops).

The schedule is a multiplier (lr_scale) of every parameter group's peak learning rate: AdamW's
training.learning_rate and, with training.optimizer muon, Muon's training.muon_learning_rate follow the same
curve; training.min_learning_rate / training.learning_rate is the multiplier at the end.

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
    """AdamW's LR for optimizer step `step` (1 for the first) of `total_steps`, `elapsed_seconds` into the run."""
    return config.learning_rate * lr_scale(step, total_steps, config, elapsed_seconds, budget_seconds)


def lr_scale(step: int, total_steps: int, config: TrainingConfig, elapsed_seconds: float = 0.0,
             budget_seconds: float | None = None) -> float:
    """The multiplier of every peak learning rate at optimizer step `step` (1 for the first) of `total_steps`."""
    warmup = warmup_steps(total_steps, config)
    if step < warmup:
        return step / warmup
    if config.lr_decay == "constant":
        return 1.0
    floor = config.min_learning_rate / config.learning_rate
    if config.lr_decay == "wsd":  # the cool-down is a share of the whole run (warmup included), by steps or time
        progress = decay_fraction(step, total_steps, elapsed_seconds, budget_seconds)
        factor = min(1.0, (1.0 - progress) / config.cooldown_ratio)
    else:
        decay_progress = decay_fraction(step - warmup, total_steps - warmup, elapsed_seconds, budget_seconds)
        if config.lr_decay == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * decay_progress))
        else:
            factor = 1.0 - decay_progress
    return floor + factor * (1.0 - floor)


def decay_fraction(steps_done: int, decay_steps: int, elapsed_seconds: float = 0.0,
                   budget_seconds: float | None = None) -> float:
    """How far along the decay is, in [0, 1]: by steps, or by time if that is further."""
    by_steps = steps_done / decay_steps if decay_steps > 0 else 1.0
    by_time = elapsed_seconds / budget_seconds if budget_seconds else 0.0
    return min(max(by_steps, by_time, 0.0), 1.0)
