"""The Llama pair is one model, and it is Hugging Face's Llama: same weights give the same logits, loss and
gradients (float64, against autograd and finite differences), the same training curve (float32, AdamW), causal
outputs, KV-cache generation equal to full recomputation, and LlamaForCausalLM's logits both ways."""

import pytest
import torch

from proofs import (
    assert_flops_formula_counts, assert_gradients_equal_autograd, assert_gradients_match_finite_differences,
    assert_same_adamw_training, random_batch, twins,
)
from model_zoo.build import build_model
from model_zoo.config import ModelConfig, count_parameters
from model_zoo.errors import ConfigError
from model_zoo.custom_llama import CustomLlama
from model_zoo.generation import generate
from model_zoo.hf_llama import export_llama, import_llama
from model_zoo.torch_llama import TorchLlama

GQA = ModelConfig(architecture="llama", vocab_size=61, d_model=32, n_heads=4, n_kv_heads=2, n_blocks=2, d_ffn=40,
                  max_seq_len=16)
UNTIED = ModelConfig(**{**GQA.to_dict(), "n_kv_heads": 1, "tie_embeddings": False})
MHA = ModelConfig(**{**GQA.to_dict(), "n_kv_heads": 4})
CONFIGS = pytest.mark.parametrize("config", [GQA, UNTIED, MHA], ids=["gqa-tied", "mqa-untied", "mha"])


def batch(config, B=3, T=12, seed=1):
    return random_batch(config.vocab_size, B, T, seed)


@CONFIGS
def test_same_names_and_shapes_and_the_parameter_count(config):
    torch_model, custom_model = twins(config)
    torch_sd, custom_sd = torch_model.state_dict(), custom_model.state_dict()
    assert list(torch_sd) == list(custom_sd)
    assert all(torch_sd[k].shape == custom_sd[k].shape for k in torch_sd)
    assert count_parameters(config) == sum(p.numel() for p in torch_model.parameters())
    assert ("lm_head.weight" in torch_sd) == (not config.tie_embeddings)
    assert torch_sd["blocks.0.attn.k_proj.weight"].shape == (config.n_kv_heads * config.head_size, config.d_model)


@CONFIGS
def test_custom_gradients_equal_autograd_float64(config):
    torch_model, custom_model = twins(config)
    idx, targets = batch(config)
    assert_gradients_equal_autograd(torch_model, custom_model, idx, targets)


@pytest.mark.parametrize("config", [GQA, UNTIED], ids=["gqa-tied", "mqa-untied"])
def test_custom_gradients_match_finite_differences(config):
    _, model = twins(config)
    idx, targets = batch(config, B=2, T=8)
    assert_gradients_match_finite_differences(model, idx, targets)


@pytest.mark.parametrize("config", [GQA, UNTIED], ids=["gqa-tied", "mqa-untied"])
def test_float32_training_parity_with_adamw(config):
    """Same initial weights, same 20 batches, each with its own AdamW and clipping: the same loss curve."""
    losses = assert_same_adamw_training(*twins(config, dtype=torch.float32), config.vocab_size, T=16)
    assert losses[-1] < losses[0] - 0.5


@pytest.mark.parametrize("model_type", ["torch", "custom"])
def test_changing_future_tokens_never_changes_earlier_logits(model_type):
    torch.manual_seed(0)
    model = build_model(GQA, model_type)
    idx, _ = batch(GQA, B=2, T=12)
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 5) % GQA.vocab_size
    before, after = model.forward(idx)[0], model.forward(changed)[0]
    assert torch.allclose(before[:, :7], after[:, :7], atol=1e-6)
    assert not torch.allclose(before[:, 7:], after[:, 7:], atol=1e-3)


@pytest.mark.parametrize("model_type", ["torch", "custom"])
@pytest.mark.parametrize("config", [GQA, UNTIED], ids=["gqa-tied", "mqa-untied"])
def test_kv_cache_generation_equals_full_recomputation(config, model_type):
    """Rotary positions continue from the cache's length: cached and recomputed greedy tokens agree."""
    torch.manual_seed(3)
    model = build_model(config, model_type).to(dtype=torch.float64)
    prompt = [5, 9, 2, 33]
    cached = generate(model, prompt, max_new_tokens=12, temperature=0.0)
    full = generate(model, prompt, max_new_tokens=12, temperature=0.0, use_cache=False)
    assert cached == full and len(cached) == 16


@pytest.mark.parametrize("config", [GQA, UNTIED], ids=["gqa-tied", "mqa-untied"])
def test_hugging_face_llama_gives_our_logits_both_ways(config, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch_model, _ = twins(config, dtype=torch.float32)
    folder = export_llama(torch_model.state_dict(), config, tmp_path / "hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    idx, _ = batch(config, B=2, T=16)
    with torch.no_grad():
        ours = torch_model.eval()(idx)[0]
        theirs = hf(idx).logits
    assert (ours - theirs).abs().max() < 1e-5
    state_dict, back = import_llama(folder)
    assert back == config
    custom = CustomLlama(back)
    custom.load_state_dict(state_dict)
    assert (custom.eval()(idx)[0] - theirs).abs().max() < 1e-5


@pytest.mark.parametrize("tie", [True, False])
def test_llama_flops_formula_equals_torch_flop_counter(tie):
    """As for GPT-2 (tests/model_zoo/test_models.py), with grouped-query attention and a tied or untied head."""
    config = ModelConfig(architecture="llama", vocab_size=64, d_model=32, n_heads=4, n_kv_heads=2, n_blocks=2,
                         d_ffn=48, max_seq_len=16, tie_embeddings=tie)
    idx, targets = batch(config, B=2, T=16)
    assert_flops_formula_counts(CustomLlama(config), TorchLlama(config), config, idx, targets)


@pytest.mark.parametrize("values, words", [
    ({"architecture": "llama", "n_heads": 4, "n_kv_heads": 3}, "must divide model.n_heads"),
    ({"architecture": "gpt2", "n_kv_heads": 2}, "model.n_kv_heads is a Llama setting"),
    ({"architecture": "gpt2", "rope_theta": 500000.0}, "model.rope_theta is a Llama setting"),
    ({"architecture": "gpt2", "tie_embeddings": False}, "always the token embedding"),
    ({"architecture": "mamba"}, "model.architecture must be one of gpt2, llama"),
    ({"architecture": "llama", "d_model": 12, "n_heads": 4}, "must be even"),
])
def test_settings_an_architecture_does_not_use_are_refused(values, words):
    with pytest.raises(ConfigError, match=words):
        ModelConfig(**{"d_model": 32, "n_heads": 4, **values})
