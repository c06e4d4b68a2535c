"""One interface over both model types for the jobs: build, train step, evaluate, save and restore.

The two models differ in exactly one place, the training step: autograd (`loss.backward()`) for the torch
twin, the hand-written `model.backward()` for the custom one. Everything else in the jobs is shared.
"""

from __future__ import annotations

import contextlib
import math

import torch

from jobs.training.distributed import Distributed, average_gradients
from model_zoo.config import ConfigError, ModelConfig
from model_zoo.build import build_model
from model_zoo.custom_transformer import clip_grad_norm


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device is 'cuda' but no CUDA device is available")
    return device


class ModelRuntime:
    def __init__(self, model_type: str, config: ModelConfig, device: str = "cpu", dtype: str = "float32",
                 compile_model: bool = False, distributed: Distributed = Distributed()):
        self.model_type, self.config, self.device, self.distributed = model_type, config, device, distributed
        # bf16: mixed precision. Weights stay fp32; matmuls run in bf16 (autocast for the twin, compute_dtype
        # for the custom model); softmax, LayerNorm and the loss stay in fp32.
        self.bf16 = dtype == "bfloat16"
        model = build_model(config, model_type)
        if model_type == "torch":
            self.model = model.to(device)
            self.forward_model = self.model
            if distributed.enabled:  # DDP all-reduces gradients during backward, bucket by bucket
                from torch.nn.parallel import DistributedDataParallel

                self.forward_model = DistributedDataParallel(self.model)
            if compile_model:
                self.forward_model = torch.compile(self.forward_model)
        else:
            self.model = model.to(device=device, compute_dtype=torch.bfloat16 if self.bf16 else None)
            self.forward_model = self.model
        self.optimizer = None

    # --- training ---------------------------------------------------------------------------------------

    def configure_optimizer(self, learning_rate: float, weight_decay: float, betas: tuple[float, float]) -> None:
        self.optimizer = self.model.configure_optimizer(learning_rate, weight_decay, betas)

    def set_learning_rate(self, lr: float) -> None:
        if self.model_type == "torch":
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        else:
            self.optimizer.lr = lr

    def autocast(self):
        if self.model_type == "torch" and self.bf16:
            return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, windows: list[torch.Tensor], max_grad_norm: float | None) -> tuple[float, float]:
        """One optimizer step over micro-batches of (B, T+1) windows; returns (mean loss, grad norm).

        Each micro-batch's loss is scaled by 1 / len(windows), so the accumulated gradient is that of the
        mean loss over all of them, as if they had been one big batch. With several ranks, gradients are
        averaged over ranks once, after the last micro-batch (DDP's no_sync skips the earlier all-reduces).
        """
        self.model.train()
        scale = 1.0 / len(windows)
        total_loss = 0.0
        for i, window in enumerate(windows):
            window = window.to(self.device, non_blocking=True)
            idx, targets = window[:, :-1], window[:, 1:]
            if self.model_type == "torch":
                last = i == len(windows) - 1
                sync = contextlib.nullcontext() if last or not self.distributed.enabled else self.forward_model.no_sync()
                with sync:
                    with self.autocast():
                        _, loss = self.forward_model(idx, targets)
                    (loss * scale).backward()
            else:
                _, loss = self.model.forward(idx, targets)
                self.model.backward(loss_scale=scale)
            total_loss += loss.item() * scale
        if self.model_type == "custom" and self.distributed.enabled:
            average_gradients(self.model.named_parameters(), self.distributed.world_size)
        grad_norm = self._clip(max_grad_norm)
        self.optimizer.step()
        self._zero_grad()
        return total_loss, grad_norm

    def _clip(self, max_grad_norm: float | None) -> float:
        limit = max_grad_norm if max_grad_norm is not None else math.inf
        if self.model_type == "torch":
            return float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), limit))
        return clip_grad_norm(list(self.model.named_parameters()), limit)

    def _zero_grad(self) -> None:
        if self.model_type == "torch":
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.model.zero_grad()

    # --- evaluation ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def loss(self, window: torch.Tensor) -> float:
        """Mean next-token loss (nats) of one (B, T+1) batch, in eval mode."""
        self.model.eval()
        window = window.to(self.device)
        with self.autocast():
            _, loss = self.forward_model(window[:, :-1], window[:, 1:])
        return float(loss)

    # --- state ----------------------------------------------------------------------------------------------

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, json-able scalars) of the optimizer, so it saves without pickle."""
        if self.model_type == "custom":
            return self.optimizer.state_dict(), {}
        state = self.optimizer.state_dict()
        tensors = {f"{index}.{key}": value for index, per_param in state["state"].items()
                   for key, value in per_param.items()}
        return tensors, {"param_groups": state["param_groups"]}

    def load_optimizer_state(self, tensors: dict[str, torch.Tensor], scalars: dict) -> None:
        if self.model_type == "custom":
            self.optimizer.load_state_dict({k: v.to(self.device) for k, v in tensors.items()})
            return
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            index, key = name.split(".", 1)
            per_param.setdefault(int(index), {})[key] = value.to(self.device) if key != "step" else value
        self.optimizer.load_state_dict({"state": per_param, "param_groups": scalars["param_groups"]})
