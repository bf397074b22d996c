"""Prometheus metrics of one service: requests, errors by kind, latency, batch sizes, queue depth.

Each service has its own registry (two services in one process, as in tests, never mix their counts).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The counters and histograms ``/metrics`` exports (prefix ``mmpretrain_serve_``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mmpretrain_serve_requests", "HTTP requests answered, by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.errors = Counter("mmpretrain_serve_errors", "Refused or failed requests, by route and kind",
                              ["route", "kind"], registry=self.registry)
        self.latency = Histogram("mmpretrain_serve_request_seconds", "Time from request to response, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("mmpretrain_serve_batch_size", "Images per forward pass of the model worker",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("mmpretrain_serve_queue_depth", "Jobs waiting for the model worker",
                                 registry=self.registry)
        self.in_flight = Gauge("mmpretrain_serve_in_flight", "Requests being handled", registry=self.registry)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
