"""The model's configuration, and the two numbers every run reports about it: parameters and FLOPs.

This is the one home of the config schema and of the FLOPs formula; the jobs, the benchmark and MLflow all
read them from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping


class InputError(Exception):
    """Something the user gave is wrong: a config value, a file, a flag, a checkpoint. The message names it in one
    line, and the command line prints just that line (exit status 2). The base of every such error; anything
    else is a bug and keeps its traceback. (It lives here, the lowest layer, so the model code can raise it too.)"""


class ConfigError(InputError):
    """A configuration value is wrong. The message names the key."""


@dataclass(frozen=True)
class ModelConfig:
    """A GPT-2 style decoder-only transformer.

    vocab_size   V  tokens the embedding and LM head know
    d_model      C  width of the residual stream
    n_heads      H  attention heads; each has head size D = C / H
    n_blocks     L  transformer blocks
    d_ffn        F  hidden width of each block's MLP (GPT-2 uses 4 * C)
    max_seq_len  T  longest context (rows of the learned position embedding)
    dropout         probability for the embedding, attention and residual dropouts (0 disables them)
    """

    vocab_size: int = 4096
    d_model: int = 256
    n_heads: int = 4
    n_blocks: int = 4
    d_ffn: int = 1024
    max_seq_len: int = 256
    dropout: float = 0.0

    # GPT-2's fixed choices, kept as attributes so the code that uses them can name them.
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "n_blocks", "d_ffn", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"model.{name} must be an integer, got {value!r}")
            if value <= 0:
                raise ConfigError(f"model.{name} must be positive, got {value}")
        if self.d_model % self.n_heads != 0:
            raise ConfigError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise ConfigError(f"model.dropout must be a number, got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        for name in ("layer_norm_eps", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"model.{name} must be a positive number, got {value!r}")

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
    """Trainable parameters. The LM head is tied to the token embedding, so it adds none."""
    V, C, F, T, L = config.vocab_size, config.d_model, config.d_ffn, config.max_seq_len, config.n_blocks
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
    return L * (C * 3 * C + C * C + C * F + F * C) + V * C


def flops_per_token(config: ModelConfig, seq_len: int | None = None, training: bool = True) -> int:
    """Model FLOPs per token, after the PaLM paper (Chowdhery et al. 2022, appendix B).

    A matmul with a (K, M) weight costs 2*K*M FLOPs per token forward and twice that backward (one product for
    the input gradient, one for the weight gradient): 6 * N per token for training, 2 * N for inference.
    Attention adds, per block and token, 2 * T * C for Q K^T and 2 * T * C for att @ V forward; PaLM counts
    the full T x T score matrix (no saving for the causal mask), giving 12 * L * C * T for training.

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
