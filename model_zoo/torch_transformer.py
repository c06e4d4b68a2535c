"""GPT-2 as a PyTorch nn.Module, trained with autograd.

The twin of custom_transformer.py: same classes, same attribute names, same order, same parameter names and
shapes, so a state_dict moves between the two and gives the same logits, loss and gradients. Read the two
side by side: here autograd writes the backward pass; there it is written by hand.

Shapes: B batch, T sequence length, C d_model, H heads, D head size (C / H), F d_ffn, V vocab size.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model_zoo.config import ModelConfig
from model_zoo.custom_layers import IGNORE_INDEX
from model_zoo.kv_cache import KVCache


class ScaledDotProductAttention(nn.Module):
    """Causal attention of (B, H, T, D) queries over (B, H, past + T, D) keys and values:
    y = softmax(q k^T / sqrt(D), causal) v, with PyTorch's fused kernel (custom_transformer writes it out)."""

    def __init__(self, dropout: float):
        super().__init__()
        self.attn_dropout = dropout  # the probability: the kernel applies it to the attention weights

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None = None
                ) -> torch.Tensor:
        dropout_p = self.attn_dropout if self.training else 0.0
        if allowed is None:  # no cache: the kernel's own causal mask
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        # with a cache, the cache says which keys each query may see: (T, past + T), or (B, 1, T, past + T)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)


class CrossEntropyLoss(nn.Module):
    """loss = mean over scored tokens of -log softmax(z)[y], in at least fp32 (custom_layers.CrossEntropyLoss writes
    it out, with its backward). A target of IGNORE_INDEX is not scored; with none scored the loss is 0, as the
    custom one's (F.cross_entropy's mean would be NaN). No targets (generation): no loss."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
        if targets is None:
            return None
        logits_fp32 = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32 for the loss
        total = F.cross_entropy(logits_fp32.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                                reduction="sum")
        return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)  # Q, K and V for all heads in one matmul
        self.attention = ScaledDotProductAttention(config.dropout)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.resid_dropout = nn.Dropout(config.dropout)

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


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_ffn)
        self.proj = nn.Linear(config.d_ffn, config.d_model)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.fc(x), approximate="tanh")  # (B, T, F); GPT-2's tanh approximation of GELU
        return self.resid_dropout(self.proj(hidden))  # (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm block: x + attn(ln1(x)), then + mlp(ln2(x)). The residual stream is never normalised."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, block_index: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), kv_cache, block_index)  # (B, T, C)
        x = x + self.mlp(self.ln2(x))  # (B, T, C)
        return x


class TorchTransformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.max_seq_len, config.d_model)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_blocks))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        # The LM head has no weight of its own: it is the token embedding, transposed (weight tying, as GPT-2).
        self.cross_entropy = CrossEntropyLoss()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) for weights and embeddings, zero biases, unit LayerNorm gains.

        The two projections that write into the residual stream get std / sqrt(2 * L): each block adds two
        such outputs to the stream, and this keeps the stream's variance from growing with depth.
        """
        std = self.config.init_std
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, 0.0, std / math.sqrt(2 * self.config.n_blocks))
            elif name.endswith(".weight") and param.dim() == 2:
                nn.init.normal_(param, 0.0, std)
            elif ".ln" in name or name.startswith("ln_f"):
                nn.init.ones_(param) if name.endswith("weight") else nn.init.zeros_(param)
            else:
                nn.init.zeros_(param)

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
        logits = x @ self.token_embedding.weight.t()  # (B, T, V): the tied LM head
        loss = self.cross_entropy(logits, targets)  # None without targets
        return logits, loss
