"""The server's Prometheus metrics (prometheus-client, a registry per server): requests by endpoint and status,
tokens in and out, queue length and running sequences, time to first token and time between tokens."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engines: list) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("llmlab_requests", "HTTP requests", ["endpoint", "status"], registry=registry)
        self.request_seconds = Histogram("llmlab_request_seconds", "time to answer (a stream: to its first byte)",
                                         ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
        self.tokens_in = Counter("llmlab_prompt_tokens", "prompt tokens of accepted requests", registry=registry)
        self.tokens_out = Counter("llmlab_completion_tokens", "tokens generated", registry=registry)
        ttft = Histogram("llmlab_time_to_first_token_seconds", "from submission to the first token",
                         buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
        itl = Histogram("llmlab_inter_token_latency_seconds", "between two tokens of a sequence",
                        buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
        queued = Gauge("llmlab_queue_length", "sequences waiting for a slot", registry=registry)
        running = Gauge("llmlab_running_sequences", "sequences decoding", registry=registry)
        shared = Gauge("llmlab_prefix_cache_tokens", "prompt tokens whose keys were reused from a shared prefix "
                       "instead of computed, since the server started", registry=registry)  # fmt: skip
        shared.set_function(lambda: sum(e.stats.prefix_tokens for e in engines))
        queued.set_function(lambda: sum(e.stats.queued for e in engines))
        running.set_function(lambda: sum(e.stats.running for e in engines))
        for engine in engines:
            engine.stats.on_first_token = self._observer(ttft)
            engine.stats.on_token = self._observer(itl)

    def _observer(self, histogram: Histogram):
        """Each token: its latency into `histogram`, and one more token out."""

        def observe(seconds: float) -> None:
            histogram.observe(seconds)
            self.tokens_out.inc()

        return observe

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        known = endpoint if endpoint in ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health",
                                         "/metrics") else "other"  # fmt: skip
        self.requests.labels(known, str(status)).inc()
        self.request_seconds.labels(known).observe(seconds)

    def prompt_tokens(self, n: int) -> None:
        self.tokens_in.inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
