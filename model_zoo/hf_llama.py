"""Export to, and import from, the Hugging Face Llama layout (`config.json` + `model.safetensors`).

Our Llama computes what `transformers.LlamaForCausalLM` computes, so this is a renaming: both store linear
weights (out, in), and both pair rotary features i and i + D/2. A folder written here loads with
`LlamaForCausalLM.from_pretrained(folder)` and gives our logits; `transformers` is not needed to write or read it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model_zoo.config import ModelConfig
from model_zoo.hf_folder import HFFolder, write_folder

# our name inside a block -> Hugging Face's
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}


def _name_map(config: ModelConfig) -> dict[str, str]:
    names = {"token_embedding.weight": "model.embed_tokens.weight", "norm_f.weight": "model.norm.weight"}
    if not config.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    for i in range(config.n_blocks):
        for ours, theirs in _BLOCK_NAMES.items():
            names[f"blocks.{i}.{ours}"] = f"model.layers.{i}.{theirs}"
    return names


def export_llama(state_dict: dict[str, torch.Tensor], config: ModelConfig, folder: str | Path,
                 bos_token_id: int | None = None, eos_token_id: int | None = None) -> Path:
    """Write `folder/config.json` and `folder/model.safetensors` in the LlamaForCausalLM layout."""
    if config.architecture != "llama":
        raise ValueError(f"export_llama needs a llama config, not {config.architecture!r}")
    tensors = {theirs: state_dict[ours].detach().to("cpu").contiguous() for ours, theirs in _name_map(config).items()}
    return write_folder(folder, tensors, hf_config_dict(config, bos_token_id, eos_token_id))


def hf_config_dict(config: ModelConfig, bos_token_id: int | None = None, eos_token_id: int | None = None) -> dict:
    """Our ModelConfig as the keys of transformers.LlamaConfig (config.json), the one place they are mapped."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ffn,
        "num_hidden_layers": config.n_blocks,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_size,
        "max_position_embeddings": config.max_seq_len,
        "rope_theta": config.rope_theta,
        "rms_norm_eps": config.rms_norm_eps,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": config.dropout,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
    }


def import_llama(folder: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Read a LlamaForCausalLM folder back into our names: (state_dict, ModelConfig)."""
    folder = HFFolder(folder, "llama")
    hf, config_path = folder.config, folder.config_path
    for key, expected in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if hf.get(key, expected) != expected:
            raise ValueError(f"{config_path}: {key} is {hf[key]!r}; this model supports only {expected!r}")
    if hf.get("rope_scaling"):
        raise ValueError(f"{config_path}: rope_scaling {hf['rope_scaling']!r} is not supported (plain RoPE only)")
    config = ModelConfig(
        architecture="llama", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
        n_heads=hf["num_attention_heads"], n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        n_blocks=hf["num_hidden_layers"], d_ffn=hf["intermediate_size"], max_seq_len=hf["max_position_embeddings"],
        rope_theta=float(hf.get("rope_theta", 10000.0)), rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), dropout=float(hf.get("attention_dropout", 0.0)),
        init_std=hf.get("initializer_range", 0.02),
    )
    if hf.get("head_dim", config.head_size) != config.head_size:
        raise ValueError(f"{config_path}: head_dim {hf['head_dim']} is not hidden_size / num_attention_heads")
    return {ours: folder.tensor(theirs).contiguous() for ours, theirs in _name_map(config).items()}, config
