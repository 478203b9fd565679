"""Prometheus metrics (prometheus-client, one registry per app): requests, tokens, latencies, load."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401 - re-exported for the route
from prometheus_client import disable_created_metrics

disable_created_metrics()  # no *_created series: they double the output and no dashboard reads them

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("infer_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("infer_prompt_tokens", "Prompt tokens read.", ["model"], registry=r)
        self.prefill_tokens = Counter("infer_prefill_tokens", "Prompt tokens the model evaluated: a prompt less its "
                                      "cached prefix; the n choices of one prompt read it once.", ["model"], registry=r)
        self.completion_tokens = Counter("infer_completion_tokens", "Tokens generated.", ["model"], registry=r)
        self.ttft = Histogram("infer_time_to_first_token_seconds", "From submission to the first text.", ["model"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("infer_inter_token_latency_seconds", "Between two text events of one sequence.", ["model"],
                             buckets=LATENCY_BUCKETS, registry=r)
        self.finished = Counter("infer_finished_requests", "Engine requests by how they ended (stop, length, "
                                "cancelled, failed).", ["reason"], registry=r)
        self.queue_depth = Gauge("infer_queue_depth", "Requests waiting for a free sequence.", ["model"], registry=r)
        self.busy = Gauge("infer_busy_sequences", "Sequences generating or reading a prompt.", ["model"], registry=r)
        self.sequences = Gauge("infer_sequences", "Sequence slots of each loaded model.", ["model"], registry=r)
        self.loaded = Gauge("infer_loaded_models", "Models loaded now.", registry=r)

    def render(self, manager) -> bytes:
        """The text format, with the load gauges read from the schedulers at scrape time."""
        for gauge in (self.queue_depth, self.busy, self.sequences):
            gauge.clear()
        for loaded in manager.loaded.values():
            s = loaded.sched.stats()
            self.queue_depth.labels(loaded.name).set(s["waiting"])
            self.busy.labels(loaded.name).set(s["busy"])
            self.sequences.labels(loaded.name).set(s["busy"] + s["free"])
        self.loaded.set(len(manager.loaded))
        return generate_latest(self.registry)
