"""What a training step minimises, for either model type: an objective gives the loss of a batch with autograd
(the torch twins, and every model's validation) and does a forward and the hand-written backward for the custom
models. A way of training that learns something other than the next token (preference pairs) brings its own
objective with its data (TrainingData.objective); the runtime and the trainer stay as they are.
"""

from __future__ import annotations

import torch

from jobs.data.windows import Batch
from model_zoo.custom_layers import IGNORE_INDEX


def inputs_and_targets(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of (B, T+1) windows -> (inputs, targets), each (B, T): every next token is a target, scored only
    where the mask is True; the others become IGNORE_INDEX, which both models' loss skips. (Text's mask is all
    True; a conversation's is True on the assistant's tokens.)"""
    return batch.tokens[:, :-1], batch.tokens[:, 1:].masked_fill(~batch.mask[:, 1:], IGNORE_INDEX)


class NextTokenLoss:
    """Language modelling: the mean cross-entropy over a batch's scored tokens (the models' own loss)."""

    def weight(self, batch: Batch) -> int:
        """What the batch's mean is over (micro-batches of a step are weighed by it): its scored tokens."""
        return batch.scored

    def loss(self, model, batch: Batch) -> torch.Tensor:
        idx, targets = inputs_and_targets(batch)
        return model(idx, targets)[1]

    def forward_backward_by_hand(self, model, batch: Batch, scale: float) -> torch.Tensor:
        """A custom model's forward and its hand-written backward of scale * loss; returns the loss."""
        idx, targets = inputs_and_targets(batch)
        _, loss = model.forward(idx, targets)
        model.backward(loss_scale=scale)
        return loss
