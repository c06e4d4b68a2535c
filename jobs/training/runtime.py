"""How the jobs train and score a model of either type: one protocol, two small adapters.

The two model types differ in how a training step gets its gradients and in what their optimizers look like:
autograd (`loss.backward()`, torch.optim's AdamW and Muon, DDP) for the torch twins, the hand-written
`model.backward()`, AdamW and Muon for the custom ones. `ModelRuntime` holds what both share (the step over micro-batches, the
validation loss); `TorchRuntime` and `CustomRuntime` fill in the rest. `make_runtime` picks one.
"""

from __future__ import annotations

import contextlib
import math

import torch

from jobs.data.windows import Batch
from jobs.training.distributed import Distributed, average_gradients
from jobs.training.objectives import NextTokenLoss
from model_zoo.optimizer import MuonSettings, Optimizers, clip_grad_norm, configure_optimizer, set_lr_scale


class ModelRuntime:
    """A model on its device with its optimizer; what the train job, evaluation and the benchmarks call."""

    def __init__(self, model, device: str, bf16: bool = False, distributed: Distributed = Distributed(),
                 objective=None):
        # bf16: mixed precision, the same torch.autocast for both model types. Weights stay fp32; matmuls run in
        # bf16; softmax, normalisation and the loss stay in fp32.
        self.model, self.device, self.bf16, self.distributed = model, device, bf16, distributed
        self.objective = objective or NextTokenLoss()  # what a step minimises (jobs/training/objectives.py)
        self.config = model.config
        self.optimizer = None

    def configure_optimizer(self, learning_rate: float, weight_decay: float, betas: tuple[float, float],
                            muon: MuonSettings | None = None) -> None:
        """AdamW for every parameter, or (muon) Muon for the blocks' matrices and AdamW for the rest."""
        self.optimizer = configure_optimizer(self.model, learning_rate, weight_decay, betas, muon=muon)

    def set_lr_scale(self, scale: float) -> None:
        """The schedule's multiplier of every group's peak learning rate (AdamW's and Muon's alike)."""
        set_lr_scale(self.optimizer, scale)

    def train_step(self, batches: list[Batch], max_grad_norm: float | None) -> tuple[float, float]:
        """One optimizer step over micro-batches; returns (mean loss, grad norm before clipping).

        Each micro-batch's loss is scaled (loss_scales), so the accumulated gradient is that of the mean loss over
        all of them, as if they had been one big batch. With several ranks, gradients are averaged over ranks
        once, after the last micro-batch.
        """
        self.model.train()
        scales = self.loss_scales(batches)
        total_loss = 0.0
        for i, (batch, scale) in enumerate(zip(batches, scales)):
            loss = self.forward_backward(batch.to(self.device), scale, last=i == len(batches) - 1)
            total_loss += loss * scale
        grad_norm = self.clip_gradients(max_grad_norm if max_grad_norm is not None else math.inf)
        self.optimizer.step()
        self.zero_grad()
        return total_loss, grad_norm

    def loss_scales(self, batches: list[Batch]) -> list[float]:
        """What each micro-batch's mean loss is multiplied by, so that the step's gradient is that of the mean over
        every scored token of the global batch (all micro-batches, all ranks): a micro-batch weighs its count of
        scored tokens over the global count (one all-reduce adds up the ranks' counts), times world_size, because
        the ranks' gradients are then averaged. Text scores every token, so this is 1/k for k micro-batches; a
        conversation scores only the assistant's tokens, a different number in each."""
        counts = [self.objective.weight(batch) for batch in batches]
        (total,) = self.distributed.sum(float(sum(counts)))
        return [count * self.distributed.world_size / max(total, 1.0) for count in counts]

    @torch.no_grad()
    def loss(self, batch: Batch) -> float:
        """The objective's loss of one batch (next-token: mean nats over its scored tokens), in eval mode."""
        self.model.eval()
        with self.autocast():
            return float(self.objective.loss(self.model, batch.to(self.device)))

    def autocast(self):
        """bf16 matmuls from fp32 weights when bf16 is on, for both model types (the hand-written backward's
        products too: autocast casts any `@`, autograd or not)."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)

    # --- what each model type does its own way -----------------------------------------------------------

    def forward_backward(self, batch: Batch, scale: float, last: bool) -> float:
        """Add the gradient of scale * the objective's loss of batch to the parameters' gradients; return the loss."""
        raise NotImplementedError

    def clip_gradients(self, max_norm: float) -> float:
        raise NotImplementedError

    def zero_grad(self) -> None:
        raise NotImplementedError

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, json-able scalars) of the optimizer, so it saves without pickle."""
        raise NotImplementedError

    def load_optimizer_state(self, tensors: dict[str, torch.Tensor], scalars: dict) -> None:
        raise NotImplementedError


class TorchRuntime(ModelRuntime):
    """The nn.Module twins: autograd, torch.optim.AdamW, DDP across ranks, optionally torch.compile."""

    def __init__(self, model, device: str, bf16: bool = False, distributed: Distributed = Distributed(),
                 compile_model: bool = False, objective=None):
        super().__init__(model.to(device), device, bf16, distributed, objective)
        self.forward_model = self.model  # what the training step calls: maybe wrapped in DDP and compiled
        if distributed.enabled:  # DDP all-reduces gradients during backward, bucket by bucket
            from torch.nn.parallel import DistributedDataParallel

            self.forward_model = DistributedDataParallel(self.model)
        if compile_model:
            self.forward_model = torch.compile(self.forward_model)

    def forward_backward(self, batch, scale, last):
        # DDP would all-reduce after every micro-batch; no_sync skips all but the last one's
        skip_sync = self.distributed.enabled and not last
        with self.forward_model.no_sync() if skip_sync else contextlib.nullcontext():
            with self.autocast():
                loss = self.objective.loss(self.forward_model, batch)
            (loss * scale).backward()
        return loss.item()

    def clip_gradients(self, max_norm):
        return float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))

    def zero_grad(self):
        self.optimizer.zero_grad(set_to_none=True)

    def torch_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """torch's optimizers by the prefix their state is saved under: AdamW's unprefixed, Muon's "muon."."""
        if isinstance(self.optimizer, Optimizers):
            return {"": self.optimizer.adamw, "muon.": self.optimizer.muon}
        return {"": self.optimizer}

    def optimizer_state(self):
        tensors, scalars = {}, {}
        for prefix, optimizer in self.torch_optimizers().items():
            state = optimizer.state_dict()  # {"state": {index: {key: tensor}}, "param_groups": [...]}
            tensors |= {f"{prefix}{index}.{key}": value for index, per_param in state["state"].items()
                        for key, value in per_param.items()}
            scalars[f"{prefix}param_groups"] = state["param_groups"]
        return tensors, scalars

    def load_optimizer_state(self, tensors, scalars):
        for prefix, optimizer in self.torch_optimizers().items():
            per_param: dict[int, dict[str, torch.Tensor]] = {}
            for name, value in tensors.items():
                if ("muon." if name.startswith("muon.") else "") != prefix:
                    continue  # the other optimizer's
                index, key = name.removeprefix(prefix).split(".", 1)
                per_param.setdefault(int(index), {})[key] = value.to(self.device) if key != "step" else value
            configured = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
            optimizer.load_state_dict({"state": per_param, "param_groups": scalars[f"{prefix}param_groups"]})
            for group, settings in zip(optimizer.param_groups, configured):  # the moments come from the checkpoint,
                group.update(settings)  # the settings (peak learning rates, decay) from this session's config


class CustomRuntime(ModelRuntime):
    """The hand-written models: model.backward(), their own AdamW; gradients averaged over ranks by hand."""

    def __init__(self, model, device: str, bf16: bool = False, distributed: Distributed = Distributed(),
                 objective=None):
        super().__init__(model.to(device=device), device, bf16, distributed, objective)

    def forward_backward(self, batch, scale, last):
        with self.autocast():
            loss = self.objective.forward_backward_by_hand(self.model, batch, scale)
        if last and self.distributed.enabled:
            average_gradients(self.model.named_parameters(), self.distributed.world_size)
        return loss.item()

    def clip_gradients(self, max_norm):
        return clip_grad_norm(list(self.model.named_parameters()), max_norm)

    def zero_grad(self):
        self.model.zero_grad()

    def optimizer_state(self):
        return self.optimizer.state_dict(), {}  # already tensors only: m.<name>, v.<name>, step_count (muon_momentum.)

    def load_optimizer_state(self, tensors, scalars):
        self.optimizer.load_state_dict({k: v.to(self.device) for k, v in tensors.items()})


def make_runtime(model_type: str, model, device: str, dtype: str = "float32", compile_model: bool = False,
                 distributed: Distributed = Distributed(), objective=None) -> ModelRuntime:
    """The adapter for a model of model_type ("torch" or "custom"), moved to device; objective: what a step
    minimises (jobs/training/objectives.py; the next-token loss by default)."""
    bf16 = dtype == "bfloat16"
    if model_type == "torch":
        return TorchRuntime(model, device, bf16, distributed, compile_model, objective)
    return CustomRuntime(model, device, bf16, distributed, objective)
