"""The Llama-style decoder with every backward pass written by hand: what changed after GPT-2, and its gradients.

The twin of torch_llama.py (same classes, names, order, parameter names and shapes), computing what Hugging
Face's LlamaForCausalLM computes. Only what is new is here; the rest comes from custom_layers.py, as for GPT-2:
Module, Parameter, Linear (here without biases), Embedding, Dropout, attention's core and the cross-entropy loss
(AdamW and clipping: optimizer.py). The conventions are the same: forward() saves what backward() needs, backward() returns the input's gradient and
accumulates (+=) into its parameters' gradients, and nothing saved for backward is ever modified.

What changes from GPT-2, and why:
  RMSNorm instead of LayerNorm   no mean subtraction and no bias: scale by 1 / RMS(x) and a learned gain. As good
                                 in practice, and cheaper.
  rotary positions (RoPE)        no learned position table: each query and key is rotated by an angle that grows
                                 with its position, so q . k depends on the distance between them.
  SwiGLU MLP                     down(silu(gate(x)) * up(x)): a gated MLP with three matrices (d_ffn is usually
                                 about 8/3 C to spend the same parameters as GPT-2's 4C with two).
  grouped-query attention        n_kv_heads key/value heads, each shared by n_heads / n_kv_heads query heads: the
                                 KV cache shrinks by that factor.
  no biases                      anywhere.

Shapes: B batch, T sequence length, C d_model, H query heads, G key/value heads (n_kv_heads), D head size
(C / H), F d_ffn, V vocab size. Notation: dX is dLoss/dX.
"""

from __future__ import annotations

import math

import torch

from model_zoo.config import ModelConfig
from model_zoo.custom_layers import (
    CrossEntropyLoss, CustomModel, Dropout, Embedding, Linear, Module, Parameter, ScaledDotProductAttention,
    at_least_float32,
)
from model_zoo.kv_cache import KVCache
from model_zoo.rope import apply_rope, rope_angles, rotate_half


class RMSNorm(Module):
    def __init__(self, dim: int, eps: float):
        self.eps = eps
        self.weight = Parameter.of(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # y = x * rstd * w,  rstd = 1 / sqrt(mean(x^2) + eps) over each token's C features; computed in at least
        # fp32 (a mean of squares is where bf16 loses most), as the twin and Hugging Face's LlamaRMSNorm do
        self.x_dtype, x = x.dtype, at_least_float32(x)
        self.rstd = torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps)  # (B, T, 1)
        self.x_hat = x * self.rstd  # (B, T, C)
        return self.x_hat.to(self.x_dtype) * self.weight.data

    def backward(self, d_out: torch.Tensor) -> torch.Tensor:
        # dw = sum over tokens of dy * x_hat;  d_x_hat = dy * w. rstd depends on every x of the token, which gives
        #   dx = rstd * (d_x_hat - x_hat * mean(d_x_hat * x_hat))   (LayerNorm's formula without the mean term)
        C = d_out.shape[-1]
        self.weight.grad += (d_out * self.x_hat).reshape(-1, C).sum(0)
        d_x_hat = at_least_float32(d_out * self.weight.data)
        d_x = self.rstd * (d_x_hat - self.x_hat * (d_x_hat * self.x_hat).mean(-1, keepdim=True))
        return d_x.to(self.x_dtype)


# --- rotary position embeddings (forward in rope.py, shared with the twin) ------------------------------


def apply_rope_backward(d_out: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # y = x cos + R(x) sin with R = rotate_half, a linear map whose transpose is -R (R^T [g1, g2] = [g2, -g1]):
    #   dx = dy cos + R^T(dy sin) = dy cos - rotate_half(dy sin). A rotation's gradient is the opposite rotation.
    return d_out * cos - rotate_half(d_out * sin)


# --- the layers ----------------------------------------------------------------------------------------------


class GroupedQueryAttention(Module):
    def __init__(self, config: ModelConfig):
        self.config = config
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        C, D = config.d_model, config.head_size
        self.q_proj = Linear(C, self.n_heads * D, bias=False)
        self.k_proj = Linear(C, self.n_kv_heads * D, bias=False)  # G heads: fewer than H with GQA
        self.v_proj = Linear(C, self.n_kv_heads * D, bias=False)
        self.attention = ScaledDotProductAttention(config.dropout)
        self.o_proj = Linear(C, C, bias=False)
        self.resid_dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, block_index: int = 0) -> torch.Tensor:
        B, T, C = x.shape  # x: (B, T, C)
        H, G, D = self.n_heads, self.n_kv_heads, self.config.head_size
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, G, D).transpose(1, 2)  # (B, G, T, D)
        v = self.v_proj(x).view(B, T, G, D).transpose(1, 2)  # (B, G, T, D)
        positions = KVCache.positions_for(kv_cache, T, self.config.max_seq_len, x.device)  # (T,) or (B, T)
        self.cos, self.sin = rope_angles(self.config, positions, q.dtype)  # (T, D) each, or (B, 1, T, D)
        q, k = apply_rope(q, self.cos, self.sin), apply_rope(k, self.cos, self.sin)  # each at its position
        allowed = None
        if kv_cache is not None:
            allowed = kv_cache.attention_mask(T, x.device)  # which cached and new keys each query may see
            k, v = kv_cache.append(block_index, k, v)  # (B, G, past + T, D): the cache keeps G heads, rotated
        # Each K/V head serves H / G query heads: repeat it for them (query head h uses K/V head h // (H / G)).
        k_all = k.repeat_interleave(H // G, dim=1)  # (B, H, past + T, D)
        v_all = v.repeat_interleave(H // G, dim=1)  # (B, H, past + T, D)
        y = self.attention(q, k_all, v_all, allowed)  # (B, H, T, D): GPT-2's attention from here on
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.o_proj(y))

    def backward(self, d_out: torch.Tensor) -> torch.Tensor:
        d_y = self.o_proj.backward(self.resid_dropout.backward(d_out))  # (B, T, C)
        B, T, C = d_y.shape
        H, G, D = self.n_heads, self.n_kv_heads, self.config.head_size
        d_y = d_y.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        d_q, d_k_all, d_v_all = self.attention.backward(d_y)  # (B, H, T, D) each
        # A K/V head used by H / G query heads collects the gradients of all of them: sum over its group.
        d_k = d_k_all.view(B, G, H // G, T, D).sum(2)  # (B, G, T, D)
        d_v = d_v_all.view(B, G, H // G, T, D).sum(2)  # (B, G, T, D)
        d_q, d_k = apply_rope_backward(d_q, self.cos, self.sin), apply_rope_backward(d_k, self.cos, self.sin)
        d_x = self.q_proj.backward(d_q.transpose(1, 2).reshape(B, T, H * D))  # the three projections read the
        d_x = d_x + self.k_proj.backward(d_k.transpose(1, 2).reshape(B, T, G * D))  # same x: their input
        return d_x + self.v_proj.backward(d_v.transpose(1, 2).reshape(B, T, G * D))  # gradients add up


class SiLU(Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.x, self.sigmoid = x, torch.sigmoid(x)
        return x * self.sigmoid  # silu(x) = x * sigmoid(x)

    def backward(self, d_out: torch.Tensor) -> torch.Tensor:
        # d/dx [x s(x)] = s + x s (1 - s) = s (1 + x (1 - s)),  s = sigmoid(x)
        s = self.sigmoid
        return d_out * s * (1 + self.x * (1 - s))


class SwiGLU(Module):
    """The gated MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig):
        self.gate_proj = Linear(config.d_model, config.d_ffn, bias=False)
        self.up_proj = Linear(config.d_model, config.d_ffn, bias=False)
        self.silu = SiLU()
        self.down_proj = Linear(config.d_ffn, config.d_model, bias=False)
        self.resid_dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.gate, self.up = self.silu(self.gate_proj(x)), self.up_proj(x)  # (B, T, F) each
        return self.resid_dropout(self.down_proj(self.gate * self.up))  # (B, T, C)

    def backward(self, d_out: torch.Tensor) -> torch.Tensor:
        d_hidden = self.down_proj.backward(self.resid_dropout.backward(d_out))  # (B, T, F)
        # hidden = gate * up  =>  d_gate = d_hidden * up,  d_up = d_hidden * gate
        d_gate_in = self.silu.backward(d_hidden * self.up)
        d_up = d_hidden * self.gate
        return self.gate_proj.backward(d_gate_in) + self.up_proj.backward(d_up)  # x feeds both: gradients add


class Block(Module):
    """Pre-norm block, as GPT-2's with RMSNorm: x + attn(attn_norm(x)), then + mlp(mlp_norm(x))."""

    def __init__(self, config: ModelConfig):
        self.attn_norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.attn = GroupedQueryAttention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, block_index: int = 0) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), kv_cache, block_index)  # (B, T, C)
        return x + self.mlp(self.mlp_norm(x))  # (B, T, C)

    def backward(self, d_out: torch.Tensor) -> torch.Tensor:
        d_mid = d_out + self.mlp_norm.backward(self.mlp.backward(d_out))  # residual: straight through and via f
        return d_mid + self.attn_norm.backward(self.attn.backward(d_mid))


class CustomLlama(CustomModel):
    def __init__(self, config: ModelConfig):
        self.config = config
        self.token_embedding = Embedding(config.vocab_size, config.d_model)  # no position table: RoPE
        self.embedding_dropout = Dropout(config.dropout)
        self.blocks = [Block(config) for _ in range(config.n_blocks)]
        self.norm_f = RMSNorm(config.d_model, config.rms_norm_eps)
        # Tied: one Parameter in two layers, as GPT-2's head (the twin: head_weight()); else the head's own
        tied = self.token_embedding.weight if config.tie_embeddings else None
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False, weight=tied)
        self.cross_entropy = CrossEntropyLoss()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The same rule as TorchLlama.reset_parameters: N(0, 0.02) matrices, std / sqrt(2L) for the two
        projections that write into the residual stream, unit norm gains."""
        std = self.config.init_std
        for name, param in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                param.data.normal_(0.0, std / math.sqrt(2 * self.config.n_blocks))
            elif param.data.dim() == 2:
                param.data.normal_(0.0, std)
            else:
                param.data.fill_(1.0)  # RMSNorm gains

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T = idx.shape  # idx: (B, T) token ids
        KVCache.positions_for(kv_cache, T, self.config.max_seq_len)  # checks the context fits; attention reads them
        x = self.embedding_dropout(self.token_embedding(idx))  # (B, T, C): positions enter in attention (RoPE)
        for block_index, block in enumerate(self.blocks):
            x = block(x, kv_cache, block_index)  # (B, T, C)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.norm_f(x)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
        loss = self.cross_entropy(logits, targets)  # None without targets
        return logits, loss

    def backward(self, loss_scale: float = 1.0) -> dict[str, torch.Tensor]:
        """As CustomTransformer.backward: gradients accumulated into .grad, returned by state_dict key."""
        return self.backward_from_logits(self.cross_entropy.backward(loss_scale))  # d_logits: (B, T, V)

    def backward_from_logits(self, d_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """As CustomTransformer.backward_from_logits."""
        # When tied, the head is the embedding's first gradient path (the lookup below adds the second).
        d_x = self.norm_f.backward(self.lm_head.backward(d_logits))  # (B, T, C)
        for block in reversed(self.blocks):
            d_x = block.backward(d_x)
        self.token_embedding.backward(self.embedding_dropout.backward(d_x))
        return {name: param.grad for name, param in self.named_parameters()}
