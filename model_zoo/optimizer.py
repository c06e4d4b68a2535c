"""How both model types are updated: one weight-decay rule, AdamW, and gradient clipping.

The torch twins get torch.optim.AdamW; the hand-written models get AdamW and clipping written out below, step
for step what torch computes (tests/proofs.py trains a twin pair side by side and compares every step).
"""

from __future__ import annotations

import math

import torch


def decay_groups(named_parameters, weight_decay: float) -> list[dict]:
    """The weight-decay rule, once for every model: matrices (weights, embeddings, the head) are decayed;
    vectors (biases, LayerNorm and RMSNorm gains) are not. Pulling a gain towards 0 only fights the
    normalisation. Returns torch's param-group layout, with (name, parameter) pairs."""
    named_parameters = list(named_parameters)
    return [
        {"params": [(n, p) for n, p in named_parameters if p.data.dim() >= 2], "weight_decay": weight_decay},
        {"params": [(n, p) for n, p in named_parameters if p.data.dim() < 2], "weight_decay": 0.0},
    ]


def configure_optimizer(model, learning_rate: float, weight_decay: float,
                        betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8):
    """AdamW over decay_groups: torch.optim.AdamW for an nn.Module (our twins, Hugging Face's models), the
    hand-written AdamW for a custom model."""
    groups = decay_groups(model.named_parameters(), weight_decay)
    if isinstance(model, torch.nn.Module):
        torch_groups = [{"params": [p for _, p in g["params"]], "weight_decay": g["weight_decay"]} for g in groups]
        return torch.optim.AdamW(torch_groups, lr=learning_rate, betas=betas, eps=eps, foreach=True)
    return AdamW(groups, learning_rate, betas, eps)


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), step for step what torch.optim.AdamW does.

    m and v are running averages of the gradient and of its square; dividing by sqrt(v) gives every weight
    a step of about lr whatever its gradient's scale. Decoupled decay shrinks the weight itself
    (w -= lr * wd * w) instead of adding wd * w to the gradient, so it is not rescaled by sqrt(v).
    param_groups: decay_groups' layout, each parameter an object with .data and .grad.
    """

    def __init__(self, param_groups: list[dict], learning_rate: float, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8):
        self.param_groups = param_groups
        self.lr, self.betas, self.eps = learning_rate, betas, eps
        self.step_count = 0
        named = [pair for group in param_groups for pair in group["params"]]
        self.m = {name: torch.zeros_like(p.data) for name, p in named}
        self.v = {name: torch.zeros_like(p.data) for name, p in named}

    def step(self) -> None:
        self.step_count += 1
        beta1, beta2 = self.betas
        bias_correction1 = 1 - beta1**self.step_count  # m and v start at 0: undo that bias early on
        bias_correction2 = 1 - beta2**self.step_count
        for group in self.param_groups:
            for name, p in group["params"]:
                m, v, grad = self.m[name], self.v[name], p.grad
                if group["weight_decay"]:
                    p.data.mul_(1 - self.lr * group["weight_decay"])
                m.lerp_(grad, 1 - beta1)  # m = beta1 m + (1 - beta1) g
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v = beta2 v + (1 - beta2) g^2
                denom = (v.sqrt() / math.sqrt(bias_correction2)).add_(self.eps)
                p.data.addcdiv_(m, denom, value=-self.lr / bias_correction1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only, so it saves to safetensors: m.<name>, v.<name> and the step count."""
        state = {f"m.{name}": t for name, t in self.m.items()} | {f"v.{name}": t for name, t in self.v.items()}
        state["step_count"] = torch.tensor(self.step_count)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.m:
            self.m[name].copy_(state[f"m.{name}"])
            self.v[name].copy_(state[f"v.{name}"])
        self.step_count = int(state["step_count"])


def clip_grad_norm(named_parameters, max_norm: float) -> float:
    """Scale all gradients together so their global L2 norm is at most max_norm; return the norm before.

    Same formula as torch.nn.utils.clip_grad_norm_: one norm over every gradient, so the update's direction
    is kept and only its length shrinks.
    """
    named_parameters = list(named_parameters)
    total_norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for _, p in named_parameters))
    clip_coef = max_norm / (total_norm + 1e-6)
    if clip_coef < 1.0:
        for _, p in named_parameters:
            p.grad.mul_(clip_coef.to(p.grad.dtype))
    return float(total_norm)
