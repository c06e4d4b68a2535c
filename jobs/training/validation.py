"""Validation loss, the one way every job computes it: the mean over scored tokens, not over batches.

A batch's loss is already a mean over its scored predictions (every next token for text, the assistant's for a
conversation), so batches that score different numbers of tokens (the last one of a split is often short) must
be weighted by how many they score. With several ranks, each rank takes its share of the batches (rank r:
batches r, r + world_size, ...), and the ranks add up their weighted sums in one all-reduce, so every rank gets
the loss of the whole pass, as one process would.
"""

from __future__ import annotations

from typing import Iterable

from jobs.data.windows import Batch
from jobs.training.distributed import Distributed


def validation_loss(runtime, batches: Iterable[Batch], distributed: Distributed = Distributed()) -> tuple[float, int]:
    """(mean loss in nats per scored token, tokens scored) over batches (this rank's share of a fixed pass); for an
    objective whose mean is over something else (pairs), over that."""
    loss_sum, n_scored = 0.0, 0
    for batch in batches:
        weight = runtime.objective.weight(batch)  # scored tokens (a pair, for preference pairs)
        if weight:
            loss_sum += runtime.loss(batch) * weight
            n_scored += weight
    loss_sum, n_scored = distributed.sum(loss_sum, float(n_scored))
    return loss_sum / max(n_scored, 1), int(n_scored)
