"""The model's configuration, and the two numbers every run reports about it: parameters and FLOPs.

This is the one home of the config schema and of the FLOPs formula; the jobs, the benchmark and MLflow all
read them from here.
"""

from __future__ import annotations

import math

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from model_zoo.errors import ConfigError


ARCHITECTURES = ("gpt2", "llama")


# The largest sizes a config may ask for (beyond them a model does not fit any machine this project targets).
SIZE_LIMITS = {"vocab_size": 1 << 20, "d_model": 1 << 16, "n_heads": 1 << 10, "n_blocks": 1 << 10,
               "d_ffn": 1 << 18, "max_seq_len": 1 << 20}
# Upper limits of the float settings: an eps of 1 or more, or a huge theta, trains a constant or position-blind model.
FLOAT_LIMITS = {"layer_norm_eps": 1.0, "rms_norm_eps": 1.0, "init_std": 10.0, "rope_theta": 1e12}


def _check_positive(name: str, value) -> None:
    """A positive, finite number under its FLOAT_LIMITS entry, or a ConfigError naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"model.{name} must be a positive finite number, got {str(value)[:40]!r}")
    if value >= FLOAT_LIMITS[name]:
        raise ConfigError(f"model.{name} must be below {FLOAT_LIMITS[name]:g}, got {value:g}")


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer: GPT-2 (the default) or the Llama-style block.

    architecture    "gpt2": LayerNorm, learned positions, GELU MLP, biases, tied head (custom/torch_transformer.py)
                    "llama": RMSNorm, rotary positions, SwiGLU MLP, no biases, grouped-query attention
                    (custom/torch_llama.py)
    vocab_size   V  tokens the embedding and LM head know
    d_model      C  width of the residual stream
    n_heads      H  attention heads; each has head size D = C / H
    n_blocks     L  transformer blocks
    d_ffn        F  hidden width of each block's MLP (GPT-2 uses 4 * C; Llama about 8/3 * C, with three matrices)
    max_seq_len  T  longest context (GPT-2: rows of the learned position embedding)
    dropout         probability for the embedding, attention and residual dropouts (0 disables them)

    Llama only (rejected for gpt2, which has none of them):
    n_kv_heads      key/value heads, dividing n_heads (default n_heads: ordinary multi-head attention; fewer
                    means each K/V head serves n_heads / n_kv_heads query heads, and the KV cache shrinks by that)
    rope_theta      base of the rotary position frequencies (default 10000.0)
    rms_norm_eps    RMSNorm's epsilon (default 1e-6, as Hugging Face's LlamaConfig)
    tie_embeddings  the LM head is the token embedding, transposed (default true; GPT-2 is always tied)
    """

    vocab_size: int = 4096
    d_model: int = 256
    n_heads: int = 4
    n_blocks: int = 4
    d_ffn: int = 1024
    max_seq_len: int = 256
    dropout: float = 0.0
    architecture: str = "gpt2"
    n_kv_heads: int | None = None
    rope_theta: float | None = None
    rms_norm_eps: float | None = None
    tie_embeddings: bool = True

    # GPT-2's fixed choices, kept as attributes so the code that uses them can name them.
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name, limit in SIZE_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"model.{name} must be an integer, got {str(value)[:40]!r}")
            if value <= 0:
                raise ConfigError(f"model.{name} must be positive, got {value}")
            if value > limit:  # a size past these dies in the allocator, not here
                raise ConfigError(f"model.{name} is {value:,}, over this project's limit of {limit:,}")
        if self.d_model % self.n_heads != 0:
            raise ConfigError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise ConfigError(f"model.dropout must be a number, got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:  # (NaN fails this too)
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        for name in ("layer_norm_eps", "init_std"):
            _check_positive(name, getattr(self, name))
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"model.architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise ConfigError(f"model.tie_embeddings must be true or false, got {self.tie_embeddings!r}")
        if self.architecture == "gpt2":
            for name in ("n_kv_heads", "rope_theta", "rms_norm_eps"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"model.{name} is a Llama setting; architecture gpt2 has no use for it")
            if not self.tie_embeddings:
                raise ConfigError("model.tie_embeddings: GPT-2's LM head is always the token embedding (set "
                                  "architecture: llama for an untied head)")
            return
        # Llama: fill the defaults in (frozen dataclass, hence object.__setattr__), then check them.
        defaults = {"n_kv_heads": self.n_heads, "rope_theta": 10000.0, "rms_norm_eps": 1e-6}
        for name, default in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        if isinstance(self.n_kv_heads, bool) or not isinstance(self.n_kv_heads, int) or self.n_kv_heads <= 0:
            raise ConfigError(f"model.n_kv_heads must be a positive integer, got {self.n_kv_heads!r}")
        if self.n_heads % self.n_kv_heads != 0:
            raise ConfigError(f"model.n_kv_heads ({self.n_kv_heads}) must divide model.n_heads ({self.n_heads})")
        if self.head_size % 2 != 0:
            raise ConfigError(f"rotary embeddings rotate pairs of features: the head size d_model / n_heads "
                              f"({self.head_size}) must be even")
        for name in ("rope_theta", "rms_norm_eps"):
            _check_positive(name, getattr(self, name))

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        """Build from a mapping (a YAML section); unknown keys are an error, not silently ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model config key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------------------
# Counting


def count_parameters(config: ModelConfig) -> int:
    """Trainable parameters. A tied LM head (GPT-2 always, Llama by default) adds none."""
    V, C, F, T, L = config.vocab_size, config.d_model, config.d_ffn, config.max_seq_len, config.n_blocks
    if config.architecture == "llama":
        kv = config.n_kv_heads * config.head_size  # width of K and of V: fewer heads than Q with GQA
        per_block = (
            C  # attn_norm gain
            + C * C + 2 * C * kv + C * C  # q, k, v and o projections, no biases
            + C  # mlp_norm gain
            + 3 * C * F  # gate, up and down projections
        )
        head = 0 if config.tie_embeddings else V * C
        return V * C + L * per_block + C + head
    embeddings = V * C + T * C
    per_block = (
        2 * C  # ln1 gain and bias
        + C * 3 * C + 3 * C  # fused QKV projection
        + C * C + C  # attention output projection
        + 2 * C  # ln2
        + C * F + F  # MLP up-projection
        + F * C + C  # MLP down-projection
    )
    final_norm = 2 * C
    return embeddings + L * per_block + final_norm


def count_matmul_parameters(config: ModelConfig) -> int:
    """N of the FLOPs formula: every weight that multiplies an activation in a matmul.

    That is the blocks' four weight matrices plus the LM head (V * C, the tied embedding used as a matrix).
    Embedding lookups, biases and LayerNorm gains do no matmul work and are left out.
    """
    V, C, F, L = config.vocab_size, config.d_model, config.d_ffn, config.n_blocks
    if config.architecture == "llama":  # the head is a matmul whether tied or not
        kv = config.n_kv_heads * config.head_size
        return L * (C * C + 2 * C * kv + C * C + 3 * C * F) + V * C
    return L * (C * 3 * C + C * C + C * F + F * C) + V * C


def flops_per_token(config: ModelConfig, seq_len: int | None = None, training: bool = True) -> int:
    """Model FLOPs per token, after the PaLM paper (Chowdhery et al. 2022, appendix B).

    A matmul with a (K, M) weight costs 2*K*M FLOPs per token forward and twice that backward (one product for
    the input gradient, one for the weight gradient): 6 * N per token for training, 2 * N for inference.
    Attention adds, per block and token, 2 * T * C for Q K^T and 2 * T * C for att @ V forward; PaLM counts
    the full T x T score matrix (no saving for the causal mask), giving 12 * L * C * T for training. (Grouped-
    query attention shares K and V between heads but every query head still scores every key: the same term.)

        training:  6 * N + 12 * L * C * T        inference: 2 * N + 4 * L * C * T

    seq_len is T (defaults to max_seq_len). These are the FLOPs a model needs, not what the hardware did;
    dividing achieved model FLOP/s by peak FLOP/s gives MFU.
    """
    T = config.max_seq_len if seq_len is None else seq_len
    N = count_matmul_parameters(config)
    L, C = config.n_blocks, config.d_model
    if training:
        return 6 * N + 12 * L * C * T
    return 2 * N + 4 * L * C * T
