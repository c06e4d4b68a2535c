"""The engine in a process of its own, so that the model's loop and the HTTP side do not share one interpreter lock.

In one process, the engine's thread and the event loop take turns holding Python's interpreter lock: every
request parsed, every chunk of text formatted and sent, stops the decode step for that long (and a small model's
step is mostly Python, so it cannot run beside them). vLLM's V1 engine splits the two the same way: the API
server in one process, the engine core in another, talking over a pipe.

    server process                                     engine process (spawned; this file's _run)
    EngineProcess.submit(requests) ---- "submit" ----> an Engine (engine.py), unchanged
    a request's cancel()           ---- "cancel" ---->   (noticed after each step, sent then; no more events)
    reader thread: request.emit    <---- one message per step: every event of the step, the batch's size

The model goes to the child once, when it starts: torch.multiprocessing passes CPU tensors through shared memory
(no copy) and CUDA tensors as handles. The child ignores SIGINT and SIGTERM (the server decides when to stop, and
drains first) and ends when its pipe closes, so it never outlives the server. If it dies, every request it held
gets an error and later ones are refused.
"""

from __future__ import annotations

import itertools
import logging
import signal
import threading
from multiprocessing.connection import Connection

import torch.multiprocessing as mp

from jobs.serving.engine import Engine, Request, check_group

log = logging.getLogger(__name__)

# A request as it travels to the engine process: everything but its emit function and its cancel event.
_FIELDS = ("prompt_ids", "max_tokens", "temperature", "top_p", "seed", "stop_ids", "top_k", "logprobs")


class EngineProcess:
    """An Engine running in a child process, with the Engine's interface: submit, end_all, close, and the counts."""

    def __init__(self, model, max_batch: int = 16, threads: int | None = 1, prefill_budget: int = 128,
                 start_timeout: float = 300):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch, self.max_seq_len = max_batch, model.config.max_seq_len
        context = mp.get_context("spawn")  # not fork: the parent has threads (torch's, the server's) to not copy
        self._commands, child_commands = context.Pipe()
        child_events, self._events = context.Pipe()
        self._process = context.Process(target=_run, name="engine", daemon=True,
                                        args=(model, max_batch, threads, prefill_budget, child_commands, child_events))
        self._process.start()
        child_commands.close(), child_events.close()  # the child's ends: our copies would keep the pipes open
        try:
            started = self._events.poll(start_timeout) and self._events.recv() == "ready"
        except EOFError:  # it died first (its traceback is on stderr)
            started = False
        if not started:
            self._process.kill()
            raise RuntimeError(f"the engine process did not start (exit code {self._process.exitcode}, "
                               f"waited up to {start_timeout:.0f} s)")
        self._send_lock = threading.Lock()  # submit (event loop) and cancellations (reader thread) share the pipe
        self._requests: dict[int, Request] = {}  # id -> request, until its last event
        self._ids = itertools.count()
        self._counts = (0, 0)  # (active, waiting), as of the child's last step
        self._dead = False
        self._reader = threading.Thread(target=self._read, name="engine-reader", daemon=True)
        self._reader.start()

    def submit(self, *requests: Request) -> None:
        check_group(requests, self.max_seq_len, self.max_batch)  # here, so that the caller hears of it at once
        ids = [next(self._ids) for _ in requests]
        with self._send_lock:  # (the reader's last act, ending what a dead child held, takes it too)
            if self._dead:
                raise RuntimeError("the engine process has stopped")
            self._requests.update(zip(ids, requests))
            try:
                self._commands.send(("submit", [(i, [getattr(r, name) for name in _FIELDS])
                                                for i, r in zip(ids, requests)]))
            except OSError:  # the child has just died: the reader is about to end these with an error
                pass

    def end_all(self, reason: str = "abort") -> None:
        self._send(("end_all", reason))

    def close(self) -> None:
        self._send(("close",))
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
        self._reader.join(timeout=10)

    @property
    def active(self) -> int:
        return self._counts[0]

    @property
    def waiting(self) -> int:
        return self._counts[1]

    @property
    def unfinished(self) -> int:
        return len(self._requests)

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            try:
                self._commands.send(message)
            except OSError:  # the child has gone (a broken pipe): the reader ends what it held
                pass

    def _read(self) -> None:
        """The reader thread: each step's events to their requests, then the cancellations made since."""
        while True:
            try:
                events, self._counts = self._events.recv()
            except (EOFError, OSError):
                break
            for request_id, event in events:
                request = self._requests.get(request_id)  # None: cancelled, and this was on its way already
                if request is None:
                    continue
                if event[0] != "token":
                    del self._requests[request_id]
                request.emit(event)
            # A cancelled request is answered no more (as in the Engine, which drops it at its next step).
            cancelled = [i for i, r in list(self._requests.items()) if r.cancelled.is_set()]
            if cancelled:
                for request_id in cancelled:
                    del self._requests[request_id]
                self._send(("cancel", cancelled))
        with self._send_lock:
            self._dead = True
            left, self._requests = list(self._requests.values()), {}
        if left:
            log.error("the engine process ended with %d requests unanswered", len(left))
        for request in left:
            request.emit(("error", "the engine process stopped"))


def _run(model, max_batch: int, threads: int | None, prefill_budget: int, commands: Connection,
         events: Connection) -> None:
    """The engine process: an Engine whose events are sent back one message per step, fed by the parent's pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    outgoing: list[tuple[int, tuple]] = []  # (request id, event) of the step in progress
    requests: dict[int, Request] = {}
    sent_counts = (0, 0)  # (active, waiting) as last sent

    def flush() -> None:  # after each step, on the engine's thread (where every emit happens too)
        nonlocal sent_counts
        counts = (engine.active, engine.waiting)
        if outgoing or counts != sent_counts:  # (a cancelled request leaves with no event: its count still goes)
            events.send((outgoing.copy(), counts))
            outgoing.clear()
            sent_counts = counts

    engine = Engine(model, max_batch, threads, prefill_budget, after_step=flush)

    def emitter(request_id: int):
        def emit(event: tuple) -> None:
            if event[0] != "token":
                requests.pop(request_id, None)
            outgoing.append((request_id, event))
        return emit

    events.send("ready")
    try:
        while True:
            command, *arguments = commands.recv()
            if command == "submit":
                group = [Request(**dict(zip(_FIELDS, values)), emit=emitter(i)) for i, values in arguments[0]]
                requests.update((i, r) for (i, _), r in zip(arguments[0], group))
                engine.submit(*group)
            elif command == "cancel":
                for request_id in arguments[0]:
                    request = requests.get(request_id)  # None: it ended while the cancellation travelled
                    if request is not None:
                        request.cancel()
            elif command == "end_all":
                engine.end_all(arguments[0])
            elif command == "close":
                break
    except EOFError:  # the server has gone
        pass
    finally:
        engine.close()
