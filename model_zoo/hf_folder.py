"""The Hugging Face model folder that hf_gpt2 and hf_llama both read and write: `config.json` (the model's
transformers config) and `model.safetensors` (its weights, by Hugging Face's names). `transformers` is not
needed for either direction."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def write_folder(folder: str | Path, tensors: dict[str, torch.Tensor], hf_config: dict) -> Path:
    """Write the weights (Hugging Face's names) and the config, with the dtype the weights were saved in."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    hf_config = {**hf_config, "torch_dtype": str(next(iter(tensors.values())).dtype).removeprefix("torch.")}
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    return folder


class HFFolder:
    """A folder being read: its config (checked to be of `architecture`: Hugging Face's config calls it
    model_type, a name this project keeps for torch or custom) and its weights."""

    def __init__(self, folder: str | Path, architecture: str):
        folder = Path(folder)
        self.config_path, self.weights_path = folder / "config.json", folder / "model.safetensors"
        for path in (self.config_path, self.weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"not a Hugging Face {architecture} folder: {path} is missing")
        self.config = json.loads(self.config_path.read_text())
        if self.config.get("model_type") != architecture:
            raise ValueError(f"{self.config_path}: model_type is {self.config.get('model_type')!r}, "
                             f"expected {architecture!r}")
        self.tensors = load_file(str(self.weights_path))  # safetensors: plain tensors, nothing unpickled

    def tensor(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            raise KeyError(f"{self.weights_path}: tensor {name!r} is missing")
        return self.tensors[name]
