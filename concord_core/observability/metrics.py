"""Prometheus metrics: Concord's one registry, the HTTP metrics, and get-or-create helpers.

Everything Concord measures lives in :data:`REGISTRY` (not prometheus_client's global default registry,
so a test or an embedding application never sees our series mixed with its own). Other modules declare
their metrics with :func:`counter`, :func:`gauge` and :func:`histogram`, which return the existing metric
when the name is already registered: re-importing a module, or two modules sharing a metric, never
raises a duplicate-timeseries error. Declaring the same name with another type or other labels does
raise, because that is a bug.

``GET /metrics`` serves :func:`metrics_response` (or mount :func:`metrics_endpoint` directly).

Label values must come from bounded sets (route templates, status codes, job types), never from ids or
raw paths: every distinct label combination is a time series kept forever.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase
from starlette.requests import Request
from starlette.responses import Response

__all__ = [
    "HTTP_REQUESTS",
    "HTTP_REQUEST_DURATION",
    "REGISTRY",
    "counter",
    "gauge",
    "histogram",
    "metrics_endpoint",
    "metrics_response",
]

REGISTRY = CollectorRegistry(auto_describe=True)

# Request latencies from a cached read (milliseconds) to a large upload or export (a minute).
HTTP_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

_M = TypeVar("_M", bound=MetricWrapperBase)
_lock = threading.Lock()
_metrics: dict[str, tuple[MetricWrapperBase, tuple[str, ...]]] = {}


def _get_or_create(kind: type[_M], name: str, labels: tuple[str, ...], create: Callable[[], _M]) -> _M:
    # prometheus_client stores a counter "x_total" as "x"; key both spellings the same way.
    key = name.removesuffix("_total") if kind is Counter else name
    with _lock:
        if key in _metrics:
            existing, existing_labels = _metrics[key]
            if type(existing) is not kind or not isinstance(existing, kind):
                raise ValueError(f"metric {name!r} is already registered as a {type(existing).__name__}")
            if existing_labels != labels:
                raise ValueError(
                    f"metric {name!r} is already registered with labels {list(existing_labels)}, "
                    f"not {list(labels)}"
                )
            return existing
        metric = create()
        _metrics[key] = (metric, labels)
        return metric


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
    """The counter ``name`` on :data:`REGISTRY`, created on first use. Name it ``..._total``."""
    names = tuple(labels)
    return _get_or_create(
        Counter, name, names, lambda: Counter(name, documentation, names, registry=REGISTRY)
    )


def gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
    """The gauge ``name`` on :data:`REGISTRY`, created on first use."""
    names = tuple(labels)
    return _get_or_create(Gauge, name, names, lambda: Gauge(name, documentation, names, registry=REGISTRY))


def histogram(
    name: str,
    documentation: str,
    labels: Sequence[str] = (),
    buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
) -> Histogram:
    """The histogram ``name`` on :data:`REGISTRY`, created on first use (``buckets`` apply then only)."""
    names = tuple(labels)
    return _get_or_create(
        Histogram,
        name,
        names,
        lambda: Histogram(name, documentation, names, registry=REGISTRY, buckets=tuple(buckets)),
    )


HTTP_REQUESTS = counter(
    "concord_http_requests_total",
    "HTTP requests served, by method, route template and status code.",
    ("method", "route", "status"),
)
HTTP_REQUEST_DURATION = histogram(
    "concord_http_request_duration_seconds",
    "Time from receiving an HTTP request to sending the end of its response, by method and route template.",
    ("method", "route"),
    buckets=HTTP_BUCKETS,
)


def metrics_response() -> tuple[bytes, str]:
    """The current exposition of :data:`REGISTRY` and its content type, for ``GET /metrics``."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


async def metrics_endpoint(request: Request) -> Response:
    """A Starlette endpoint serving :func:`metrics_response` (``Route("/metrics", metrics_endpoint)``)."""
    body, content_type = metrics_response()
    return Response(content=body, media_type=content_type)
