"""The hand-written layers both custom models are built from, each forward next to its backward.

custom_transformer.py (GPT-2) and custom_llama.py (the Llama-style block) assemble these; optimizer.py updates
their parameters. That is llm.c's order: the layers' forward and backward, then the model, then the update.

Autograd is never used: no tensor here requires grad. Each layer's forward() saves what its backward() needs;
backward() takes the gradient of the loss with respect to the layer's output and returns the gradient with
respect to its input, *accumulating* (+=) into its parameters' gradients. Accumulating is what makes a tensor
used twice come out right with no special case: the residual stream, and the token embedding that is also the
LM head (one Parameter in two layers: each adds its share to the one .grad).

One rule keeps the gradients honest: never modify a tensor saved for backward. `x = x + y` builds a new
tensor; `x += y` would silently change what an earlier layer saved (the reference this project started from
got Q, K, V and the first MLP weight wrong that way).

Mixed precision is not written here: the runtime runs forward and backward inside torch.autocast, the same
context the torch twins train in, which computes every `@` in bf16 from the fp32 weights. What must stay
precise (softmax, normalisation, the loss) asks for at least fp32 itself (at_least_float32).

Shapes: B batch, T sequence length, C d_model, H heads, D head size (C / H), F d_ffn, V vocab size.
Notation in the derivative comments: dX is dLoss/dX, for any tensor X.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from model_zoo.kv_cache import causal_mask

# ------------------------------------------------------------------------------------------------------------
# Parameters and modules


@dataclass(eq=False)  # compared by identity, as a tied weight is found by it
class Parameter:
    """A weight and the gradient accumulated for it (what nn.Parameter's .data and .grad hold)."""

    data: torch.Tensor
    grad: torch.Tensor

    @classmethod
    def of(cls, data: torch.Tensor) -> "Parameter":
        return cls(data, torch.zeros_like(data))


class Module:
    """Finds parameters and sub-modules by attribute, like nn.Module, so names come out the same."""

    training = True

    def children(self) -> Iterator[tuple[str, "Module"]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, list) and value and isinstance(value[0], Module):
                for i, child in enumerate(value):
                    yield f"{name}.{i}", child

    def named_parameters(self, prefix: str = "", seen: set[int] | None = None) -> Iterator[tuple[str, Parameter]]:
        """Every parameter once, under the first name it is found by (a tied head's weight is the embedding's),
        as nn.Module.named_parameters."""
        seen = set() if seen is None else seen
        for name, value in vars(self).items():
            if isinstance(value, Parameter) and id(value) not in seen:
                seen.add(id(value))
                yield prefix + name, value
        for name, child in self.children():
            yield from child.named_parameters(f"{prefix}{name}.", seen)

    def modules(self) -> Iterator["Module"]:
        yield self
        for _, child in self.children():
            yield from child.modules()

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> fp32 for the numerically touchy ops (softmax, normalisation, loss); fp32 and fp64 stay."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


# ------------------------------------------------------------------------------------------------------------
# Layers, each forward next to its backward


class Embedding(Module):
    def __init__(self, num_embeddings: int, embedding_dim: int):
        self.weight = Parameter.of(torch.zeros(num_embeddings, embedding_dim))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.idx = idx  # (...) integer ids
        return self.weight.data[idx]  # (..., C): a row lookup

    def backward(self, d_out: torch.Tensor) -> None:
        # A lookup copies row idx[i] to output i, so each output row's gradient adds into the row it came
        # from; ids that repeat collect several contributions (index_add_ sums them).
        C = d_out.shape[-1]
        self.weight.grad.index_add_(0, self.idx.reshape(-1), d_out.reshape(-1, C).to(self.weight.grad.dtype))


class Dropout(Module):
    def __init__(self, p: float):
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.mask = None
        if not self.training or self.p == 0.0:
            return x
        # Keep each element with probability 1 - p and scale by 1 / (1 - p) so the expectation is unchanged.
        self.mask = (torch.rand_like(x) >= self.p).to(x.dtype) / (1.0 - self.p)
        return x * self.mask

    def backward(self, d_out: torch.Tensor) -> torch.Tensor:
        # y = x * mask  =>  dx = dy * mask
        return d_out if self.mask is None else d_out * self.mask


class Linear(Module):
    """y = x W^T + b for x (..., in) and W (out, in), as nn.Linear. Also the tied LM head: a Linear whose
    weight is the token embedding's Parameter (llm.c's matmul_forward and matmul_backward serve both alike)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, weight: Parameter | None = None):
        # (out, in), as nn.Linear; or a Parameter another layer owns too (the tied head: the token embedding's)
        self.weight = weight if weight is not None else Parameter.of(torch.zeros(out_features, in_features))
        self.bias = Parameter.of(torch.zeros(out_features)) if bias else None  # Llama's projections have none

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.x = x  # (B, T, in)
        out = x @ self.weight.data.t()  # (B, T, out)
        return out if self.bias is None else out + self.bias.data

    def backward(self, d_out: torch.Tensor) -> torch.Tensor:
        # y = x W^T + b  =>  dx = dy W,  dW = dy^T x (summed over every token),  db = dy summed over tokens
        d_out_2d = d_out.reshape(-1, d_out.shape[-1])  # (B*T, out)
        x_2d = self.x.reshape(-1, self.x.shape[-1])  # (B*T, in)
        self.weight.grad += d_out_2d.t() @ x_2d  # (out, in)
        if self.bias is not None:
            self.bias.grad += d_out_2d.sum(0)
        return d_out @ self.weight.data  # (B, T, in)


class LayerNorm(Module):
    def __init__(self, dim: int, eps: float):
        self.eps = eps
        self.weight = Parameter.of(torch.ones(dim))
        self.bias = Parameter.of(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise each token's C features to mean 0, variance 1, then scale and shift per feature.
        x_centered = x - x.mean(-1, keepdim=True)  # (B, T, C)
        var = (x_centered * x_centered).mean(-1, keepdim=True)  # (B, T, 1): biased variance, as LayerNorm uses
        self.rstd = torch.rsqrt(var + self.eps)  # (B, T, 1): 1 / standard deviation
        self.x_hat = x_centered * self.rstd  # (B, T, C)
        return self.x_hat * self.weight.data + self.bias.data

    def backward(self, d_out: torch.Tensor) -> torch.Tensor:
        # y = x_hat * w + b  =>  dw = sum over tokens of dy * x_hat,  db = sum of dy,  d_x_hat = dy * w.
        # x_hat = (x - mean) * rstd, and mean and rstd depend on every x of the token, which gives
        #   dx = rstd * (d_x_hat - mean(d_x_hat) - x_hat * mean(d_x_hat * x_hat))   (means over C)
        C = d_out.shape[-1]
        self.weight.grad += (d_out * self.x_hat).reshape(-1, C).sum(0)
        self.bias.grad += d_out.reshape(-1, C).sum(0)
        d_x_hat = d_out * self.weight.data  # (B, T, C)
        return self.rstd * (
            d_x_hat - d_x_hat.mean(-1, keepdim=True) - self.x_hat * (d_x_hat * self.x_hat).mean(-1, keepdim=True)
        )


class GELU(Module):
    """GPT-2's GELU, tanh approximation: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.x = x  # (B, T, F)
        self.tanh_u = torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))  # t = tanh u
        return 0.5 * x * (1.0 + self.tanh_u)

    def backward(self, d_out: torch.Tensor) -> torch.Tensor:
        # d/dx [0.5 x (1 + t)] = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx,  with du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2);
        # since 1 - t^2 = (1 - t)(1 + t), that is 0.5 (1 + t) (1 + x du/dx (1 - t)).
        x, t = self.x, self.tanh_u
        du_dx = math.sqrt(2.0 / math.pi) * (1.0 + 3 * 0.044715 * x * x)
        return d_out * 0.5 * (1.0 + t) * (1.0 + x * du_dx * (1.0 - t))


class Softmax(Module):
    """softmax over the last dimension, in at least fp32: p_j = exp(s_j - max(s)) / sum_k exp(s_k - max(s)).
    Subtracting the max changes nothing in the ratio but keeps exp from overflowing; -inf scores give p = 0."""

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        self.probs = torch.softmax(at_least_float32(scores), dim=-1)  # the formula above, fused
        return self.probs.to(scores.dtype)

    def backward(self, d_probs: torch.Tensor) -> torch.Tensor:
        # p = softmax(s)  =>  ds = p * (dp - sum_j(dp_j * p_j))   (row by row; p = 0 gets no gradient)
        p, d_p = self.probs, at_least_float32(d_probs)
        return (p * (d_p - (d_p * p).sum(dim=-1, keepdim=True))).to(d_probs.dtype)


IGNORE_INDEX = -100  # a target that is not scored (chat fine-tuning masks the user's tokens); PyTorch's default


class CrossEntropyLoss(Module):
    """loss = mean over scored tokens of -log softmax(z)[y], in at least fp32 (z: the logits of one token, y: its
    target). A target of IGNORE_INDEX is not scored: it adds nothing to the sum and does not count in the mean,
    as in F.cross_entropy and Hugging Face's labels=-100 (how chat fine-tuning learns only the assistant's words).
    No targets (generation): no loss."""

    log_probs: torch.Tensor | None = None

    def forward(self, logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
        self.targets, self.log_probs, self.logits_dtype = targets, None, logits.dtype
        if targets is None:
            return None
        self.scored = targets != IGNORE_INDEX  # (B, T) booleans: the mask
        self.n_scored = int(self.scored.sum())  # N: the mean divides by this, not by B * T
        self.log_probs = torch.log_softmax(at_least_float32(logits), dim=-1)  # (B, T, V)
        safe_targets = targets.masked_fill(~self.scored, 0)  # any valid index; masked out below
        picked = self.log_probs.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)  # (B, T): log p of each target
        return -(picked * self.scored).sum() / max(self.n_scored, 1)  # nothing scored: 0 (F.cross_entropy: NaN)

    def backward(self, loss_scale: float = 1.0) -> torch.Tensor:
        """d loss / d logits, in the logits' dtype; loss_scale multiplies the loss first."""
        if self.log_probs is None:
            raise RuntimeError("backward() needs a forward() with targets")
        # loss = -(1/N) sum_i m_i log softmax(z_i)[y_i]  =>  dz_i = m_i (softmax(z_i) - onehot(y_i)) / N,
        # with m_i = 1 where token i is scored and 0 where it is not (no gradient at all there)
        d_logits = self.log_probs.exp()  # (B, T, V): softmax(z)
        safe_targets = self.targets.masked_fill(~self.scored, 0).unsqueeze(-1)
        # (B, T, V) is the largest tensor of the model: the one-hot is subtracted, the mask applied and the result
        # scaled in place, in the tensor just made, instead of allocating more of that size.
        d_logits.scatter_add_(-1, safe_targets, torch.full_like(d_logits[..., :1], -1.0))  # - onehot
        if self.n_scored < self.scored.numel():
            d_logits.mul_(self.scored.unsqueeze(-1))  # masked tokens: zero gradient
        return d_logits.mul_(loss_scale / max(self.n_scored, 1)).to(self.logits_dtype)


class ScaledDotProductAttention(Module):
    """Causal attention of (B, H, T, D) queries over (B, H, past + T, D) keys and values:
    y = softmax(q k^T / sqrt(D), causal) v. The torch twins call PyTorch's fused kernel for this (torch_transformer.
    ScaledDotProductAttention); here it is written out, with its backward."""

    def __init__(self, dropout: float):
        self.softmax = Softmax()
        self.attn_dropout = Dropout(dropout)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None = None
                ) -> torch.Tensor:
        T, D = q.shape[-2], q.shape[-1]
        # Scores: how much query i attends to key j, scaled by 1/sqrt(D) so their variance does not grow with D
        # (the scale is applied to q, the smaller tensor; the product is the same).
        self.q_scaled, self.k, self.v = q / math.sqrt(D), k, v  # (B, H, T, D), (B, H, past + T, D) twice
        scores = self.q_scaled @ k.transpose(-2, -1)  # (B, H, T, past + T)
        if allowed is None:  # no cache: (T, T), no peeking at the future; with one, the cache's mask
            allowed = causal_mask(T, 0, device=q.device)
        att = self.softmax(scores.masked_fill(~allowed, float("-inf")))  # (B, H, T, past + T)
        self.att_dropped = self.attn_dropout(att)
        return self.att_dropped @ v  # (B, H, T, D): each query's weighted average of values

    def backward(self, d_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        D = d_y.shape[-1]
        # y = att v  =>  d_att = dy v^T,  dv = att^T dy
        d_att = self.attn_dropout.backward(d_y @ self.v.transpose(-2, -1))  # (B, H, T, past + T)
        d_v = self.att_dropped.transpose(-2, -1) @ d_y  # (B, H, past + T, D)
        d_scores = self.softmax.backward(d_att)  # (B, H, T, past + T); masked entries: p = 0, so no gradient
        # scores = (q / sqrt(D)) k^T  =>  dq = d_scores k / sqrt(D),  dk = d_scores^T (q / sqrt(D))
        d_q = (d_scores @ self.k) / math.sqrt(D)  # (B, H, T, D)
        d_k = d_scores.transpose(-2, -1) @ self.q_scaled  # (B, H, past + T, D)
        return d_q, d_k, d_v


# ------------------------------------------------------------------------------------------------------------
# What a whole model offers besides forward and backward


class CustomModel(Module):
    """The nn.Module-like surface the jobs use of both hand-written models (CustomTransformer, CustomLlama)."""

    def zero_grad(self) -> None:
        for _, param in self.named_parameters():
            param.grad.zero_()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: param.data for name, param in self.named_parameters()}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters())
        missing, unexpected = sorted(set(params) - set(state_dict)), sorted(set(state_dict) - set(params))
        if missing or unexpected:
            raise KeyError(f"state_dict does not match the model: missing {missing}, unexpected {unexpected}")
        for name, param in params.items():
            value = state_dict[name]
            if tuple(value.shape) != tuple(param.data.shape):
                raise ValueError(f"{name}: checkpoint shape {tuple(value.shape)} != model shape {tuple(param.data.shape)}")
            param.data.copy_(value)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "CustomModel":
        """Move and cast weights and gradients (dtype: the weights' dtype; bf16 compute is torch.autocast's)."""
        for _, param in self.named_parameters():
            param.data = param.data.to(device=device, dtype=dtype)
            param.grad = param.grad.to(device=device, dtype=dtype)
        return self

    def train(self, mode: bool = True) -> "CustomModel":
        for module in self.modules():
            module.training = mode
        return self

    def eval(self) -> "CustomModel":
        return self.train(False)
