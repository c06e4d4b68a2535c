"""The Llama-style decoder as a PyTorch nn.Module, trained with autograd.

The twin of custom_llama.py: same classes, attribute names, order, parameter names and shapes, so a state_dict
moves between the two and gives the same logits, loss and gradients. It computes what Hugging Face's
LlamaForCausalLM computes (model_zoo/hf_llama.py converts the weights; the tests compare the logits). What
changes from GPT-2, and why, is told at the top of custom_llama.py.

Shapes: B batch, T sequence length, C d_model, H query heads, G key/value heads, D head size, F d_ffn, V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model_zoo.config import ModelConfig
from model_zoo.kv_cache import KVCache
from model_zoo.rope import apply_rope, rope_angles
from model_zoo.torch_transformer import CrossEntropyLoss, ScaledDotProductAttention


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))  # in at least fp32, as Hugging Face's LlamaRMSNorm
        x_hat = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x_hat.to(dtype)


class GroupedQueryAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        C, D = config.d_model, config.head_size
        self.q_proj = nn.Linear(C, self.n_heads * D, bias=False)
        self.k_proj = nn.Linear(C, self.n_kv_heads * D, bias=False)
        self.v_proj = nn.Linear(C, self.n_kv_heads * D, bias=False)
        self.attention = ScaledDotProductAttention(config.dropout)
        self.o_proj = nn.Linear(C, C, bias=False)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, block_index: int = 0) -> torch.Tensor:
        B, T, C = x.shape  # x: (B, T, C)
        H, G, D = self.n_heads, self.n_kv_heads, self.config.head_size
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, G, D).transpose(1, 2)  # (B, G, T, D)
        v = self.v_proj(x).view(B, T, G, D).transpose(1, 2)  # (B, G, T, D)
        positions = KVCache.positions_for(kv_cache, T, self.config.max_seq_len, x.device)  # (T,) or (B, T)
        cos, sin = rope_angles(self.config, positions, q.dtype)  # (T, D) each, or (B, 1, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        allowed = None
        if kv_cache is not None:
            allowed = kv_cache.attention_mask(T, x.device)  # which cached and new keys each query may see
            k, v = kv_cache.append(block_index, k, v)  # (B, G, past + T, D)
        k_all = k.repeat_interleave(H // G, dim=1)  # (B, H, past + T, D): query head h uses K/V head h // (H/G)
        v_all = v.repeat_interleave(H // G, dim=1)
        y = self.attention(q, k_all, v_all, allowed)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.o_proj(y))


class SwiGLU(nn.Module):
    """The gated MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.d_ffn, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.d_ffn, bias=False)
        self.down_proj = nn.Linear(config.d_ffn, config.d_model, bias=False)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resid_dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm block, as GPT-2's with RMSNorm: x + attn(attn_norm(x)), then + mlp(mlp_norm(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.attn = GroupedQueryAttention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, block_index: int = 0) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), kv_cache, block_index)  # (B, T, C)
        return x + self.mlp(self.mlp_norm(x))  # (B, T, C)


class TorchLlama(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)  # no position table: RoPE
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_blocks))
        self.norm_f = RMSNorm(config.d_model, config.rms_norm_eps)
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.cross_entropy = CrossEntropyLoss()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, 0.02) matrices; the two projections that write into the residual stream get std / sqrt(2L)
        (as in GPT-2, so the stream's variance does not grow with depth); unit RMSNorm gains."""
        std = self.config.init_std
        for name, param in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(param, 0.0, std / math.sqrt(2 * self.config.n_blocks))
            elif param.dim() == 2:
                nn.init.normal_(param, 0.0, std)
            else:
                nn.init.ones_(param)

    def head_weight(self) -> torch.Tensor:
        """The LM head's (V, C) weight: the token embedding when tied, else its own."""
        return self.token_embedding.weight if self.config.tie_embeddings else self.lm_head.weight

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T = idx.shape  # idx: (B, T) token ids
        KVCache.positions_for(kv_cache, T, self.config.max_seq_len)  # checks the context fits; attention reads them
        x = self.embedding_dropout(self.token_embedding(idx))  # (B, T, C)
        for block_index, block in enumerate(self.blocks):
            x = block(x, kv_cache, block_index)  # (B, T, C)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.norm_f(x)  # (B, T, C)
        logits = x @ self.head_weight().t()  # (B, T, V)
        loss = self.cross_entropy(logits, targets)  # None without targets
        return logits, loss
