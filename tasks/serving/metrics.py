"""`GET /metrics` in Prometheus' text format, from prometheus_client (one registry per server)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class ServingMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        disable_created_metrics()  # `_created` series: noise beside every counter
        self.registry = CollectorRegistry()
        self.requests = Counter("defectflow_requests", "requests to /predict by HTTP status",
                                ["status"], registry=self.registry)
        self.images = Counter("defectflow_images", "images answered", registry=self.registry)
        self.latency = Histogram("defectflow_request_seconds", "time to answer a /predict",
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.batch_size = Histogram("defectflow_batch_size", "images run together",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.errors = Counter("defectflow_errors", "refused requests by reason", ["reason"],
                              registry=self.registry)
        self.feedback = Counter("defectflow_feedback_images", "images sampled into the inbox",
                                ["strategy"], registry=self.registry)
        self.version = Gauge("defectflow_model_version", "the registry version served",
                             registry=self.registry)

    def done(self, seconds: float, images: int) -> None:
        self.requests.labels("200").inc()
        self.images.inc(images)
        self.latency.observe(seconds)

    def text(self, current) -> bytes:
        self.version.set(current.version if current and current.version is not None else -1)
        return generate_latest(self.registry)
