"""What the server tells an operator, in Prometheus' text format at GET /metrics (prometheus-client writes it).

The names follow vLLM's where one exists, under this project's prefix:

    tf_requests_total{endpoint, status}             every HTTP request, refusals included (401, 413...)
    tf_prompt_tokens_total{model}                   prompt tokens of the requests served
    tf_generation_tokens_total{model}               tokens generated
    tf_time_to_first_token_seconds{model}           histogram: request accepted -> first token out of the engine
    tf_time_per_output_token_seconds{model}         histogram: the gap between a request's consecutive tokens
    tf_num_requests_waiting{model}                  gauge: requests not yet in the running batch
    tf_num_requests_running{model}                  gauge: sequences in the running batch (its size)

Each app has its own registry (tests start several in one process), and /metrics needs no API key: it says how
busy the server is, not what anyone asked.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ENDPOINTS = frozenset({"/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions"})
# Seconds: first tokens come after a prefill (tens of ms on CPU, more behind a queue); gaps are a decode step.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    def __init__(self, models: list) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tf_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=self.registry)
        self.prompt_tokens = Counter("tf_prompt_tokens", "prompt tokens served", ["model"], registry=self.registry)
        self.generation_tokens = Counter("tf_generation_tokens", "tokens generated", ["model"], registry=self.registry)
        self.time_to_first_token = Histogram("tf_time_to_first_token_seconds", "request accepted to first token",
                                             ["model"], buckets=TTFT_BUCKETS, registry=self.registry)
        self.time_per_output_token = Histogram("tf_time_per_output_token_seconds", "gap between consecutive tokens",
                                               ["model"], buckets=GAP_BUCKETS, registry=self.registry)
        waiting = Gauge("tf_num_requests_waiting", "requests waiting for a place in the batch", ["model"],
                        registry=self.registry)
        running = Gauge("tf_num_requests_running", "sequences in the running batch", ["model"], registry=self.registry)
        for model in models:  # read when scraped
            waiting.labels(model.name).set_function(lambda engine=model.engine: engine.waiting)
            running.labels(model.name).set_function(lambda engine=model.engine: engine.active)

    def exposition(self) -> tuple[bytes, str]:
        """The text a scrape gets, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def count_requests(self, app):
        """An ASGI wrapper that counts every response by endpoint (the path, or "other") and status."""

        async def counted(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"

            async def send_counted(message):
                if message["type"] == "http.response.start":
                    self.requests.labels(endpoint, str(message["status"])).inc()
                await send(message)

            return await app(scope, receive, send_counted)

        return counted
