"""GPT-2 with every backward pass written by hand: the file to read to see backpropagation.

The twin of torch_transformer.py: same classes, same attribute names, same order, same parameter names and
shapes, so a state_dict moves between the two and gives the same logits, loss and gradients (tests prove it).
Autograd is never used: no tensor here requires grad. Each layer's forward() saves what its backward()
needs; backward() takes the gradient of the loss with respect to the layer's output and returns the gradient
with respect to its input, *accumulating* (+=) into its parameters' gradients. Accumulating is what makes a
tensor used twice come out right with no special case: the residual stream, and the token embedding that is
also the LM head.

One rule keeps the gradients honest: never modify a tensor saved for backward. `x = x + y` builds a new
tensor; `x += y` would silently change what an earlier layer saved (the reference this project started from
got Q, K, V and the first MLP weight wrong that way).

Shapes: B batch, T sequence length, C d_model, H heads, D head size (C / H), F d_ffn, V vocab size.
Notation in the derivative comments: dX is dLoss/dX, for any tensor X.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from model_zoo.config import ModelConfig
from model_zoo.kv_cache import KVCache, causal_mask

# ------------------------------------------------------------------------------------------------------------
# Plumbing: parameters, modules, and matmuls in a lower-precision compute dtype


@dataclass
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
    compute_dtype: torch.dtype | None = None  # matmuls run in this dtype (bf16 on GPU); None: the weights' dtype

    def children(self) -> Iterator[tuple[str, "Module"]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, list) and value and isinstance(value[0], Module):
                for i, child in enumerate(value):
                    yield f"{name}.{i}", child

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, child in self.children():
            yield from child.named_parameters(f"{prefix}{name}.")

    def modules(self) -> Iterator["Module"]:
        yield self
        for _, child in self.children():
            yield from child.modules()

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a @ b, computed in compute_dtype when one is set, returned in a's dtype (fp32 activations stay fp32)."""
        if self.compute_dtype is None or self.compute_dtype == a.dtype:
            return a @ b
        return (a.to(self.compute_dtype) @ b.to(self.compute_dtype)).to(a.dtype)


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> fp32 for the numerically touchy ops (softmax, loss); fp32 and fp64 stay as they are."""
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
    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        self.weight = Parameter.of(torch.zeros(out_features, in_features))  # (out, in), as nn.Linear
        self.bias = Parameter.of(torch.zeros(out_features)) if bias else None  # Llama's projections have none

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.x = x  # (B, T, in)
        return linear(self, x, self.weight, self.bias)  # (B, T, out)

    def backward(self, d_out: torch.Tensor) -> torch.Tensor:
        return linear_backward(self, d_out, self.x, self.weight, self.bias)  # (B, T, in)


def linear(module: Module, x: torch.Tensor, weight: Parameter, bias: Parameter | None = None) -> torch.Tensor:
    """y = x W^T + b for x (..., in) and W (out, in), in `module`'s compute dtype. A function as well as a layer
    because the tied LM head is this same product with the token embedding as W (llm.c's matmul_forward and
    matmul_backward serve both the same way)."""
    out = module.matmul(x, weight.data.t())  # (..., out)
    return out if bias is None else out + bias.data


def linear_backward(module: Module, d_out: torch.Tensor, x: torch.Tensor, weight: Parameter,
                    bias: Parameter | None = None) -> torch.Tensor:
    # y = x W^T + b  =>  dx = dy W,  dW = dy^T x (summed over every token),  db = dy summed over tokens
    d_out_2d = d_out.reshape(-1, d_out.shape[-1])  # (B*T, out)
    x_2d = x.reshape(-1, x.shape[-1])  # (B*T, in)
    weight.grad += module.matmul(d_out_2d.t(), x_2d)  # (out, in)
    if bias is not None:
        bias.grad += d_out_2d.sum(0)
    return module.matmul(d_out, weight.data)  # (..., in)


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
        self.probs = torch.softmax(at_least_float32(scores), dim=-1).to(scores.dtype)  # the formula above, fused
        return self.probs

    def backward(self, d_probs: torch.Tensor) -> torch.Tensor:
        # p = softmax(s)  =>  ds = p * (dp - sum_j(dp_j * p_j))   (row by row; p = 0 gets no gradient)
        p = self.probs
        return p * (d_probs - (d_probs * p).sum(dim=-1, keepdim=True))


IGNORE_INDEX = -100  # a target that is not scored (chat fine-tuning masks the user's tokens); PyTorch's default


class CrossEntropyLoss(Module):
    """loss = mean over scored tokens of -log softmax(z)[y], in at least fp32 (z: the logits of one token, y: its
    target). A target of IGNORE_INDEX is not scored: it adds nothing to the sum and does not count in the mean,
    as in F.cross_entropy and Hugging Face's labels=-100 (how chat fine-tuning learns only the assistant's words)."""

    log_probs: torch.Tensor | None = None

    def forward(self, logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
        self.targets, self.log_probs = targets, None
        if targets is None:
            return None
        self.scored = targets != IGNORE_INDEX  # (B, T) booleans: the mask
        self.n_scored = int(self.scored.sum())  # N: the mean divides by this, not by B * T
        self.log_probs = torch.log_softmax(at_least_float32(logits), dim=-1)  # (B, T, V)
        safe_targets = targets.masked_fill(~self.scored, 0)  # any valid index; masked out below
        picked = self.log_probs.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)  # (B, T): log p of each target
        return -(picked * self.scored).sum() / max(self.n_scored, 1)  # nothing scored: 0 (F.cross_entropy: NaN)

    def backward(self, loss_scale: float = 1.0) -> torch.Tensor:
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
        return d_logits.mul_(loss_scale / max(self.n_scored, 1))


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
        scores = self.matmul(self.q_scaled, k.transpose(-2, -1))  # (B, H, T, past + T)
        if allowed is None:  # no cache: (T, T), no peeking at the future; with one, the cache's mask
            allowed = causal_mask(T, 0, device=q.device)
        att = self.softmax(scores.masked_fill(~allowed, float("-inf")))  # (B, H, T, past + T)
        self.att_dropped = self.attn_dropout(att)
        return self.matmul(self.att_dropped, v)  # (B, H, T, D): each query's weighted average of values

    def backward(self, d_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        D = d_y.shape[-1]
        # y = att v  =>  d_att = dy v^T,  dv = att^T dy
        d_att = self.attn_dropout.backward(self.matmul(d_y, self.v.transpose(-2, -1)))  # (B, H, T, past + T)
        d_v = self.matmul(self.att_dropped.transpose(-2, -1), d_y)  # (B, H, past + T, D)
        d_scores = self.softmax.backward(d_att)  # (B, H, T, past + T); masked entries: p = 0, so no gradient
        # scores = (q / sqrt(D)) k^T  =>  dq = d_scores k / sqrt(D),  dk = d_scores^T (q / sqrt(D))
        d_q = self.matmul(d_scores, self.k) / math.sqrt(D)  # (B, H, T, D)
        d_k = self.matmul(d_scores.transpose(-2, -1), self.q_scaled)  # (B, H, past + T, D)
        return d_q, d_k, d_v


class CausalSelfAttention(Module):
    def __init__(self, config: ModelConfig):
        self.n_heads = config.n_heads
        self.qkv = Linear(config.d_model, 3 * config.d_model)  # Q, K and V for all heads in one matmul
        self.attention = ScaledDotProductAttention(config.dropout)
        self.proj = Linear(config.d_model, config.d_model)
        self.resid_dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, block_index: int = 0) -> torch.Tensor:
        B, T, C = x.shape  # x: (B, T, C)
        H, D = self.n_heads, C // self.n_heads
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        allowed = None
        if kv_cache is not None:
            allowed = kv_cache.attention_mask(T, x.device)  # which cached and new keys each query may see
            k, v = kv_cache.append(block_index, k, v)  # (B, H, past + T, D)
        y = self.attention(q, k, v, allowed)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again: (B, T, C)
        return self.resid_dropout(self.proj(y))

    def backward(self, d_out: torch.Tensor) -> torch.Tensor:
        d_y = self.proj.backward(self.resid_dropout.backward(d_out))  # (B, T, C)
        B, T, C = d_y.shape
        H, D = self.n_heads, C // self.n_heads
        d_q, d_k, d_v = self.attention.backward(d_y.view(B, T, H, D).transpose(1, 2))  # each (B, H, T, D)
        # The split into q, k, v and heads, undone: split's backward is concatenation.
        d_qkv = torch.cat([d.transpose(1, 2).reshape(B, T, C) for d in (d_q, d_k, d_v)], dim=2)  # (B, T, 3C)
        return self.qkv.backward(d_qkv)  # (B, T, C)


class MLP(Module):
    def __init__(self, config: ModelConfig):
        self.fc = Linear(config.d_model, config.d_ffn)
        self.gelu = GELU()
        self.proj = Linear(config.d_ffn, config.d_model)
        self.resid_dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.gelu(self.fc(x))  # (B, T, F)
        return self.resid_dropout(self.proj(hidden))  # (B, T, C)

    def backward(self, d_out: torch.Tensor) -> torch.Tensor:
        d_hidden = self.proj.backward(self.resid_dropout.backward(d_out))  # (B, T, F)
        return self.fc.backward(self.gelu.backward(d_hidden))  # (B, T, C)


class Block(Module):
    """Pre-LayerNorm block: x + attn(ln1(x)), then + mlp(ln2(x)). The residual stream is never normalised."""

    def __init__(self, config: ModelConfig):
        self.ln1 = LayerNorm(config.d_model, config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln2 = LayerNorm(config.d_model, config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, block_index: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), kv_cache, block_index)  # (B, T, C); a new tensor, never x += ...
        x = x + self.mlp(self.ln2(x))  # (B, T, C)
        return x

    def backward(self, d_out: torch.Tensor) -> torch.Tensor:
        # A residual x + f(x) passes the gradient straight through *and* through f: dx = dy + f'(dy).
        d_mid = d_out + self.ln2.backward(self.mlp.backward(d_out))  # gradient at the stream between the two
        return d_mid + self.ln1.backward(self.attn.backward(d_mid))


# ------------------------------------------------------------------------------------------------------------
# The model


class CustomModel(Module):
    """What both hand-written models (CustomTransformer here, CustomLlama in custom_llama.py) offer besides
    forward and backward: the nn.Module-like surface the jobs use."""

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

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
        compute_dtype: torch.dtype | None = None,
    ) -> "CustomModel":
        """Move and cast weights and gradients (dtype: the master weights' dtype). compute_dtype, e.g.
        torch.bfloat16 on CUDA, runs the matmuls in that dtype while weights, softmax, LayerNorm and loss stay
        in the weights' dtype."""
        for _, param in self.named_parameters():
            param.data = param.data.to(device=device, dtype=dtype)
            param.grad = param.grad.to(device=device, dtype=dtype)
        for module in self.modules():
            module.compute_dtype = compute_dtype
        return self

    def train(self, mode: bool = True) -> "CustomModel":
        for module in self.modules():
            module.training = mode
        return self

    def eval(self) -> "CustomModel":
        return self.train(False)

    def configure_optimizer(
        self, learning_rate: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8
    ) -> "AdamW":
        """The same rule as the torch twins' configure_optimizer: decay matrices, not vectors."""
        return AdamW(list(self.named_parameters()), learning_rate, weight_decay, betas, eps)


class CustomTransformer(CustomModel):
    def __init__(self, config: ModelConfig):
        self.config = config
        self.token_embedding = Embedding(config.vocab_size, config.d_model)
        self.position_embedding = Embedding(config.max_seq_len, config.d_model)
        self.embedding_dropout = Dropout(config.dropout)
        self.blocks = [Block(config) for _ in range(config.n_blocks)]
        self.ln_f = LayerNorm(config.d_model, config.layer_norm_eps)
        # The LM head has no weight of its own: it is the token embedding, transposed (weight tying, as GPT-2).
        self.cross_entropy = CrossEntropyLoss()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation, the same rule as TorchTransformer.reset_parameters (see there for why)."""
        std = self.config.init_std
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                param.data.normal_(0.0, std / math.sqrt(2 * self.config.n_blocks))
            elif name.endswith(".weight") and param.data.dim() == 2:
                param.data.normal_(0.0, std)
            elif ".ln" in name or name.startswith("ln_f"):
                param.data.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                param.data.zero_()

    # --- forward and backward ---------------------------------------------------------------------------

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T = idx.shape  # idx: (B, T) token ids
        positions = KVCache.positions_for(kv_cache, T, self.config.max_seq_len, idx.device)  # (T,) or (B, T)
        x = self.token_embedding(idx) + self.position_embedding(positions)  # (B, T, C)
        x = self.embedding_dropout(x)
        for block_index, block in enumerate(self.blocks):
            x = block(x, kv_cache, block_index)  # (B, T, C)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.ln_f(x)  # (B, T, C)
        self.final_hidden = x
        logits = linear(self, x, self.token_embedding.weight)  # (B, T, V): the tied LM head
        loss = self.cross_entropy(logits, targets)
        return logits, loss

    def backward(self, loss_scale: float = 1.0) -> dict[str, torch.Tensor]:
        """Gradients of the last forward's loss, accumulated (+=) into every parameter's .grad.

        Like torch, gradients add up over forward/backward pairs until zero_grad() (one backward per forward,
        as with torch's freed graph); loss_scale multiplies the loss first (1 / accumulation steps when several
        micro-batches make one step). Returns {name: grad}, with the keys of state_dict().
        """
        d_logits = self.cross_entropy.backward(loss_scale).to(self.final_hidden.dtype)  # (B, T, V)
        # The tied head is the embedding's first gradient path; the lookup at the bottom of the model adds the second.
        d_x = linear_backward(self, d_logits, self.final_hidden, self.token_embedding.weight)  # (B, T, C)
        d_x = self.ln_f.backward(d_x)
        for block in reversed(self.blocks):
            d_x = block.backward(d_x)  # (B, T, C)
        d_x = self.embedding_dropout.backward(d_x)
        # x = token_embedding[idx] + position_embedding[positions]: both receive d_x unchanged.
        self.token_embedding.backward(d_x)
        self.position_embedding.backward(d_x.sum(0))  # (T, C): every sequence of the batch shares positions
        return {name: param.grad for name, param in self.named_parameters()}


# ------------------------------------------------------------------------------------------------------------
# Optimiser and gradient clipping, by hand


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), step for step what torch.optim.AdamW does.

    m and v are running averages of the gradient and of its square; dividing by sqrt(v) gives every weight
    a step of about lr whatever its gradient's scale. Decoupled decay shrinks the weight itself
    (w -= lr * wd * w) instead of adding wd * w to the gradient, so it is not rescaled by sqrt(v).
    Only matrices (dim >= 2) are decayed.
    """

    def __init__(
        self, named_parameters: list[tuple[str, Parameter]], learning_rate: float, weight_decay: float,
        betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
    ):
        self.params = named_parameters
        self.lr, self.weight_decay, self.betas, self.eps = learning_rate, weight_decay, betas, eps
        self.step_count = 0
        self.m = {name: torch.zeros_like(p.data) for name, p in named_parameters}
        self.v = {name: torch.zeros_like(p.data) for name, p in named_parameters}

    def step(self) -> None:
        self.step_count += 1
        beta1, beta2 = self.betas
        bias_correction1 = 1 - beta1**self.step_count  # m and v start at 0: undo that bias early on
        bias_correction2 = 1 - beta2**self.step_count
        for name, p in self.params:
            m, v, grad = self.m[name], self.v[name], p.grad
            if p.data.dim() >= 2:
                p.data.mul_(1 - self.lr * self.weight_decay)
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


def clip_grad_norm(named_parameters: list[tuple[str, Parameter]], max_norm: float) -> float:
    """Scale all gradients together so their global L2 norm is at most max_norm; return the norm before.

    Same formula as torch.nn.utils.clip_grad_norm_: one norm over every gradient, so the update's direction
    is kept and only its length shrinks.
    """
    total_norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for _, p in named_parameters))
    clip_coef = max_norm / (total_norm + 1e-6)
    if clip_coef < 1.0:
        for _, p in named_parameters:
            p.grad.mul_(clip_coef.to(p.grad.dtype))
    return float(total_norm)
