"""Validation loss, the one way every job computes it: the mean over tokens, not over batches.

A batch's loss is already a mean over its B*T predictions, so batches of different sizes (the last one of a
split is often short) must be weighted by how many tokens they hold. With several ranks, each rank takes its
share of the batches (rank r: batches r, r + world_size, ...), and the ranks add up their token-weighted sums
in one all-reduce, so every rank gets the loss of the whole pass, as one process would.
"""

from __future__ import annotations

import numpy as np

from jobs.data.shards import validation_batches
from jobs.training.distributed import Distributed


def validation_loss(runtime, tokens: np.ndarray, batch_size: int, seq_len: int, max_batches: int | None = None,
                    distributed: Distributed = Distributed()) -> tuple[float, int]:
    """(mean loss in nats per token, tokens scored) over a fixed pass of (B, seq_len + 1) windows of `tokens`."""
    loss_sum, n_tokens = 0.0, 0
    for window in validation_batches(tokens, batch_size, seq_len, max_batches, distributed.rank, distributed.world_size):
        predictions = window[:, 1:].numel()
        loss_sum += runtime.loss(window) * predictions
        n_tokens += predictions
    loss_sum, n_tokens = distributed.sum(loss_sum, float(n_tokens))
    return loss_sum / n_tokens, int(n_tokens)


def masked_validation_loss(runtime, batches, distributed: Distributed = Distributed()) -> tuple[float, int]:
    """(mean loss per scored token, scored tokens) over chat batches, (tokens, mask) each: a batch's mean is over
    its scored (assistant) tokens, so each is weighted by how many it has."""
    loss_sum, n_scored = 0.0, 0
    for tokens, mask in batches:
        scored = int(mask[:, 1:].sum())
        if scored:
            loss_sum += runtime.loss((tokens, mask)) * scored
            n_scored += scored
    loss_sum, n_scored = distributed.sum(loss_sum, float(n_scored))
    return loss_sum / max(n_scored, 1), int(n_scored)
