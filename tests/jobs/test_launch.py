"""jobs/launch.py: torchrun unchanged, except that a forwarded signal ends it with 128+N, not 1 and a traceback."""

import signal

import pytest
from torch.distributed.elastic.multiprocessing.api import SignalException

import jobs.launch


def test_a_signal_torchrun_forwarded_becomes_128_plus_its_number(monkeypatch, capsys):
    def stopped():
        raise SignalException("Process got signal: 15", sigval=signal.SIGTERM)

    monkeypatch.setattr(jobs.launch, "main", stopped)
    with pytest.raises(SystemExit) as exit_info:
        jobs.launch.launch()
    assert exit_info.value.code == 128 + 15
    assert "stopped by SIGTERM" in capsys.readouterr().err


def test_anything_else_torchrun_raises_is_left_alone(monkeypatch):
    def failed():
        raise RuntimeError("a worker failed")

    monkeypatch.setattr(jobs.launch, "main", failed)
    with pytest.raises(RuntimeError, match="a worker failed"):
        jobs.launch.launch()
