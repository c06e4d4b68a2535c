"""Metrics from the training loop to MLflow: sent from a background thread, journalled on disk while the store
does not answer, each exactly once."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from mlflow.entities import Metric

from jobs import atomic
import jobs.tracking.store as store

log = logging.getLogger(__name__)


class RunLogger:
    """Logs metrics from a background thread, and never lets a tracking outage stop training or lose a metric.

    The training loop only appends metrics to a list (microseconds); a sender thread ships them to MLflow with
    one log_batch call every FLUSH_SECONDS. If the store does not answer, a warning is printed once and the
    metrics are appended to a journal file (fsynced) beside the checkpoints; every later send tries the journal
    first, and when the store answers again the journal is sent and removed. Resending is harmless: a metric
    keeps its timestamp, and MLflow stores an identical metric once.

    Checkpoints and metrics agree: `flush()` runs before each checkpoint is written, so the metrics of the steps
    a checkpoint covers are sent or journalled before it exists. After a crash (even kill -9), the resumed run
    replays the journal, and `resume_step` drops the metrics of steps that were logged before the crash but come
    after the checkpoint: they are computed again, identically, and each step stays in the history once.

    Overhead, reported at the end of training: `seconds_spent` (the training thread's time in log_metrics and
    flush) and `sender_cpu_seconds` (CPU time of the sender thread, which competes for the same cores).
    """

    FLUSH_SECONDS = 5.0
    FLUSH_WAIT = 10.0  # the longest a checkpoint waits for the store to take its metrics

    def __init__(self, run_id: str, journal_file: Path, resume_step: int | None = None):
        self.client = store.client()
        self.run_id, self.journal_file = run_id, journal_file
        self.new: list[Metric] = []  # logged, not yet sent
        self.lock, self.send_lock, self.journal_lock = threading.Lock(), threading.Lock(), threading.Lock()
        self.wake, self.closed = threading.Event(), False
        self.failing = False
        self.seconds_spent = 0.0
        self.sender_cpu_seconds = 0.0
        self.already_logged: set[tuple[str, int]] = set()
        if resume_step is not None:
            self._send()  # what the last session journalled
            self.already_logged = self._logged_after(resume_step)
        self.thread = threading.Thread(target=self._send_loop, name="mlflow-metrics", daemon=True)
        self.thread.start()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        start = time.perf_counter()
        timestamp = int(time.time() * 1000)
        with self.lock:
            self.new += [Metric(key, float(value), timestamp, step) for key, value in metrics.items()
                         if (key, step) not in self.already_logged]
        self.seconds_spent += time.perf_counter() - start

    def flush(self) -> None:
        """Send everything logged so far, or journal it, before returning (before a checkpoint is written). During
        an outage it is journalled at once: the training thread never waits on MLflow's retries, the sender thread
        keeps trying in the background. A store that takes the connection but does not answer (a frozen server)
        is given FLUSH_WAIT seconds: then what was to be sent is journalled too (sent twice at worst, which MLflow
        stores once) and the outage begins."""
        start = time.perf_counter()
        if self.failing:
            with self.lock:
                new, self.new = self.new, []
            self._append_journal(new)
        else:
            with self.lock:
                pending = list(self.new)
            sending = threading.Thread(target=self._send, name="mlflow-flush", daemon=True)
            sending.start()
            sending.join(self.FLUSH_WAIT)
            if sending.is_alive():
                if not self.failing:
                    log.warning(f"tracking: MLflow did not answer in {self.FLUSH_WAIT:g} s; training goes on, metrics "
                                f"are journalled to {self.journal_file} and sent when it answers")
                self.failing = True
                self._append_journal(pending)
        self.seconds_spent += time.perf_counter() - start

    def close(self) -> None:
        self.closed = True
        self.wake.set()
        self.thread.join(timeout=60)
        self._send()

    def _logged_after(self, step: int) -> set[tuple[str, int]]:
        """(key, step) of the metrics this run already holds for steps after `step`."""
        try:
            keys = self.client.get_run(self.run_id).data.metrics.keys()
            return {(key, m.step) for key in keys for m in self.client.get_metric_history(self.run_id, key)
                    if m.step > step}
        except Exception as error:  # an outage: at worst a few steps appear twice
            log.warning(f"tracking: could not read the run's metric history ({type(error).__name__}); steps logged "
                        f"after step {step} before the interruption may appear twice")
            return set()

    def _send_loop(self) -> None:
        while not self.closed:
            self.wake.wait(self.FLUSH_SECONDS)
            self.wake.clear()
            self._send()

    def _send(self) -> None:
        with self.send_lock:
            cpu_start = time.thread_time()
            with self.lock:
                new, self.new = self.new, []
            journalled, journal_bytes = self._journalled()
            if journalled or new:
                self._send_batch(journalled + new, new, journal_bytes)
            self.sender_cpu_seconds += time.thread_time() - cpu_start

    def _journalled(self) -> tuple[list[Metric], int]:
        """The journal's metrics, and how many of its bytes they came from (flush may append more meanwhile)."""
        with self.journal_lock:
            data = self.journal_file.read_bytes() if self.journal_file.is_file() else b""
        metrics = []
        for line in data.decode("utf-8", errors="replace").splitlines():
            try:
                m = json.loads(line)
                metrics.append(Metric(m["key"], m["value"], m["timestamp"], m["step"]))
            except (ValueError, KeyError, TypeError):  # a line cut short by a crash mid-write
                continue
        return metrics, len(data)

    def _append_journal(self, metrics: list[Metric]) -> None:
        if not metrics:
            return
        with self.journal_lock:
            self.journal_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.journal_file, "a") as out:
                for metric in metrics:
                    out.write(json.dumps({"key": metric.key, "value": metric.value, "step": metric.step,
                                          "timestamp": metric.timestamp}) + "\n")
                out.flush()
                os.fsync(out.fileno())

    def _drop_sent_journal(self, sent_bytes: int) -> None:
        """Remove the journal's first sent_bytes (sent), keeping what was appended while they were being sent."""
        with self.journal_lock:
            if not self.journal_file.is_file():
                return
            rest = self.journal_file.read_bytes()[sent_bytes:]
            if rest:
                atomic.write_bytes(self.journal_file, rest)
            else:
                self.journal_file.unlink()

    def _send_batch(self, pending: list[Metric], new: list[Metric], journal_bytes: int) -> None:
        try:
            for start in range(0, len(pending), 1000):  # MLflow takes at most 1000 metrics a call
                self.client.log_batch(self.run_id, metrics=pending[start : start + 1000], synchronous=True)
            self._drop_sent_journal(journal_bytes)
            if self.failing:
                log.warning("tracking: MLflow answers again; journalled metrics sent")
            self.failing = False
        except Exception as error:  # any failure of the tracking store: keep training, keep the data
            if not self.failing:
                log.warning(f"tracking: MLflow unavailable ({type(error).__name__}); training goes on, metrics "
                            f"are journalled to {self.journal_file} and sent when it answers")
            self.failing = True
            self._append_journal(new)
