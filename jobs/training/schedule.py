"""The learning-rate schedule: linear warmup from 0, then cosine or linear decay to the minimum."""

from __future__ import annotations

import math

from jobs.config import TrainingConfig


def learning_rate(step: int, total_steps: int, config: TrainingConfig) -> float:
    """LR for optimizer step `step` (0-based) of `total_steps`."""
    warmup = int(config.warmup_ratio * total_steps)
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    if config.lr_decay == "constant" or total_steps <= warmup + 1:
        return config.learning_rate
    progress = min(1.0, (step - warmup) / (total_steps - warmup - 1))  # 0 -> 1 over the decay
    if config.lr_decay == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = 1.0 - progress
    return config.min_learning_rate + factor * (config.learning_rate - config.min_learning_rate)
