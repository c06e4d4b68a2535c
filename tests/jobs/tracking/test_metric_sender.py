"""The metric sender and its journal (jobs/tracking/metrics.py: RunLogger) against a fake MLflow client: every metric
reaches the store exactly once through an outage, a send that fails part way, and a resume after a crash. (The
end-to-end runs with a real store are in test_tracking.py and test_jobs.py.)"""

import json

import pytest

from jobs.tracking.metrics import RunLogger


class FakeStore:
    """MLflow's client as the sender uses it: log_batch (an identical metric is stored once, as MLflow does),
    get_run and get_metric_history. `down` makes every call fail; `fail_after` lets that many calls succeed first."""

    def __init__(self):
        self.stored: set[tuple[str, int, float, int]] = set()  # (key, step, value, timestamp)
        self.down, self.fail_after, self.calls = False, None, 0

    def _call(self):
        self.calls += 1
        if self.down or (self.fail_after is not None and self.calls > self.fail_after):
            raise ConnectionError("the store does not answer")

    def log_batch(self, run_id, metrics=(), synchronous=True):
        self._call()
        self.stored |= {(m.key, m.step, m.value, m.timestamp) for m in metrics}

    def get_run(self, run_id):
        self._call()
        keys = {key for key, *_ in self.stored}
        return type("Run", (), {"data": type("Data", (), {"metrics": dict.fromkeys(keys, 0.0)})})

    def get_metric_history(self, run_id, key):
        self._call()
        return [type("Metric", (), {"step": step, "value": value})
                for k, step, value, _ in sorted(self.stored) if k == key]

    def steps(self, key="train/loss") -> list[int]:
        return sorted(step for k, step, *_ in self.stored if k == key)


@pytest.fixture
def fake(monkeypatch):
    fake = FakeStore()
    monkeypatch.setattr("jobs.tracking.store.client", lambda: fake)
    monkeypatch.setattr(RunLogger, "FLUSH_SECONDS", 3600.0)  # sends happen at flush() and close() only
    return fake


def test_an_outage_journals_the_metrics_and_the_recovery_sends_each_once(tmp_path, fake):
    journal = tmp_path / "journal.jsonl"
    logger = RunLogger("run", journal)
    logger.log_metrics({"train/loss": 3.0}, step=1)
    logger.flush()
    assert fake.steps() == [1] and not journal.exists()
    fake.down = True
    for step in (2, 3):
        logger.log_metrics({"train/loss": 3.0 - step / 10}, step=step)
        logger.flush()
    assert logger.failing and fake.steps() == [1]
    assert sorted(json.loads(line)["step"] for line in journal.read_text().splitlines()) == [2, 3]
    fake.down = False
    logger.log_metrics({"train/loss": 2.0}, step=4)
    logger.close()
    assert fake.steps() == [1, 2, 3, 4] and not logger.failing and not journal.exists()


def test_a_send_that_fails_part_way_loses_nothing_and_stores_each_metric_once(tmp_path, fake):
    """More than 1,000 metrics go in several calls: the first is taken, the second fails. What was new is journalled;
    the next send repeats the whole batch (the first call's metrics again), which the store keeps once."""
    journal = tmp_path / "journal.jsonl"
    logger = RunLogger("run", journal)
    for step in range(1, 1501):
        logger.log_metrics({"train/loss": 1.0 / step}, step)
    fake.fail_after = fake.calls + 1
    logger.flush()
    assert logger.failing and len(fake.steps()) == 1000 and len(journal.read_text().splitlines()) == 1500
    fake.fail_after = None
    logger.close()
    assert fake.steps() == list(range(1, 1501)) and not journal.exists()


def test_a_resume_replays_the_journal_and_skips_steps_the_store_already_holds(tmp_path, fake):
    """A session crashed after logging steps 1-7 (steps 6 and 7 after its last checkpoint, at step 5) with steps 4-5
    still in its journal. The resumed session sends the journal, and steps 6-7, trained again, are not stored twice."""
    journal = tmp_path / "journal.jsonl"
    first = RunLogger("run", journal)
    for step in (1, 2, 3, 6, 7):
        first.log_metrics({"train/loss": 1.0 / step}, step)
    first.close()
    journal.write_text("".join(json.dumps({"key": "train/loss", "value": 1.0 / s, "step": s, "timestamp": 5})
                               + "\n" for s in (4, 5)) + '{"key": "train/loss", "val')  # a line cut by the crash
    resumed = RunLogger("run", journal, resume_step=5)
    assert fake.steps() == [1, 2, 3, 4, 5, 6, 7] and not journal.exists()
    for step in (6, 7, 8):
        resumed.log_metrics({"train/loss": 1.0 / step}, step)  # 6 and 7 again (other timestamps): dropped
    resumed.close()
    assert fake.steps() == [1, 2, 3, 4, 5, 6, 7, 8]
