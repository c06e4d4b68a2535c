"""DPO's loss (model_zoo/preference_loss.py): the hand-written backward equals autograd's and central finite
differences in float64, on the loss alone and through both custom architectures (their gradients equal the torch
twins' trained with the autograd loss)."""

import pytest
import torch

from model_zoo.config import ModelConfig
from model_zoo.custom_layers import IGNORE_INDEX
from model_zoo.preference_loss import DPOLoss, dpo_loss
from proofs import twins

CONFIGS = {
    "gpt2": ModelConfig(vocab_size=40, d_model=16, n_heads=2, n_blocks=2, d_ffn=32, max_seq_len=16),
    "llama": ModelConfig(architecture="llama", vocab_size=40, d_model=16, n_heads=4, n_kv_heads=2, n_blocks=2,
                         d_ffn=24, max_seq_len=16),
}


def pairs(vocab_size: int, P: int = 3, T: int = 10, seed: int = 0):
    """(idx, targets, reference) for P pairs: a shared prompt of 4 tokens, replies of different lengths (the
    targets of the prompt and of the padding after a reply are IGNORE_INDEX), reference log-prob sums."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (2 * P, T + 1), generator=g)
    tokens[1::2, :4] = tokens[0::2, :4]  # each pair shares its prompt
    targets = tokens[:, 1:].clone()
    targets[:, :3] = IGNORE_INDEX  # the prompt's own next tokens are not scored
    for row in range(2 * P):
        targets[row, 4 + row:] = IGNORE_INDEX  # replies of 6, 5, 4, ... tokens
    reference = -torch.rand(2 * P, generator=g, dtype=torch.float64) * 20
    return tokens[:, :-1], targets, reference


@pytest.mark.parametrize("sft", [0.0, 0.5])
def test_the_loss_backward_equals_autograd_and_finite_differences(sft):
    _, targets, reference = pairs(vocab_size=40)
    logits = torch.randn(*targets.shape, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    by_hand = DPOLoss(beta=0.5, sft=sft)
    loss = by_hand.forward(logits, targets, reference)
    d_logits = by_hand.backward()
    leaf = logits.clone().requires_grad_(True)
    autograd_loss, *_ = dpo_loss(leaf, targets, reference, beta=0.5, sft=sft)
    autograd_loss.backward()
    assert torch.allclose(loss, autograd_loss) and torch.allclose(d_logits, leaf.grad, atol=1e-12)
    assert d_logits[targets == IGNORE_INDEX].abs().max() == 0, "unscored positions get no gradient"
    g, eps = torch.Generator().manual_seed(4), 1e-6
    for _ in range(20):
        i = tuple(int(torch.randint(0, n, (1,), generator=g)) for n in logits.shape)
        plus, minus = logits.clone(), logits.clone()
        plus[i] += eps
        minus[i] -= eps
        numeric = (DPOLoss(0.5, sft).forward(plus, targets, reference) -
                   DPOLoss(0.5, sft).forward(minus, targets, reference)) / (2 * eps)
        assert abs(float(numeric) - float(d_logits[i])) <= 1e-8 + 1e-6 * abs(float(d_logits[i]))


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_the_custom_models_gradients_equal_their_twins_under_the_dpo_loss(architecture):
    config = CONFIGS[architecture]
    torch_model, custom_model = twins(config)
    idx, targets, reference = pairs(config.vocab_size)
    loss_by_hand = DPOLoss(beta=0.1, sft=0.2)
    logits, _ = custom_model.forward(idx)
    loss = loss_by_hand.forward(logits, targets, reference)
    custom_model.backward_from_logits(loss_by_hand.backward(loss_scale=0.5))
    torch_logits, _ = torch_model(idx)
    torch_loss, *_ = dpo_loss(torch_logits, targets, reference, beta=0.1, sft=0.2)
    (0.5 * torch_loss).backward()
    assert torch.allclose(loss, torch_loss)
    torch_grads = dict(torch_model.named_parameters())
    for name, param in custom_model.named_parameters():
        assert torch.allclose(param.grad, torch_grads[name].grad, atol=1e-10), name


def test_the_loss_prefers_the_chosen_reply():
    """With the reference equal to the policy the loss is log 2 (h = 0); raising the chosen reply's logits lowers it."""
    _, targets, _ = pairs(vocab_size=40, P=1)
    logits = torch.zeros(*targets.shape, 40, dtype=torch.float64)
    # uniform logits: each scored token has log-probability log(1/40)
    reference = -torch.log(torch.tensor(40.0, dtype=torch.float64)) * (targets != IGNORE_INDEX).sum(-1)
    loss, rewards, _ = dpo_loss(logits, targets, reference, beta=1.0)
    assert torch.allclose(loss, torch.log(torch.tensor(2.0, dtype=torch.float64)))
    assert rewards.tolist() == pytest.approx([0, 0])
    logits[0].scatter_(-1, targets[0].clamp_min(0).unsqueeze(-1), 2.0)  # the chosen reply's tokens likelier
    assert dpo_loss(logits, targets, reference, beta=1.0)[0] < loss
