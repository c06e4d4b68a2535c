"""Stopping a server without cutting anyone off: what SIGTERM (Kubernetes, `docker stop`) does to `serve`.

uvicorn alone stops listening at the first SIGTERM, waits for open responses with no limit, and then raises the
signal again, so the process ends "killed by SIGTERM". DrainingServer instead drains:

    1. /health answers 503 (a load balancer stops sending) and new requests are refused with 503;
    2. the running and waiting requests have grace_seconds to finish;
    3. whatever is left ends with finish_reason "abort" (vLLM's word) and a final chunk, so each stream closes
       properly; then the server stops and the process exits 0.

A second signal, or Ctrl-C, stops at once, as uvicorn does.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

import uvicorn

FLUSH_SECONDS = 5  # after the engines end their requests: time for the final chunks to go out


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, served: list, state, grace_seconds: float):
        super().__init__(config)
        self.served, self.state, self.grace_seconds = served, state, grace_seconds  # state: openai_api.ServerState

    def handle_exit(self, sig, frame) -> None:
        if sig != signal.SIGTERM or self.state.draining:
            return super().handle_exit(sig, frame)
        self.state.draining = True  # (not uvicorn's captured signal: the process ends with 0, not by SIGTERM)
        threading.Thread(target=self.drain, name="drain", daemon=True).start()

    def drain(self) -> None:
        print(f"SIGTERM: draining (up to {self.grace_seconds:g} s for the requests in flight)", file=sys.stderr)
        deadline = time.monotonic() + self.grace_seconds
        while any(m.engine.unfinished for m in self.served) and time.monotonic() < deadline:
            time.sleep(0.05)
        for model in self.served:
            model.engine.end_all("abort")
        flushed = time.monotonic() + FLUSH_SECONDS
        while self.state.in_flight and time.monotonic() < flushed:
            time.sleep(0.05)
        self.should_exit = True
