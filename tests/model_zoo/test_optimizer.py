"""The hand-written Muon against PyTorch's own torch.optim.Muon, and the optimizer split (which parameters get
Muon, which keep AdamW). The checkpoint and resume of Muon's state are in tests/scenarios/test_jobs.py, two gloo
ranks in tests/jobs/training/test_distributed.py."""

import copy

import pytest
import torch

from proofs import random_batch, twins
from model_zoo.config import ModelConfig
from model_zoo.optimizer import (AdamW, Muon, MuonSettings, Optimizers, configure_optimizer, is_muon_matrix,
                                 muon_groups, orthogonalize, set_lr_scale)

ARCHITECTURES = {
    "gpt2": ModelConfig(vocab_size=64, max_seq_len=16, d_model=32, n_heads=4, n_blocks=2, d_ffn=96),
    "llama": ModelConfig(architecture="llama", vocab_size=64, max_seq_len=16, d_model=32, n_heads=4, n_kv_heads=2,
                         n_blocks=2, d_ffn=80),
}
SETTINGS = MuonSettings(learning_rate=0.03, weight_decay=0.05, momentum=0.9, nesterov=True, ns_steps=5)


def learnable_batch(vocab_size: int, step: int):
    idx, _ = random_batch(vocab_size, B=4, T=12, seed=100 + step)
    return idx, (3 * idx + 1) % vocab_size  # a learnable rule, so the loss must fall


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_hand_written_muon_steps_as_torch_optim_muon_on_the_same_gradients(architecture):
    """Two float64 copies of a twin, each its own optimizer on the same batches: ours (AdamW + Muon written out)
    and torch's (torch.optim.AdamW + torch.optim.Muon). Every weight equal to 1e-6 after each of 20 steps, with
    the schedule changing the learning rate on the way."""
    config = ARCHITECTURES[architecture]
    theirs, _ = twins(config, dtype=torch.float64)
    ours = copy.deepcopy(theirs)
    torch_optimizer = configure_optimizer(theirs, 3e-3, 0.1, muon=SETTINGS)
    assert isinstance(torch_optimizer.muon, torch.optim.Muon) and isinstance(torch_optimizer.adamw, torch.optim.AdamW)
    adamw_groups, matrix_groups = muon_groups(ours.named_parameters(), 0.1, SETTINGS)
    for group in adamw_groups:
        group["lr"] = group["peak_lr"] = 3e-3
    for group in matrix_groups:
        group["lr"] = group["peak_lr"] = SETTINGS.learning_rate
    our_optimizer = Optimizers(AdamW(adamw_groups), Muon(matrix_groups, SETTINGS.momentum, SETTINGS.nesterov,
                                                         SETTINGS.ns_steps))
    losses = []
    for step in range(20):
        idx, targets = learnable_batch(config.vocab_size, step)
        for model, optimizer in ((theirs, torch_optimizer), (ours, our_optimizer)):
            set_lr_scale(optimizer, 1.0 - step / 40)
            model.zero_grad(set_to_none=True)
            _, loss = model(idx, targets)
            loss.backward()
            optimizer.step()
        losses.append(loss.item())
        for (name, theirs_p), our_p in zip(theirs.named_parameters(), ours.parameters()):
            error = (theirs_p - our_p).abs().max().item()
            assert error <= 1e-6, f"step {step + 1}, {name}: ours and torch.optim.Muon differ by {error:.2e}"
    assert losses[-1] < losses[0] - 0.5, f"20 Muon steps should lower the loss: {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_the_custom_model_with_its_muon_trains_as_the_twin_with_torchs(architecture):
    """The whole path each model type trains by, float64: the custom model (hand-written backward, AdamW, Muon
    and clipping) and the twin (autograd, torch.optim.AdamW + torch.optim.Muon, torch's clipping), 20 steps on
    the same batches: the same losses to 1e-3 relative. Much looser than the test above, on purpose: the two
    backwards agree to about 1e-11, but Newton-Schulz runs in bfloat16 (in torch's Muon too), so sooner or later
    one entry of an update rounds to the neighbouring bfloat16 value, and from there the weights drift apart
    (measured: weights equal to 1e-10 for 2-4 steps, then 3e-4..5e-5 apart, 1e-2 by step 20; losses within
    5e-4). The optimizer's own equality is the test above; the gradients' is test_models/test_llama's."""
    from model_zoo.optimizer import clip_grad_norm

    config = ARCHITECTURES[architecture]
    torch_model, custom_model = twins(config, dtype=torch.float64)
    torch_optimizer = configure_optimizer(torch_model, 3e-3, 0.1, muon=SETTINGS)
    custom_optimizer = configure_optimizer(custom_model, 3e-3, 0.1, muon=SETTINGS)
    assert isinstance(custom_optimizer.muon, Muon) and isinstance(custom_optimizer.adamw, AdamW)
    custom_params, losses = list(custom_model.named_parameters()), []
    for step in range(20):
        idx, targets = learnable_batch(config.vocab_size, step)
        torch_optimizer.zero_grad()
        _, torch_loss = torch_model(idx, targets)
        torch_loss.backward()
        torch.nn.utils.clip_grad_norm_(torch_model.parameters(), 1.0)
        torch_optimizer.step()
        _, custom_loss = custom_model(idx, targets)
        custom_model.zero_grad()
        custom_model.backward()
        clip_grad_norm(custom_params, 1.0)
        custom_optimizer.step()
        assert custom_loss.item() == pytest.approx(torch_loss.item(), rel=1e-3), f"step {step + 1}"
        losses.append(custom_loss.item())
    assert losses[-1] < losses[0] - 0.5, f"20 Muon steps should lower the loss: {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_muon_takes_the_blocks_matrices_and_adamw_keeps_the_rest():
    """Muon: every 2-D weight inside a block. AdamW: the embeddings (decayed) and every vector (not decayed)."""
    for config in ARCHITECTURES.values():
        _, custom = twins(config)
        adamw_groups, (matrices,) = muon_groups(custom.named_parameters(), 0.1, SETTINGS)
        muon_names = {name for name, _ in matrices["params"]}
        assert muon_names and all(name.startswith("blocks.") and p.data.dim() == 2 for name, p in matrices["params"])
        decayed, not_decayed = adamw_groups
        assert {n for n, _ in decayed["params"]} == {n for n, _ in custom.named_parameters()
                                                       if "embedding" in n}
        assert all(p.data.dim() == 1 for _, p in not_decayed["params"]) and not_decayed["weight_decay"] == 0.0
        assert matrices["weight_decay"] == SETTINGS.weight_decay
        every = {n for g in adamw_groups + [matrices] for n, _ in g["params"]}
        assert every == {n for n, _ in custom.named_parameters()}, "every parameter has exactly one optimizer"
    assert not is_muon_matrix("blocks.0.ln1.weight", torch.zeros(4))
    assert not is_muon_matrix("model.embed_tokens.weight", torch.zeros(4, 4))
    assert not is_muon_matrix("lm_head.weight", torch.zeros(4, 4))
    assert is_muon_matrix("model.layers.0.mlp.up_proj.weight", torch.zeros(4, 4))  # transformers' names too


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32)])
def test_newton_schulz_brings_every_singular_value_near_one(shape):
    """orthogonalize(G) has G's singular vectors and singular values in about [0.5, 1.5] (Jordan's
    coefficients trade exactness for speed), whatever G's scale and however unequal its singular values."""
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0], generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1], generator=g, dtype=torch.float64))
    k = min(shape)
    spread = torch.logspace(0, -2, k, dtype=torch.float64) * 50.0  # singular values from 50 down to 0.5
    matrix = u[:, :k] @ torch.diag(spread) @ v[:, :k].T
    result = orthogonalize(matrix).double()
    assert result.shape == matrix.shape
    singular = torch.linalg.svdvals(result)
    assert singular.min() > 0.5 and singular.max() < 1.5, singular
    # the directions are G's: U^T O V is about diagonal
    rotated = u[:, :k].T @ result @ v[:, :k]
    off_diagonal = rotated - torch.diag(torch.diagonal(rotated))
    assert off_diagonal.abs().max() < 0.05 * torch.diagonal(rotated).abs().min()
