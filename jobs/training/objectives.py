"""What a training step minimises, for either model type: an objective gives the loss of a batch with autograd
(the torch twins, and every model's validation) and does a forward and the hand-written backward for the custom
models. A way of training that learns something other than the next token (preference pairs) brings its own
objective with its data (TrainingData.objective); the runtime and the trainer stay as they are.
"""

from __future__ import annotations

import math

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

    def validation_metrics(self, val_loss: float) -> dict[str, float]:
        """Beside val/loss: the perplexity, e^loss (how many tokens the model is as unsure as a uniform pick among)."""
        return {"val/perplexity": math.exp(min(val_loss, 50))}

    def forward_backward_by_hand(self, model, batch: Batch, scale: float) -> torch.Tensor:
        """A custom model's forward and its hand-written backward of scale * loss; returns the loss."""
        idx, targets = inputs_and_targets(batch)
        _, loss = model.forward(idx, targets)
        model.backward(loss_scale=scale)
        return loss


class PreferenceLoss:
    """Preference pairs (jobs/data/preference_data.py): DPO's loss over a batch of pairs, rows 2p and 2p+1 the chosen
    and rejected replies (model_zoo/preference_loss.py: with autograd for the torch twins and validation, by hand
    for the custom models). A validation pass also gathers what DPO users watch (TRL's names)."""

    def __init__(self, beta: float, sft: float = 0.0):
        from model_zoo.preference_loss import DPOLoss

        self.beta, self.sft, self.by_hand = beta, sft, DPOLoss(beta, sft)
        self.seen: dict[str, float] = {}

    def weight(self, batch: Batch) -> int:
        return len(batch.tokens) // 2  # the loss is a mean over pairs

    def loss(self, model, batch: Batch) -> torch.Tensor:
        from model_zoo.preference_loss import dpo_loss

        idx, targets = inputs_and_targets(batch)
        logits, _ = model(idx)
        loss, rewards, logp = dpo_loss(logits, targets, batch.reference, self.beta, self.sft)
        if not torch.is_grad_enabled():  # a validation batch: keep its figures
            chosen, rejected = rewards[0::2], rewards[1::2]
            for key, values in {"rewards/chosen": chosen, "rewards/rejected": rejected,
                                "rewards/margins": chosen - rejected, "rewards/accuracies": (chosen > rejected).double(),
                                "logps/chosen": logp[0::2], "logps/rejected": logp[1::2]}.items():
                self.seen[key] = self.seen.get(key, 0.0) + float(values.sum())
            self.seen["pairs"] = self.seen.get("pairs", 0.0) + len(chosen)
        return loss

    def forward_backward_by_hand(self, model, batch: Batch, scale: float) -> torch.Tensor:
        idx, targets = inputs_and_targets(batch)
        logits, _ = model.forward(idx)
        loss = self.by_hand.forward(logits, targets, batch.reference)
        model.backward_from_logits(self.by_hand.backward(scale))
        return loss

    def validation_metrics(self, val_loss: float) -> dict[str, float]:
        """TRL's names, as means over the pairs of the validation pass just made (this rank's share): the rewards
        beta * log(pi / pi_ref) of the chosen and rejected replies, their margin, how often the chosen one wins,
        and the policy's log-probabilities. (No perplexity: e^loss means nothing for this loss.)"""
        seen, self.seen = self.seen, {}
        pairs = seen.pop("pairs", 0.0)
        return {f"val/{key}": total / pairs for key, total in seen.items()} if pairs else {}
