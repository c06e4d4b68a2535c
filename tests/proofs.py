"""Proofs shared by the two architectures' model tests (test_models.py, test_llama.py, and the chat and CUDA
tests): the hand-written backward against autograd and finite differences, training parity under AdamW, and the
FLOPs formula against torch's counter. Fixtures live in conftest.py; these are plain functions that assert."""

import torch


def twins(config, dtype=torch.float64, seed: int = 0, device: str = "cpu"):
    """The torch and the custom model of config.architecture, holding the same (seeded) weights."""
    from model_zoo.build import build_model

    torch.manual_seed(seed)
    torch_model = build_model(config, "torch").to(device=device, dtype=dtype)
    custom_model = build_model(config, "custom").to(device=device, dtype=dtype)
    custom_model.load_state_dict(torch_model.state_dict())
    return torch_model, custom_model


def random_batch(vocab_size: int, B: int = 3, T: int = 12, seed: int = 1):
    """(idx, targets), int64 (B, T), from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, vocab_size, (B, T), generator=g), torch.randint(0, vocab_size, (B, T), generator=g))


def assert_gradients_match_finite_differences(model, idx, targets, samples: int = 3, eps: float = 1e-6) -> None:
    """Three random entries of every parameter: (L(w + eps) - L(w - eps)) / 2 eps equals the hand-written
    gradient (float64 model)."""
    model.forward(idx, targets)
    grads = {k: v.clone() for k, v in model.backward().items()}
    g = torch.Generator().manual_seed(2)
    for name, param in model.named_parameters():
        flat = param.data.view(-1)
        for i in torch.randint(0, flat.numel(), (samples,), generator=g).tolist():
            original = flat[i].item()
            flat[i] = original + eps
            loss_plus = model.forward(idx, targets)[1].item()
            flat[i] = original - eps
            loss_minus = model.forward(idx, targets)[1].item()
            flat[i] = original
            numeric = (loss_plus - loss_minus) / (2 * eps)
            analytic = grads[name].view(-1)[i].item()
            assert abs(numeric - analytic) <= 1e-7 + 1e-5 * abs(analytic), f"{name}[{i}]: {numeric} vs {analytic}"


def assert_same_adamw_training(torch_model, custom_model, vocab_size: int, T: int, steps: int = 20) -> list[float]:
    """Each model with its own AdamW and clipping on the same batches: the same losses and gradient norms, step
    for step (float32, to 1e-4). Returns the loss curve."""
    from model_zoo.optimizer import clip_grad_norm, configure_optimizer

    torch_opt = configure_optimizer(torch_model, learning_rate=3e-3, weight_decay=0.1)
    custom_opt = configure_optimizer(custom_model, learning_rate=3e-3, weight_decay=0.1)
    custom_params = list(custom_model.named_parameters())
    losses = []
    for step in range(steps):
        idx, _ = random_batch(vocab_size, B=4, T=T, seed=100 + step)
        targets = (3 * idx + 1) % vocab_size  # a learnable rule, so the loss must fall
        _, torch_loss = torch_model(idx, targets)
        torch_opt.zero_grad()
        torch_loss.backward()
        torch_norm = torch.nn.utils.clip_grad_norm_(torch_model.parameters(), 1.0)
        torch_opt.step()

        _, custom_loss = custom_model(idx, targets)
        custom_model.zero_grad()
        custom_model.backward()
        custom_norm = clip_grad_norm(custom_params, 1.0)
        custom_opt.step()

        rel = abs(torch_loss.item() - custom_loss.item()) / abs(torch_loss.item())
        assert rel <= 1e-4, f"step {step}: torch {torch_loss.item():.6f} custom {custom_loss.item():.6f}"
        assert abs(torch_norm.item() - custom_norm) <= 1e-4 * torch_norm.item()
        losses.append(torch_loss.item())
    return losses


def assert_flops_formula_counts(custom_model, torch_model, config, idx, targets) -> None:
    """The FLOPs formula equals what torch.utils.flop_counter counts: all of the custom model's matmuls (attention
    spelled out as matmuls, training and inference); for the twin, whose fused SDPA kernel the counter does not
    see on CPU, the 6N part alone."""
    from torch.utils.flop_counter import FlopCounterMode

    from model_zoo.config import count_matmul_parameters, flops_per_token

    with FlopCounterMode(display=False) as counter:
        custom_model(idx, targets)
        custom_model.backward()
    assert counter.get_total_flops() == flops_per_token(config) * idx.numel()
    with FlopCounterMode(display=False) as counter:
        custom_model(idx)
    assert counter.get_total_flops() == flops_per_token(config, training=False) * idx.numel()
    with FlopCounterMode(display=False) as counter:
        _, loss = torch_model(idx, targets)
        loss.backward()
    assert counter.get_total_flops() == 6 * count_matmul_parameters(config) * idx.numel()


def assert_gradients_equal_autograd(torch_model, custom_model, idx, targets) -> None:
    """float64 twins holding the same weights: the same logits and loss (1e-12), and every hand-written gradient
    equal to autograd's to a relative 1e-8, for every state_dict key."""
    torch_logits, torch_loss = torch_model(idx, targets)
    custom_logits, custom_loss = custom_model(idx, targets)
    assert torch.allclose(torch_logits, custom_logits, rtol=0, atol=1e-12)
    assert abs(torch_loss.item() - custom_loss.item()) < 1e-12
    torch_loss.backward()
    custom_grads = custom_model.backward()
    assert set(custom_grads) == set(custom_model.state_dict())
    for name, param in torch_model.named_parameters():
        rel = (custom_grads[name] - param.grad).abs().max() / param.grad.abs().max()
        assert rel <= 1e-8, f"{name}: max relative error {rel:.2e}"
