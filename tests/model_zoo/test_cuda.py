"""What only a GPU can check: both model types on CUDA, float64 gradients against autograd, bf16 mixed precision
through the runtime adapters (torch.compile included), KV-cache generation, and a checkpoint restored onto
the GPU. Skipped where no CUDA device is available (CI, the dev machines); run on a GPU machine with
`python -m pytest tests/model_zoo/test_cuda.py`."""

import pytest
import torch

from proofs import assert_gradients_equal_autograd, random_batch, twins
from model_zoo.build import build_model
from model_zoo.config import ModelConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI and the dev machines have none)")

CONFIGS = {
    "gpt2": ModelConfig(vocab_size=96, d_model=32, n_heads=4, n_blocks=2, d_ffn=64, max_seq_len=32),
    "llama": ModelConfig(vocab_size=96, d_model=32, n_heads=4, n_blocks=2, d_ffn=64, max_seq_len=32,
                         architecture="llama", n_kv_heads=2),
}


@pytest.mark.parametrize("architecture", CONFIGS)
def test_float64_gradients_equal_autograd_on_cuda(architecture):
    torch_model, custom_model = twins(CONFIGS[architecture], torch.float64, device="cuda")
    idx, targets = (t.cuda() for t in random_batch(96, B=3, T=12))
    assert_gradients_equal_autograd(torch_model, custom_model, idx, targets)


@pytest.mark.parametrize("compile_model", [False, True])
@pytest.mark.parametrize("architecture", CONFIGS)
def test_bf16_training_steps_agree_and_learn(architecture, compile_model):
    """The runtime adapters on CUDA in bf16 (the same torch.autocast for both): the two
    types start from the same loss, and 40 steps on a learnable rule lower it for both."""
    from jobs.training.runtime import make_runtime

    config = CONFIGS[architecture]
    losses = {}
    for model_type in ("torch", "custom"):
        torch.manual_seed(0)
        model = build_model(config, model_type)
        runtime = make_runtime(model_type, model, "cuda", "bfloat16", compile_model and model_type == "torch")
        runtime.configure_optimizer(3e-3, 0.1, (0.9, 0.95))
        curve = []
        for step in range(40):
            window = torch.empty(8, 33, dtype=torch.long)  # (B, T + 1)
            window[:, 0] = torch.randint(0, 96, (8,), generator=torch.Generator().manual_seed(step))
            for t in range(1, 33):  # each token follows from the one before it
                window[:, t] = (3 * window[:, t - 1] + 1) % 96
            loss, grad_norm = runtime.train_step([window], 1.0)
            curve.append(loss)
        losses[model_type] = curve
        assert curve[-1] < curve[0] - 1.0, f"{model_type}: {curve[0]:.3f} -> {curve[-1]:.3f}"
        assert next(iter(runtime.model.state_dict().values())).dtype == torch.float32, "master weights stay fp32"
    assert losses["custom"][0] == pytest.approx(losses["torch"][0], rel=2e-2)


@pytest.mark.parametrize("model_type", ["torch", "custom"])
@pytest.mark.parametrize("architecture", CONFIGS)
def test_kv_cache_generation_equals_recomputation_on_cuda(architecture, model_type):
    from model_zoo.generation import generate_tokens

    torch.manual_seed(0)
    model = build_model(CONFIGS[architecture], model_type).to("cuda").eval()
    prompt = [5, 17, 3]
    cached = list(generate_tokens(model, prompt, max_new_tokens=20, temperature=0.0))
    recomputed = []
    with torch.no_grad():
        ids = list(prompt)
        for _ in range(20):
            logits, _ = model(torch.tensor([ids], device="cuda"))
            ids.append(int(logits[0, -1].argmax()))
            recomputed.append(ids[-1])
    assert cached == recomputed


@pytest.mark.parametrize("model_type", ["torch", "custom"])
def test_a_checkpoint_restores_onto_the_gpu(tmp_path, model_type):
    from jobs.checkpoint import CheckpointState, build_from_checkpoint, load_checkpoint, save_checkpoint

    config = CONFIGS["llama"]
    torch.manual_seed(0)
    model = build_model(config, model_type)
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    state = CheckpointState(step=1, model_type=model_type, model_config=config.to_dict())
    folder = save_checkpoint(tmp_path / "ckpt", model.state_dict(), {}, state, tokenizer)
    on_gpu = build_from_checkpoint(load_checkpoint(folder, with_optimizer=False), "cuda")
    idx, _ = random_batch(96, B=2, T=16)
    with torch.no_grad():
        expected, _ = model.eval()(idx)
        got, _ = on_gpu(idx.cuda())
    assert torch.allclose(got.cpu(), expected, atol=1e-4)
