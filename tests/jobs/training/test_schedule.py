"""The learning-rate schedule: warmup counted in optimizer steps, decay by steps or by the time budget; the
multiplier every group's peak follows (AdamW's and Muon's)."""

import pytest

from jobs.config import TrainingConfig
from jobs.training.schedule import decay_fraction, learning_rate, lr_scale


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


def test_warmup_stable_decay_holds_the_peak_then_cools_down_linearly_over_the_last_share():
    config = TrainingConfig(learning_rate=2e-3, min_learning_rate=2e-4, warmup_steps=10, lr_decay="wsd",
                            cooldown_ratio=0.2)
    lrs = [learning_rate(step, 100, config) for step in range(1, 101)]
    assert lrs[4] == pytest.approx(1e-3)  # warming up
    assert all(lr == pytest.approx(2e-3) for lr in lrs[9:80]), "stable at the peak until 80% of the run"
    assert learning_rate(90, 100, config) == pytest.approx(2e-4 + 0.5 * 1.8e-3)  # halfway down the cool-down
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:])) and lrs[-1] == pytest.approx(2e-4)
    # with a time budget the cool-down starts when 80% of the budget is spent, however few steps that was
    budgeted = TrainingConfig(learning_rate=2e-3, min_learning_rate=0.0, warmup_steps=10, lr_decay="wsd",
                              cooldown_ratio=0.25, max_time_minutes=10)
    assert learning_rate(200, 100_000, budgeted, elapsed_seconds=400, budget_seconds=600) == 2e-3
    assert learning_rate(300, 100_000, budgeted, elapsed_seconds=525, budget_seconds=600) == pytest.approx(1e-3)
    assert learning_rate(400, 100_000, budgeted, elapsed_seconds=600, budget_seconds=600) == pytest.approx(0.0)


def test_the_multiplier_is_the_learning_rate_over_its_peak():
    """Muon's peak follows AdamW's curve: lr_scale is AdamW's learning rate divided by its peak, at every step."""
    for decay in ("cosine", "linear", "constant", "wsd"):
        config = TrainingConfig(learning_rate=4e-3, min_learning_rate=4e-4, warmup_steps=5, lr_decay=decay)
        for step in (1, 5, 37, 90, 100):
            assert lr_scale(step, 100, config) == pytest.approx(learning_rate(step, 100, config) / 4e-3)
        assert lr_scale(100, 100, config) == pytest.approx(0.1 if decay != "constant" else 1.0)
