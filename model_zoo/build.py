"""The one constructor the jobs use: the model class for an architecture (from the config) and a model type
("torch": the nn.Module, autograd; "custom": hand-written backward)."""

from __future__ import annotations

from model_zoo.config import ModelConfig
from model_zoo.custom_llama import CustomLlama
from model_zoo.custom_transformer import CustomTransformer
from model_zoo.torch_llama import TorchLlama
from model_zoo.torch_transformer import TorchTransformer

MODEL_TYPES = ("torch", "custom")
CLASSES = {
    ("gpt2", "torch"): TorchTransformer, ("gpt2", "custom"): CustomTransformer,
    ("llama", "torch"): TorchLlama, ("llama", "custom"): CustomLlama,
}


def build_model(config: ModelConfig, model_type: str):
    """A freshly initialised model of config.architecture, written the model_type way."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model type must be 'torch' or 'custom', got {model_type!r}")
    return CLASSES[(config.architecture, model_type)](config)
