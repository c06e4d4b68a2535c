"""Export to, and import from, the Hugging Face GPT-2 layout (`config.json` + `model.safetensors`).

Our model *is* GPT-2, so this is a renaming plus one transpose: Hugging Face's GPT-2 stores its linear layers
as `Conv1D` with weights (in, out), where nn.Linear (and we) store (out, in). A folder written here loads with
`transformers.GPT2LMHeadModel.from_pretrained(folder)`; `transformers` is not needed to write or read it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model_zoo.config import ModelConfig
from model_zoo.hf_folder import HFFolder, write_folder

# our name inside a block -> Hugging Face's name, and whether the weight is transposed (Conv1D)
_BLOCK_NAMES = {
    "ln1.weight": ("ln_1.weight", False),
    "ln1.bias": ("ln_1.bias", False),
    "attn.qkv.weight": ("attn.c_attn.weight", True),
    "attn.qkv.bias": ("attn.c_attn.bias", False),
    "attn.proj.weight": ("attn.c_proj.weight", True),
    "attn.proj.bias": ("attn.c_proj.bias", False),
    "ln2.weight": ("ln_2.weight", False),
    "ln2.bias": ("ln_2.bias", False),
    "mlp.fc.weight": ("mlp.c_fc.weight", True),
    "mlp.fc.bias": ("mlp.c_fc.bias", False),
    "mlp.proj.weight": ("mlp.c_proj.weight", True),
    "mlp.proj.bias": ("mlp.c_proj.bias", False),
}
_TOP_NAMES = {
    "token_embedding.weight": "transformer.wte.weight",
    "position_embedding.weight": "transformer.wpe.weight",
    "ln_f.weight": "transformer.ln_f.weight",
    "ln_f.bias": "transformer.ln_f.bias",
}


def _name_map(config: ModelConfig) -> dict[str, tuple[str, bool]]:
    names = {ours: (theirs, False) for ours, theirs in _TOP_NAMES.items()}
    for i in range(config.n_blocks):
        for ours, (theirs, transpose) in _BLOCK_NAMES.items():
            names[f"blocks.{i}.{ours}"] = (f"transformer.h.{i}.{theirs}", transpose)
    return names


def export_gpt2(
    state_dict: dict[str, torch.Tensor], config: ModelConfig, folder: str | Path,
    bos_token_id: int | None = None, eos_token_id: int | None = None,
) -> Path:
    """Write `folder/config.json` and `folder/model.safetensors` in the GPT2LMHeadModel layout."""
    tensors = {}
    for ours, (theirs, transpose) in _name_map(config).items():
        tensor = state_dict[ours].detach().to("cpu")
        tensors[theirs] = (tensor.t() if transpose else tensor).contiguous()
    return write_folder(folder, tensors, hf_config_dict(config, bos_token_id, eos_token_id))


def hf_config_dict(config: ModelConfig, bos_token_id: int | None = None, eos_token_id: int | None = None) -> dict:
    """Our ModelConfig as the keys of transformers.GPT2Config (config.json), the one place they are mapped."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.max_seq_len,
        "n_ctx": config.max_seq_len,
        "n_embd": config.d_model,
        "n_layer": config.n_blocks,
        "n_head": config.n_heads,
        "n_inner": config.d_ffn,
        "activation_function": "gelu_new",  # Hugging Face's name for the tanh approximation
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": config.init_std,
        "tie_word_embeddings": True,
        "scale_attn_weights": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
    }


def import_gpt2(folder: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Read a GPT2LMHeadModel folder back into our names: (state_dict, ModelConfig)."""
    folder = HFFolder(folder, "gpt2")
    hf = folder.config
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"{folder.config_path}: activation {hf['activation_function']!r} is not GPT-2's tanh GELU")
    config = ModelConfig(
        vocab_size=hf["vocab_size"], d_model=hf["n_embd"], n_heads=hf["n_head"], n_blocks=hf["n_layer"],
        d_ffn=hf.get("n_inner") or 4 * hf["n_embd"], max_seq_len=hf["n_positions"],
        dropout=hf.get("resid_pdrop", 0.0), layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        init_std=hf.get("initializer_range", 0.02),
    )
    # Checkpoints saved from GPT2Model (not the LM head model) have no "transformer." prefix.
    folder.tensors = {name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}": t
                      for name, t in folder.tensors.items()}
    state_dict = {}
    for ours, (theirs, transpose) in _name_map(config).items():
        tensor = folder.tensor(theirs)
        state_dict[ours] = (tensor.t() if transpose else tensor).contiguous()
    return state_dict, config
