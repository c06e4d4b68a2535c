"""The learning-rate schedule: warmup counted in optimizer steps, decay by steps or by the time budget."""

import pytest

from jobs.config import TrainingConfig
from jobs.training.schedule import decay_fraction, learning_rate


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_warmup_then_decay_to_the_minimum(decay):
    config = TrainingConfig(learning_rate=1e-3, min_learning_rate=1e-4, warmup_ratio=0.1, lr_decay=decay)
    total = 100
    lrs = [learning_rate(step, total, config) for step in range(1, total + 1)]
    assert lrs[0] == pytest.approx(1e-4)  # step 1 of a 10-step warmup
    assert lrs[9] == pytest.approx(1e-3)  # warmup done: the peak
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])), "monotone decay after warmup"
    assert lrs[-1] == pytest.approx(1e-4)  # ends at the minimum
    # halfway through the 90 decay steps, cosine and linear both give the mean
    assert learning_rate(55, total, config) == pytest.approx(5.5e-4)
    assert learning_rate(30, total, config) > 5.5e-4 > learning_rate(80, total, config)


def test_warmup_counts_steps_however_slow_they_are():
    """A busy machine makes the first steps slow; the warmup must still take its steps, not its seconds."""
    config = TrainingConfig(learning_rate=4e-3, min_learning_rate=3e-4, warmup_steps=50, max_time_minutes=12)
    budget = 720.0
    slow_start = learning_rate(10, 100_000, config, elapsed_seconds=60.0, budget_seconds=budget)
    quiet_start = learning_rate(10, 100_000, config, elapsed_seconds=3.0, budget_seconds=budget)
    assert slow_start == quiet_start == pytest.approx(4e-3 * 10 / 50)
    assert learning_rate(50, 100_000, config, elapsed_seconds=20.0, budget_seconds=budget) == pytest.approx(4e-3, rel=1e-2)


def test_warmup_steps_win_over_the_ratio_and_the_decay_follows_the_budget():
    config = TrainingConfig(learning_rate=2e-3, min_learning_rate=0.0, warmup_ratio=0.5, warmup_steps=4)
    assert learning_rate(2, 1000, config) == pytest.approx(1e-3)
    assert learning_rate(900, 100_000, config, elapsed_seconds=720, budget_seconds=720) == pytest.approx(0.0)
    assert decay_fraction(10, 1000, elapsed_seconds=30, budget_seconds=60) == 0.5, "time is further along than steps"
    assert decay_fraction(900, 1000, elapsed_seconds=30, budget_seconds=60) == 0.9
    assert decay_fraction(10, 1000) == 0.01


def test_constant():
    config = TrainingConfig(learning_rate=2e-3, min_learning_rate=0.0, warmup_ratio=0.0, lr_decay="constant")
    assert learning_rate(70, 100, config) == 2e-3
