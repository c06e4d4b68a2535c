"""What the runtime does with the optimizer: the schedule's multiplier on each group's peak, and a saved state
loaded back (AdamW alone, and AdamW + Muon), for both model types. The optimizers' own proofs are in
tests/model_zoo/test_optimizer.py."""

import copy
import math

import torch

from proofs import twins
from jobs.data.windows import Batch
from jobs.training.runtime import make_runtime
from model_zoo.config import ModelConfig
from model_zoo.optimizer import MuonSettings

LLAMA = ModelConfig(architecture="llama", vocab_size=64, max_seq_len=16, d_model=32, n_heads=4, n_kv_heads=2,
                    n_blocks=2, d_ffn=80)
SETTINGS = MuonSettings(learning_rate=0.03, weight_decay=0.05, momentum=0.9)


def test_the_schedule_scales_every_groups_peak_and_a_resume_keeps_this_sessions_settings():
    """set_lr_scale multiplies each group's own peak (AdamW's and Muon's differ); loading a saved state brings
    back the moments, while the peaks and decay stay those configured now (a resume that changes the learning
    rate gets the new one)."""
    _, custom = twins(LLAMA, dtype=torch.float32)
    torch_model, _ = twins(LLAMA, dtype=torch.float32)
    for model_type, model in (("torch", torch_model), ("custom", custom)):
        runtime = make_runtime(model_type, model, "cpu")
        runtime.configure_optimizer(2e-3, 0.1, (0.9, 0.95), SETTINGS)
        runtime.set_lr_scale(0.5)
        assert sorted({g["lr"] for g in runtime.optimizer.param_groups}) == [1e-3, SETTINGS.learning_rate / 2]
        tokens = torch.randint(0, 64, (2, 13), generator=torch.Generator().manual_seed(0))
        runtime.train_step([Batch(tokens, torch.ones_like(tokens, dtype=torch.bool))], 1.0)
        tensors, scalars = runtime.optimizer_state()
        assert any(k.startswith("muon") for k in tensors), f"{model_type}: Muon's momentum is saved"
        again = make_runtime(model_type, copy.deepcopy(model), "cpu")
        again.configure_optimizer(4e-3, 0.1, (0.9, 0.95), MuonSettings(learning_rate=0.01))
        again.load_optimizer_state(tensors, scalars)
        saved, loaded = again.optimizer_state()[0], tensors
        assert saved.keys() == loaded.keys()
        assert all(torch.equal(saved[k], loaded[k]) for k in saved)
        assert sorted({g["peak_lr"] for g in again.optimizer.param_groups}) == [4e-3, 0.01]
        assert math.isclose(next(g for g in again.optimizer.param_groups if g["peak_lr"] == 0.01)["weight_decay"],
                            0.0)
