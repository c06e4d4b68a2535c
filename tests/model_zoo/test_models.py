"""The two implementations are one model: same weights give the same logits, loss and gradients."""

import math

import pytest
import torch

from proofs import (
    assert_flops_formula_counts, assert_gradients_equal_autograd, assert_gradients_match_finite_differences,
    assert_same_adamw_training, random_batch, twins,
)
from model_zoo.config import ModelConfig, count_parameters
from model_zoo.errors import ConfigError
from model_zoo.custom_transformer import CustomTransformer
from model_zoo.generation import generate, generate_tokens, sample_rows
from model_zoo.hf_gpt2 import export_gpt2, import_gpt2
from model_zoo.kv_cache import KVCache
from model_zoo.torch_transformer import TorchTransformer

TINY = ModelConfig(vocab_size=61, d_model=16, n_heads=2, n_blocks=2, d_ffn=40, max_seq_len=16)


def batch(config=TINY, B=3, T=12, seed=1):
    return random_batch(config.vocab_size, B, T, seed)


def test_same_parameter_names_and_shapes():
    torch_model, custom_model = twins(TINY)
    torch_sd, custom_sd = torch_model.state_dict(), custom_model.state_dict()
    assert list(torch_sd) == list(custom_sd)
    assert all(torch_sd[k].shape == custom_sd[k].shape for k in torch_sd)


def test_custom_gradients_equal_autograd_float64():
    torch_model, custom_model = twins(TINY)
    idx, targets = batch()
    assert_gradients_equal_autograd(torch_model, custom_model, idx, targets)


def test_custom_gradients_match_finite_differences():
    _, model = twins(TINY)
    idx, targets = batch(B=2, T=8)
    assert_gradients_match_finite_differences(model, idx, targets)


def test_dropout_backward_matches_finite_differences():
    """Dropout masks come from the global RNG: re-seeding before each forward gives the same masks."""
    config = ModelConfig(**{**TINY.to_dict(), "dropout": 0.2})
    model = CustomTransformer(config).to(dtype=torch.float64)
    idx, targets = batch(config, B=2, T=8)

    def loss_with_fixed_masks():
        torch.manual_seed(123)
        return model.forward(idx, targets)[1].item()

    loss_with_fixed_masks()
    grads = {k: v.clone() for k, v in model.backward().items()}
    eps = 1e-6
    for name in ("blocks.0.attn.qkv.weight", "blocks.1.mlp.fc.weight", "token_embedding.weight"):
        flat = dict(model.named_parameters())[name].data.view(-1)
        for i in (0, 7, 29):
            original = flat[i].item()
            flat[i] = original + eps
            loss_plus = loss_with_fixed_masks()
            flat[i] = original - eps
            loss_minus = loss_with_fixed_masks()
            flat[i] = original
            numeric = (loss_plus - loss_minus) / (2 * eps)
            assert abs(numeric - grads[name].view(-1)[i].item()) <= 1e-7 + 1e-5 * abs(numeric), name
    model.eval()  # eval mode: no dropout, so two forwards agree
    assert torch.equal(model.forward(idx)[0], model.forward(idx)[0])


def test_float32_training_parity_with_adamw():
    """Same initial weights, same 20 batches, each with its own AdamW (and clipping): same loss curve."""
    config = ModelConfig(vocab_size=97, d_model=32, n_heads=4, n_blocks=2, d_ffn=64, max_seq_len=32)
    losses = assert_same_adamw_training(*twins(config, dtype=torch.float32), config.vocab_size, T=32)
    assert losses[-1] < math.log(config.vocab_size) - 0.3, "20 AdamW steps should lower the loss"


def test_gradient_accumulation_scaling():
    """Two half-batches with loss_scale=1/2 give the gradient of the whole batch."""
    _, model = twins(TINY)
    idx, targets = batch(B=4, T=8)
    model.forward(idx, targets)
    whole = {k: v.clone() for k, v in model.backward().items()}
    model.zero_grad()
    for half in (slice(0, 2), slice(2, 4)):
        model.forward(idx[half], targets[half])
        model.backward(loss_scale=0.5)
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, whole[name], rtol=1e-10, atol=1e-13), name
    model.forward(idx)  # no targets: no loss, so nothing to differentiate
    with pytest.raises(RuntimeError, match=r"needs a forward\(\) with targets"):
        model.backward()


@pytest.mark.parametrize("which", ["torch", "custom"])
def test_causality(which):
    torch_model, custom_model = twins(TINY)
    model = torch_model if which == "torch" else custom_model
    idx, _ = batch(B=2, T=12)
    with torch.no_grad():
        logits, _ = model(idx)
        for t in (0, 5, 10):
            changed = idx.clone()
            changed[:, t + 1:] = (changed[:, t + 1:] + 7) % TINY.vocab_size
            changed_logits, _ = model(changed)
            assert torch.equal(logits[:, : t + 1], changed_logits[:, : t + 1]), f"position {t} saw the future"
            assert not torch.allclose(logits[:, t + 1:], changed_logits[:, t + 1:])


@pytest.mark.parametrize("which", ["torch", "custom"])
def test_kv_cache_logits_equal_full_recomputation(which):
    torch_model, custom_model = twins(TINY)
    model = (torch_model if which == "torch" else custom_model).eval()
    idx, _ = batch(B=2, T=12)
    with torch.no_grad():
        full_logits, _ = model(idx)
        cache = KVCache(TINY.n_blocks, TINY.max_seq_len)
        prefill_logits, _ = model(idx[:, :5], kv_cache=cache)  # prompt of 5
        step_logits = [prefill_logits]
        for t in range(5, 12):
            logits, _ = model(idx[:, t : t + 1], kv_cache=cache)  # one token at a time
            step_logits.append(logits)
        two_at_once, _ = model(idx[:, :2], kv_cache=KVCache(TINY.n_blocks, TINY.max_seq_len))
    cached = torch.cat(step_logits, dim=1)
    assert torch.allclose(cached, full_logits, rtol=0, atol=1e-10)
    assert torch.allclose(two_at_once, full_logits[:, :2], rtol=0, atol=1e-10)


@pytest.mark.parametrize("which", ["torch", "custom"])
def test_generation_with_cache_equals_without_and_slides_past_max_len(which):
    torch_model, custom_model = twins(TINY)
    model = torch_model if which == "torch" else custom_model
    prompt = [3, 14, 15, 9, 2]
    kwargs = dict(max_new_tokens=30, temperature=0.9, top_k=20, top_p=0.95, seed=7)  # 35 > max_seq_len 16
    with_cache = generate(model, prompt, use_cache=True, **kwargs)
    without_cache = generate(model, prompt, use_cache=False, **kwargs)
    assert with_cache == without_cache
    assert len(with_cache) == len(prompt) + 30
    assert generate(model, prompt, **kwargs) == with_cache, "same seed, same text"


def test_generation_stops_at_eos_and_both_models_agree():
    torch_model, custom_model = twins(TINY)
    prompt = [1, 2, 3]
    greedy_torch = generate(torch_model, prompt, max_new_tokens=10, temperature=0)
    greedy_custom = generate(custom_model, prompt, max_new_tokens=10, temperature=0)
    assert greedy_torch == greedy_custom
    eos = greedy_torch[len(prompt) + 2]
    stopped = list(generate_tokens(torch_model, prompt, max_new_tokens=10, temperature=0, eos_id=eos))
    assert stopped[-1] == eos and len(stopped) <= 3


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    g = torch.Generator().manual_seed(0)

    def draw(temperature=1.0, top_k=None, top_p=None, rows=1):
        return sample_rows(logits.repeat(rows, 1), [temperature] * rows, [top_k] * rows, [top_p] * rows, [g] * rows)

    assert {draw(top_k=2)[0] for _ in range(200)} == {3, 4}
    # softmax of these logits: p(4) = 0.636, p(3) = 0.234; top_p=0.8 keeps exactly {4, 3}
    assert {draw(top_p=0.8)[0] for _ in range(300)} == {3, 4}
    assert draw(temperature=0.0) == [4]
    # a top_p that float32 rounds to 0 keeps the most likely token (it used to drop them all, and crash)
    assert {draw(top_p=1e-300)[0] for _ in range(20)} == {4}
    assert draw(top_p=1e-45, rows=2) == [4, 4]
    # each row its own settings in one call: greedy, top-1, top-2 with a nucleus, everything
    generators = [torch.Generator().manual_seed(i) for i in range(4)]
    mixed = [sample_rows(logits.repeat(4, 1), [0.0, 1.0, 1.0, 5.0], [None, 1, 2, None], [None, None, 0.9, None],
                         generators) for _ in range(200)]
    assert {row[0] for row in mixed} == {4} and {row[1] for row in mixed} == {4}
    assert {row[2] for row in mixed} == {3, 4} and len({row[3] for row in mixed}) == 5


def test_parameter_count_matches_modules():
    for config in (TINY, ModelConfig(vocab_size=4096, d_model=512, n_heads=8, n_blocks=7, d_ffn=2048)):
        model = TorchTransformer(config)
        assert count_parameters(config) == sum(p.numel() for p in model.parameters())
        assert count_parameters(config) == sum(t.numel() for t in CustomTransformer(config).state_dict().values())


def test_flops_formula_matches_torch_flop_counter():
    """6N + 12LCT per token is exactly the matmul FLOPs torch counts for forward + backward.

    The custom model spells attention out as matmuls, so the counter sees all of it. The twin's fused SDPA
    kernel on CPU is not counted by FlopCounterMode, so for the twin we check the 6N part alone.
    """
    config = ModelConfig(vocab_size=128, d_model=32, n_heads=4, n_blocks=3, d_ffn=96, max_seq_len=24)
    idx, targets = batch(config, B=2, T=24)
    assert_flops_formula_counts(CustomTransformer(config), TorchTransformer(config), config, idx, targets)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"d_model": 30, "n_heads": 4}, "divisible"),
        ({"n_blocks": 0}, "n_blocks must be positive"),
        ({"vocab_size": -5}, "vocab_size must be positive"),
        ({"d_ffn": 2.5}, "d_ffn must be an integer"),
        ({"dropout": 1.0}, "dropout"),
        ({"n_layers": 4}, "unknown model config key"),
        ({"vocab_size": 2_000_000_000}, "vocab_size is 2,000,000,000, over this project's limit of 1,048,576"),
        ({"dropout": float("nan")}, "dropout must be in"),
        ({"init_std": float("inf")}, "init_std must be a positive finite number"),
        ({"architecture": "llama", "rms_norm_eps": float("inf")}, "rms_norm_eps must be a positive finite number"),
        ({"architecture": "llama", "rms_norm_eps": 5.0}, "rms_norm_eps must be below 1"),
        ({"architecture": "llama", "rope_theta": float("nan")}, "rope_theta must be a positive finite number"),
    ],
)
def test_bad_config_values_raise_clear_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(values)


def test_bf16_compute_path_tracks_fp32():
    """bf16 matmuls with fp32 master weights (the CUDA path's torch.autocast, runnable on CPU): close to the fp32
    result; the logits come out in bf16, as the twin's do under autocast, and the loss in fp32."""
    _, model = twins(TINY, dtype=torch.float32)
    idx, targets = batch()
    _, loss32 = model(idx, targets)
    grads32 = {k: v.clone() for k, v in model.backward().items()}
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss16 = model(idx, targets)
        grads16 = model.backward()
    assert logits.dtype == torch.bfloat16 and loss16.dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in grads16.values()), "gradients accumulate in the weights' fp32"
    assert model.state_dict()["ln_f.weight"].dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) < 0.02
    for name in grads32:
        cos = torch.nn.functional.cosine_similarity(grads16[name].flatten(), grads32[name].flatten(), dim=0)
        assert cos > 0.98, f"{name}: cosine {cos:.3f}"


def test_load_state_dict_rejects_mismatches():
    _, model = twins(TINY)
    sd = dict(model.state_dict())
    sd["blocks.0.ln1.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="blocks.0.ln1.weight"):
        model.load_state_dict(sd)
    sd.pop("blocks.0.ln1.weight")
    with pytest.raises(KeyError, match="missing"):
        model.load_state_dict(sd)


def test_hugging_face_round_trip(tmp_path):
    torch_model, _ = twins(TINY, dtype=torch.float32)
    export_gpt2(torch_model.state_dict(), TINY, tmp_path / "hf")
    state_dict, config = import_gpt2(tmp_path / "hf")
    assert config == TINY
    for name, tensor in torch_model.state_dict().items():
        assert torch.equal(state_dict[name], tensor), name


def test_hugging_face_oracle_gives_same_logits(tmp_path):
    transformers = pytest.importorskip("transformers", reason="the oracle needs the [test] extra: transformers")
    torch_model, custom_model = twins(TINY, dtype=torch.float32)
    export_gpt2(torch_model.state_dict(), TINY, tmp_path / "hf")
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx, _ = batch()
    with torch.no_grad():
        hf_logits = hf_model(idx).logits
        ours, _ = torch_model.eval()(idx)
    custom, _ = custom_model.eval()(idx)
    assert (hf_logits - ours).abs().max() <= 1e-5
    assert (hf_logits - custom).abs().max() <= 1e-5


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_the_benchmarks_baseline_is_the_same_model(architecture):
    """build_hf_model (the benchmarks' transformers baseline) has exactly our parameter count and dropout setting."""
    pytest.importorskip("transformers", reason="the baseline needs the [test] extra: transformers")
    from model_zoo.build import build_hf_model

    llama = {"architecture": "llama", "n_kv_heads": 2} if architecture == "llama" else {}
    config = ModelConfig(vocab_size=96, d_model=32, n_heads=4, n_blocks=2, d_ffn=64, max_seq_len=32, dropout=0.1,
                         **llama)
    name, hf_model = build_hf_model(config, dropout=0.0)
    assert name == ("LlamaForCausalLM" if llama else "GPT2LMHeadModel")
    assert sum(p.numel() for p in hf_model.parameters()) == count_parameters(config)
    dropout = hf_model.config.attention_dropout if llama else hf_model.config.attn_pdrop
    assert dropout == 0.0 and build_hf_model(config)[1].config.to_dict()[
        "attention_dropout" if llama else "attn_pdrop"] == 0.1


def test_sampling_draws_each_token_with_its_probability():
    """The sampler's draws follow softmax(logits / temperature): 20,000 rows, each with its own seeded generator,
    land within 1.2 points of each token's probability; and a row draws the same alone as beside other rows."""
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    expected = torch.softmax(logits[0] / 1.5, dim=-1)
    rows = 20_000
    generators = [torch.Generator().manual_seed(seed) for seed in range(rows)]
    draws = sample_rows(logits.repeat(rows, 1), [1.5] * rows, [None] * rows, [None] * rows, generators)
    counts = torch.bincount(torch.tensor(draws), minlength=5) / rows
    assert torch.allclose(counts, expected, atol=0.012), (counts, expected)
    alone = [sample_rows(logits, [1.5], [None], [None], [torch.Generator().manual_seed(seed)])[0] for seed in range(50)]
    beside = [sample_rows(logits.repeat(2, 1), [0.0, 1.5], [None, None], [None, None],
                          [torch.Generator().manual_seed(99), torch.Generator().manual_seed(seed)])[1]
              for seed in range(50)]
    assert alone == beside == draws[:50]
