"""How both model types are updated: one weight-decay rule, AdamW, Muon, and gradient clipping.

The torch twins get torch.optim.AdamW (and torch.optim.Muon); the hand-written models get AdamW, Muon and
clipping written out below, step for step what torch computes (tests/proofs.py trains a twin pair side by side
and compares every step; tests/model_zoo/test_optimizer.py runs ours and torch's on the same gradients).

    AdamW alone:  every parameter; matrices decayed, vectors not (decay_groups)
    Muon:         the blocks' weight matrices get Muon; the embeddings, the norms' gains and the biases
                  keep AdamW (muon_groups). Each part has its own peak learning rate and weight decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class MuonSettings:
    """Muon's part of the optimizer (training.muon_* in the config). learning_rate: the peak, before the
    shape's scale sqrt(max(1, out/in)) (Muon.step); the schedule multiplies it like AdamW's."""

    learning_rate: float = 0.02
    weight_decay: float = 0.0
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5


EMBEDDING_NAMES = ("embedding", "embed_tokens", "wte", "wpe", "lm_head")  # ours, and transformers' GPT-2 and Llama


def is_muon_matrix(name: str, parameter) -> bool:
    """The parameters Muon updates: the 2-D weight matrices inside the blocks (attention and MLP projections).
    Not the token and position embeddings (a row is looked up, not multiplied: its gradient is a few sparse rows
    whose orthogonalised update would move every row) nor the output head (tied to the token embedding in our
    models; Muon's authors keep it on AdamW too)."""
    return parameter.data.dim() == 2 and not any(part in name for part in EMBEDDING_NAMES)


def muon_groups(named_parameters, weight_decay: float, muon: MuonSettings) -> tuple[list[dict], list[dict]]:
    """(AdamW's groups, Muon's groups): the block matrices for Muon, everything else in decay_groups' layout."""
    matrices, rest = [], []
    for name, parameter in named_parameters:
        (matrices if is_muon_matrix(name, parameter) else rest).append((name, parameter))
    return decay_groups(rest, weight_decay), [{"params": matrices, "weight_decay": muon.weight_decay}]


def configure_optimizer(model, learning_rate: float, weight_decay: float,
                        betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, muon: MuonSettings | None = None):
    """AdamW over decay_groups (or, with muon, Muon for the block matrices and AdamW for the rest):
    torch.optim's for an nn.Module (our twins, Hugging Face's models), the hand-written ones for a custom model.
    Every group carries its peak learning rate as "peak_lr"; set_lr_scale applies the schedule to all of them."""
    named = list(model.named_parameters())
    adamw_groups, matrix_groups = (decay_groups(named, weight_decay), []) if muon is None else \
        muon_groups(named, weight_decay, muon)
    for group in adamw_groups:
        group["lr"] = group["peak_lr"] = learning_rate
    for group in matrix_groups:
        group["lr"] = group["peak_lr"] = muon.learning_rate
    if isinstance(model, torch.nn.Module):
        def unnamed(groups):
            return [g | {"params": [p for _, p in g["params"]]} for g in groups]

        adamw = torch.optim.AdamW(unnamed(adamw_groups), lr=learning_rate, betas=betas, eps=eps, foreach=True)
        if muon is None:
            return adamw
        return Optimizers(adamw, torch.optim.Muon(unnamed(matrix_groups), lr=muon.learning_rate,
                                                  weight_decay=muon.weight_decay, momentum=muon.momentum,
                                                  nesterov=muon.nesterov, ns_steps=muon.ns_steps))
    adamw = AdamW(adamw_groups, betas, eps)
    if muon is None:
        return adamw
    return Optimizers(adamw, Muon(matrix_groups, muon.momentum, muon.nesterov, muon.ns_steps))


def set_lr_scale(optimizer, scale: float) -> None:
    """The schedule's multiplier (jobs/training/schedule.py) applied to every group's peak learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] * scale


class Optimizers:
    """AdamW and Muon stepped together, seen as one optimizer (param_groups: AdamW's then Muon's)."""

    def __init__(self, adamw, muon):
        self.adamw, self.muon = adamw, muon

    @property
    def param_groups(self) -> list[dict]:
        return self.adamw.param_groups + self.muon.param_groups

    def step(self) -> None:
        self.adamw.step()
        self.muon.step()

    def zero_grad(self, set_to_none: bool = True) -> None:  # torch's (the custom models clear their own gradients)
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, torch.Tensor]:  # the hand-written pair's: their tensors' names do not collide
        return self.adamw.state_dict() | self.muon.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.adamw.load_state_dict(state)
        self.muon.load_state_dict(state)


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), step for step what torch.optim.AdamW does.

    m and v are running averages of the gradient and of its square; dividing by sqrt(v) gives every weight
    a step of about lr whatever its gradient's scale. Decoupled decay shrinks the weight itself
    (w -= lr * wd * w) instead of adding wd * w to the gradient, so it is not rescaled by sqrt(v).
    param_groups: decay_groups' layout with "lr" set, each parameter an object with .data and .grad.
    """

    def __init__(self, param_groups: list[dict], betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8):
        self.param_groups = param_groups
        self.betas, self.eps = betas, eps
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
            lr = group["lr"]
            for name, p in group["params"]:
                m, v, grad = self.m[name], self.v[name], p.grad
                if group["weight_decay"]:
                    p.data.mul_(1 - lr * group["weight_decay"])
                m.lerp_(grad, 1 - beta1)  # m = beta1 m + (1 - beta1) g
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v = beta2 v + (1 - beta2) g^2
                denom = (v.sqrt() / math.sqrt(bias_correction2)).add_(self.eps)
                p.data.addcdiv_(m, denom, value=-lr / bias_correction1)

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


class Muon:
    """MomentUm Orthogonalized by Newton-schulz (Jordan et al. 2024), step for step what torch.optim.Muon does.

    For a weight matrix W (out, in) with gradient G:
        B  = mu B + (1 - mu) G                 momentum, kept as a running average
        U  = G + mu (B - G)   (Nesterov)       or U = B: look ahead along the momentum
        O  = NS(U)                             U = P S Q^T (its SVD) becomes about P Q^T: every direction of the
                                               update gets the same size, so the few directions that dominate
                                               a gradient no longer drown the rest
        W -= lr wd W;  W -= lr sqrt(max(1, out/in)) O
    NS is five steps of a quintic Newton-Schulz iteration X <- a X + (b A + c A A) X with A = X X^T, after
    scaling X to norm 1 (so its singular values are <= 1): each step pushes every singular value towards 1
    without an SVD, only matmuls. The coefficients (3.4445, -4.7750, 2.0315) are Jordan's: they make small
    singular values grow fastest, at the price of landing in about [0.5, 1.5] rather than exactly on 1, which
    training does not mind. Like torch (and Jordan's reference) the iteration runs in bfloat16, whatever the
    weights' dtype. The shape's scale sqrt(max(1, out/in)) keeps the update's size per input about the same
    for a tall matrix (the MLP's up-projections) as for a square one.

    param_groups: muon_groups' layout with "lr" set; parameters with .data and .grad, 2-D.
    """

    NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

    def __init__(self, param_groups: list[dict], momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 eps: float = 1e-7):
        self.param_groups = param_groups
        self.momentum, self.nesterov, self.ns_steps, self.eps = momentum, nesterov, ns_steps, eps
        named = [pair for group in param_groups for pair in group["params"]]
        self.momentum_buffer = {name: torch.zeros_like(p.data) for name, p in named}

    def step(self) -> None:
        mu = self.momentum
        for group in self.param_groups:
            lr = group["lr"]
            for name, p in group["params"]:
                grad, buffer = p.grad, self.momentum_buffer[name]  # (out, in) each
                buffer.lerp_(grad, 1 - mu)  # B = mu B + (1 - mu) G
                update = grad.lerp(buffer, mu) if self.nesterov else buffer  # G + mu (B - G)
                update = orthogonalize(update, self.ns_steps, self.eps)  # (out, in), bfloat16
                out_features, in_features = p.data.shape
                p.data.mul_(1 - lr * group["weight_decay"])
                p.data.add_(update, alpha=-lr * math.sqrt(max(1.0, out_features / in_features)))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only, so it saves to safetensors: muon_momentum.<name>."""
        return {f"muon_momentum.{name}": t for name, t in self.momentum_buffer.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, buffer in self.momentum_buffer.items():
            buffer.copy_(state[f"muon_momentum.{name}"])


def orthogonalize(matrix: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """About P Q^T for matrix = P S Q^T, by the Newton-Schulz iteration Muon's docstring explains (bfloat16)."""
    a, b, c = Muon.NS_COEFFICIENTS
    X = matrix.bfloat16()
    wide = X.T if X.size(0) > X.size(1) else X  # (m, n) with m <= n: the Gram matrix A is the small one, (m, m)
    wide = wide.div(wide.norm().clamp(min=eps))  # Frobenius norm 1 bounds every singular value by 1
    for _ in range(steps):
        A = wide @ wide.T  # (m, m)
        B = torch.addmm(A, A, A, beta=b, alpha=c)  # b A + c A A
        wide = torch.addmm(wide, B, wide, beta=a)  # a X + B X
    return wide.T if matrix.size(0) > matrix.size(1) else wide


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
