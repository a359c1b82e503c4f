"""Observability: request context, structured logs and Prometheus metrics (seed plan H2).

Every request gets an id, a context (user, lens, operation) that log lines pick up on their own, exactly
one request log line, and the HTTP metrics. See :mod:`.context`, :mod:`.middleware`, :mod:`.logging`
and :mod:`.metrics`.
"""

from concord_core.observability.context import (
    RequestContext,
    bind,
    current,
    current_request_id,
    new_request_id,
    set_lens_id,
    set_operation,
    set_user_id,
)
from concord_core.observability.logging import configure_logging
from concord_core.observability.metrics import (
    REGISTRY,
    counter,
    gauge,
    histogram,
    metrics_endpoint,
    metrics_response,
)
from concord_core.observability.middleware import REQUEST_ID_HEADER, RequestContextMiddleware

__all__ = [
    "REGISTRY",
    "REQUEST_ID_HEADER",
    "RequestContext",
    "RequestContextMiddleware",
    "bind",
    "configure_logging",
    "counter",
    "current",
    "current_request_id",
    "gauge",
    "histogram",
    "metrics_endpoint",
    "metrics_response",
    "new_request_id",
    "set_lens_id",
    "set_operation",
    "set_user_id",
]
