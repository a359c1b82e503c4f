"""``RequestContextMiddleware``: a request id, a context, one log line and the HTTP metrics per request.

A pure ASGI middleware (not Starlette's ``BaseHTTPMiddleware``), so streamed bodies pass through untouched
and websockets work. For each HTTP request it:

1. takes the caller's ``X-Request-ID`` when it is sane (at most 128 of ``[A-Za-z0-9._:-]``), otherwise
   makes one, and echoes it in the ``X-Request-ID`` response header;
2. opens the request context (:mod:`concord_core.observability.context`) that handlers complete with
   the user, lens and operation;
3. after the response, writes exactly one log line on ``concord.request`` (request_id, user_id,
   lens_id, route, operation, method, status, latency_ms, client_addr) and records
   ``concord_http_requests_total`` and ``concord_http_request_duration_seconds``.

``route`` is the matched route *template* (``/api/artifacts/{id}``), never the raw path, so the metric
labels stay bounded; a request that matched no route is labelled ``<unmatched>`` (the log line then shows
the raw path). An unhandled exception is logged and counted as status 500 and re-raised; when no response
has started yet, the middleware first sends a plain 500 that carries the request id, so the caller can
quote it.

Websocket connections get a request id and a context for their whole life, nothing per message.

Add it as the outermost application middleware: ``app.add_middleware(RequestContextMiddleware)`` last.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from concord_core.observability.context import bind, current, new_request_id
from concord_core.observability.metrics import HTTP_REQUEST_DURATION, HTTP_REQUESTS

__all__ = [
    "REQUEST_ID_HEADER",
    "UNMATCHED_ROUTE",
    "RequestContextMiddleware",
    "route_template",
    "sane_request_id",
]

REQUEST_ID_HEADER = "X-Request-ID"
UNMATCHED_ROUTE = "<unmatched>"

_HEADER_KEY = REQUEST_ID_HEADER.lower().encode("latin-1")
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Any other method is counted as OTHER: a client must not be able to invent label values.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})

log = logging.getLogger("concord.request")


def sane_request_id(value: str | bytes | None) -> str | None:
    """``value`` when it is an acceptable caller-supplied request id, else ``None``."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if _SANE_REQUEST_ID.fullmatch(value) else None


def _header(scope: Scope, key: bytes) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == key:
            return bytes(value)
    return None


def _client_addr(scope: Scope) -> str | None:
    client = scope.get("client")
    if not client:
        return None
    host, port = client[0], client[1]
    return f"{host}:{port}" if port is not None else str(host)


def _mount_prefix(scope: Scope) -> str:
    """The path of any Mounts the request went through, relative to the application's own root."""
    if "app_root_path" not in scope:  # set by Starlette's Mount.matches only
        return ""
    root_path: str = scope.get("root_path", "")
    app_root_path: str = scope["app_root_path"]
    return root_path.removeprefix(app_root_path)


def route_template(scope: Scope) -> str | None:
    """The template of the route that served ``scope`` (e.g. ``/items/{id}``), or ``None`` if none matched.

    Read after the application ran: the router records its match in the scope.
    """
    route = scope.get("route")
    prefix = _mount_prefix(scope)
    # FastAPI >= 0.16x keeps an included router's routes unflattened; the full template (router prefixes
    # included) is on the effective route context it stores in the scope. Read defensively: private.
    fastapi_scope = scope.get("fastapi")
    if route is not None and isinstance(fastapi_scope, dict):
        effective = fastapi_scope.get("effective_route_context")
        if effective is not None and getattr(effective, "original_route", None) is route:
            path_format = getattr(effective, "path_format", None)
            if isinstance(path_format, str) and path_format:
                return prefix + path_format
    if isinstance(route, Mount):
        return prefix + "/{path}"
    if route is not None:
        path = getattr(route, "path_format", None) or getattr(route, "path", None)
        if isinstance(path, str):
            return prefix + path
    if prefix:
        # A Mount of a plain ASGI app (no inner router) under FastAPI: the mount itself is the route.
        return prefix + "/{path}"
    return None


def _with_request_id(headers: Any, request_id: bytes) -> list[tuple[bytes, bytes]]:
    kept = [
        (bytes(name), bytes(value)) for name, value in headers or () if bytes(name).lower() != _HEADER_KEY
    ]
    kept.append((_HEADER_KEY, request_id))
    return kept


class RequestContextMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = sane_request_id(_header(scope, _HEADER_KEY)) or new_request_id()
        with bind(
            request_id=request_id, user_id=None, lens_id=None, operation=None, client_addr=_client_addr(scope)
        ):
            if scope["type"] == "websocket":
                await self.app(scope, receive, self._websocket_send(send, request_id))
            else:
                await self._http(scope, receive, send, request_id)

    @staticmethod
    def _websocket_send(send: Send, request_id: str) -> Send:
        encoded = request_id.encode("ascii")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "websocket.accept":
                message = {**message, "headers": _with_request_id(message.get("headers"), encoded)}
            await send(message)

        return send_with_id

    async def _http(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        encoded = request_id.encode("ascii")
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                message = {**message, "headers": _with_request_id(message.get("headers"), encoded)}
            await send(message)

        started = time.perf_counter()
        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException as exc:
            status, error = 500, exc
            if not response_started:
                await self._send_error(send_with_id)
            raise
        finally:
            self._record(scope, status, time.perf_counter() - started, error)

    @staticmethod
    async def _send_error(send: Send) -> None:
        # Sent here rather than by Starlette's ServerErrorMiddleware (outside us) so it carries the
        # request id; that middleware sees the response started and only re-raises.
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")],
            }
        )
        await send({"type": "http.response.body", "body": b"Internal Server Error"})

    @staticmethod
    def _record(scope: Scope, status: int, elapsed: float, error: BaseException | None) -> None:
        method = str(scope.get("method", "")).upper()
        method_label = method if method in _KNOWN_METHODS else "OTHER"
        template = route_template(scope)
        route_label = template or UNMATCHED_ROUTE
        HTTP_REQUESTS.labels(method=method_label, route=route_label, status=str(status)).inc()
        HTTP_REQUEST_DURATION.labels(method=method_label, route=route_label).observe(elapsed)

        context = current()
        route = template or scope.get("path", "")
        latency_ms = round(elapsed * 1000, 3)
        level = logging.ERROR if status >= 500 else logging.INFO
        log.log(
            level,
            "%s %s %s %.1fms",
            method,
            route,
            status,
            latency_ms,
            # The traceback goes on the request's own line, so it is found by the request id.
            exc_info=(type(error), error, error.__traceback__) if error is not None else None,
            extra={
                "request_id": context.request_id,
                "user_id": context.user_id,
                "lens_id": context.lens_id,
                "route": route,
                "operation": context.operation,
                "method": method,
                "status": status,
                "latency_ms": latency_ms,
                "client_addr": context.client_addr,
            },
        )
