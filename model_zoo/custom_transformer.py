"""GPT-2 with every backward pass written by hand: the file to read to see backpropagation.

The twin of torch_transformer.py: same classes, same attribute names, same order, same parameter names and
shapes, so a state_dict moves between the two and gives the same logits, loss and gradients (tests prove it).
The layers it is built from (Linear, LayerNorm, GELU, attention, the loss), each forward next to its backward,
are in custom_layers.py, with the rules they keep; AdamW and clipping are in optimizer.py. Here: how GPT-2
puts them together, and the backward pass of the whole, block by block, in reverse.

Shapes: B batch, T sequence length, C d_model, H heads, D head size (C / H), F d_ffn, V vocab size.
Notation in the derivative comments: dX is dLoss/dX, for any tensor X.
"""

from __future__ import annotations

import math

import torch

from model_zoo.config import ModelConfig
from model_zoo.custom_layers import (
    GELU, CrossEntropyLoss, CustomModel, Dropout, Embedding, LayerNorm, Linear, Module, ScaledDotProductAttention,
)
from model_zoo.kv_cache import KVCache

# ------------------------------------------------------------------------------------------------------------
# GPT-2's block: attention and MLP, each forward next to its backward


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


class CustomTransformer(CustomModel):
    def __init__(self, config: ModelConfig):
        self.config = config
        self.token_embedding = Embedding(config.vocab_size, config.d_model)
        self.position_embedding = Embedding(config.max_seq_len, config.d_model)
        self.embedding_dropout = Dropout(config.dropout)
        self.blocks = [Block(config) for _ in range(config.n_blocks)]
        self.ln_f = LayerNorm(config.d_model, config.layer_norm_eps)
        # The LM head has no weight of its own: it is the token embedding, transposed (weight tying, as GPT-2).
        # One Parameter in two layers: the head's backward and the lookup's both add into its .grad.
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False, weight=self.token_embedding.weight)
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
        logits = self.lm_head(x)  # (B, T, V): the tied LM head
        loss = self.cross_entropy(logits, targets)  # None without targets
        return logits, loss

    def backward(self, loss_scale: float = 1.0) -> dict[str, torch.Tensor]:
        """Gradients of the last forward's loss, accumulated (+=) into every parameter's .grad.

        Like torch, gradients add up over forward/backward pairs until zero_grad() (one backward per forward,
        as with torch's freed graph); loss_scale multiplies the loss first (1 / accumulation steps when several
        micro-batches make one step). Returns {name: grad}, with the keys of state_dict().
        """
        return self.backward_from_logits(self.cross_entropy.backward(loss_scale))  # d_logits: (B, T, V)

    def backward_from_logits(self, d_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rest of backward() from d loss / d logits (B, T, V) of the last forward: what a loss computed
        outside the model (DPO's, model_zoo/preference_loss.py) hands back."""
        # The tied head is the embedding's first gradient path; the lookup at the bottom of the model adds the second.
        d_x = self.lm_head.backward(d_logits)  # (B, T, C)
        d_x = self.ln_f.backward(d_x)
        for block in reversed(self.blocks):
            d_x = block.backward(d_x)  # (B, T, C)
        d_x = self.embedding_dropout.backward(d_x)
        # x = token_embedding[idx] + position_embedding[positions]: both receive d_x unchanged.
        self.token_embedding.backward(d_x)
        self.position_embedding.backward(d_x.sum(0))  # (T, C): every sequence of the batch shares positions
        return {name: param.grad for name, param in self.named_parameters()}
