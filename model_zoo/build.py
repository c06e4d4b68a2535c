"""The one constructor the jobs use: the model class for an architecture (from the config) and a model type
("torch": the nn.Module, autograd; "custom": hand-written backward)."""

from __future__ import annotations

import torch

from model_zoo.config import ModelConfig
from model_zoo.errors import ConfigError
from model_zoo.custom_llama import CustomLlama
from model_zoo.custom_transformer import CustomTransformer
from model_zoo.torch_llama import TorchLlama
from model_zoo.torch_transformer import TorchTransformer

MODEL_TYPES = ("torch", "custom")
CLASSES = {
    ("gpt2", "torch"): TorchTransformer, ("gpt2", "custom"): CustomTransformer,
    ("llama", "torch"): TorchLlama, ("llama", "custom"): CustomLlama,
}


def resolve_device(device: str) -> str:
    """"auto": CUDA when there is a GPU, else the CPU; "cuda" without one is a configuration error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but no CUDA device is available")
    return device


def build_model(config: ModelConfig, model_type: str):
    """A freshly initialised model of config.architecture, written the model_type way."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model type must be 'torch' or 'custom', got {model_type!r}")
    return CLASSES[(config.architecture, model_type)](config)


def build_hf_model(config: ModelConfig, dropout: float | None = None):
    """(class name, model): Hugging Face transformers' model of the same architecture and dimensions, freshly
    initialised, with PyTorch's fused attention: the baseline the benchmarks measure ours against. dropout
    overrides config.dropout (the train-step benchmark turns it off). Needs `transformers` (the test extra)."""
    import transformers

    from model_zoo import hf_gpt2, hf_llama

    values = config.to_dict() | ({} if dropout is None else {"dropout": dropout})
    config = ModelConfig.from_dict(values)
    if config.architecture == "llama":
        name, hf_config = "LlamaForCausalLM", transformers.LlamaConfig(**hf_llama.hf_config_dict(config))
    else:
        name, hf_config = "GPT2LMHeadModel", transformers.GPT2Config(**hf_gpt2.hf_config_dict(config))
    hf_config._attn_implementation = "sdpa"
    return name, getattr(transformers, name)(hf_config)
