"""The learning-rate schedule and its progress measure."""

import pytest

from jobs.config import TrainingConfig
from jobs.training.schedule import learning_rate, progress


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_warmup_then_decay_to_the_minimum(decay):
    config = TrainingConfig(learning_rate=1e-3, min_learning_rate=1e-4, warmup_ratio=0.1, lr_decay=decay)
    total = 100
    lrs = [learning_rate(progress(step + 1, total), config) for step in range(total)]
    assert lrs[0] == pytest.approx(1e-4)  # 1/10 of the way through a 10-step warmup
    assert lrs[9] == pytest.approx(1e-3)  # warmup done: the peak
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])), "monotone decay after warmup"
    assert lrs[-1] == pytest.approx(1e-4)  # ends at the minimum
    # halfway through the decay (progress 0.55 with 0.1 warmup), cosine and linear both give the mean
    assert learning_rate(0.55, config) == pytest.approx(5.5e-4)
    assert learning_rate(0.3, config) > 5.5e-4 > learning_rate(0.8, config)


def test_constant_and_time_budget():
    config = TrainingConfig(learning_rate=2e-3, min_learning_rate=0.0, warmup_ratio=0.0, lr_decay="constant")
    assert learning_rate(0.7, config) == 2e-3
    assert progress(10, 1000, elapsed_seconds=30, budget_seconds=60) == 0.5, "time is further along than steps"
    assert progress(900, 1000, elapsed_seconds=30, budget_seconds=60) == 0.9
    assert progress(10, 1000) == 0.01
