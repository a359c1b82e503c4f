"""Request ids, the request context, the one-line request log and the HTTP metrics (seed plan H2)."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator

import pytest
from fastapi import APIRouter, FastAPI, WebSocket
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram

from concord_core.observability import (
    REGISTRY,
    RequestContext,
    RequestContextMiddleware,
    bind,
    configure_logging,
    counter,
    current,
    current_request_id,
    gauge,
    histogram,
    metrics_endpoint,
    metrics_response,
    new_request_id,
    set_lens_id,
    set_operation,
    set_user_id,
)
from concord_core.observability.logging import JsonFormatter

GENERATED_ID = re.compile(r"[0-9a-f]{32}")
LOG_FIELDS = {
    "request_id",
    "user_id",
    "lens_id",
    "route",
    "operation",
    "method",
    "status",
    "latency_ms",
    "client_addr",
}


def build_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, object]:
        set_user_id("user-1")
        set_lens_id("studio")
        set_operation("GetItem")
        return {"item_id": item_id, "request_id": current_request_id()}

    @app.get("/sync/{n}")
    def sync(n: int) -> dict[str, object]:
        # Runs in a worker thread, in a copy of the context: the request log must still see this.
        set_user_id(f"sync-user-{n}")
        return {"request_id": current_request_id()}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"chunk{i};".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(current_request_id() or "")
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    workspace = APIRouter()

    @workspace.get("/docs/{doc_id}")
    async def doc(ws: str, doc_id: str) -> dict[str, str]:
        return {"ws": ws, "doc": doc_id}

    app.include_router(workspace, prefix="/w/{ws}")
    app.add_route("/metrics", metrics_endpoint)
    app.add_middleware(RequestContextMiddleware)
    return app


class LineCapture(logging.Handler):
    """Keeps each record as the JSON line our formatter makes of it."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture
def request_log() -> Iterator[LineCapture]:
    logger = logging.getLogger("concord.request")
    capture = LineCapture()
    previous = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    yield capture
    logger.removeHandler(capture)
    logger.setLevel(previous)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(build_app()) as test_client:
        yield test_client


def requests_total(method: str, route: str, status: int) -> float:
    value = REGISTRY.get_sample_value(
        "concord_http_requests_total", {"method": method, "route": route, "status": str(status)}
    )
    return value or 0.0


def duration_count(method: str, route: str) -> float:
    value = REGISTRY.get_sample_value(
        "concord_http_request_duration_seconds_count", {"method": method, "route": route}
    )
    return value or 0.0


# --- request ids -------------------------------------------------------------------------------------


def test_request_id_is_generated_and_echoed(client: TestClient) -> None:
    response = client.get("/items/7")
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    assert GENERATED_ID.fullmatch(request_id)
    assert response.json()["request_id"] == request_id
    assert client.get("/items/7").headers["x-request-id"] != request_id


@pytest.mark.parametrize("given", ["abc-123", "A.b_c:d-e", "0" * 128, "f1e2d3c4b5a6978812345678deadbeef"])
def test_sane_request_id_is_kept(client: TestClient, given: str) -> None:
    response = client.get("/items/1", headers={"X-Request-ID": given})
    assert response.headers["x-request-id"] == given
    assert response.json()["request_id"] == given


@pytest.mark.parametrize(
    "given",
    [
        "a" * 129,
        "has space",
        "semi;colon",
        "slash/es",
        "<script>",
        '"quoted"',
        b"caf\xc3\xa9",
        b"\xff\xfe",
        "",
    ],
)
def test_insane_request_id_is_replaced(client: TestClient, given: str | bytes) -> None:
    response = client.get("/items/1", headers={"X-Request-ID": given})
    request_id = response.headers["x-request-id"]
    assert GENERATED_ID.fullmatch(request_id)
    assert response.json()["request_id"] == request_id
    assert len(response.headers.get_list("x-request-id")) == 1


def test_header_injection_is_replaced_at_the_asgi_level() -> None:
    # HTTP clients refuse to send CR/LF in a header, so drive the middleware directly.
    sent: list[dict[str, object]] = []
    seen_ids: list[str | None] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        seen_ids.append(current_request_id())
        await send({"type": "http.response.start", "status": 204, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/x",
        "headers": [(b"x-request-id", b"abc\r\nSet-Cookie: admin=1")],
        "client": ("10.0.0.1", 1234),
    }
    asyncio.run(RequestContextMiddleware(app)(scope, receive, send))  # type: ignore[arg-type]

    headers = dict(sent[0]["headers"])  # type: ignore[call-overload]
    assert set(headers) == {b"x-request-id"}
    assert GENERATED_ID.fullmatch(headers[b"x-request-id"].decode())
    assert seen_ids == [headers[b"x-request-id"].decode()]
    assert current_request_id() is None  # the context ended with the request


def test_app_set_request_id_header_is_replaced_not_duplicated() -> None:
    app = FastAPI()

    @app.get("/own")
    async def own() -> StreamingResponse:
        return StreamingResponse(iter([b"x"]), headers={"X-Request-ID": "from-handler"})

    app.add_middleware(RequestContextMiddleware)
    with TestClient(app) as test_client:
        response = test_client.get("/own", headers={"X-Request-ID": "from-caller"})
    assert response.headers.get_list("x-request-id") == ["from-caller"]


# --- the request log line ----------------------------------------------------------------------------


def test_exactly_one_json_log_line_per_request(client: TestClient, request_log: LineCapture) -> None:
    first = client.get("/items/42", headers={"X-Request-ID": "req-1"})
    second = client.get("/items/43")
    assert len(request_log.lines) == 2

    line = request_log.records()[0]
    assert set(line) >= LOG_FIELDS
    assert line["logger"] == "concord.request"
    assert line["level"] == "INFO"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(line["ts"]))
    assert line["request_id"] == "req-1" == first.headers["x-request-id"]
    assert line["user_id"] == "user-1"
    assert line["lens_id"] == "studio"
    assert line["operation"] == "GetItem"
    assert line["route"] == "/items/{item_id}"
    assert line["method"] == "GET"
    assert line["status"] == 200
    assert isinstance(line["latency_ms"], int | float) and line["latency_ms"] >= 0
    assert line["client_addr"] == "testclient:50000"
    assert request_log.records()[1]["request_id"] == second.headers["x-request-id"]


def test_unset_fields_are_present_as_null(client: TestClient, request_log: LineCapture) -> None:
    client.get("/w/acme/docs/d1")
    (line,) = request_log.records()
    assert set(line) >= LOG_FIELDS
    assert line["user_id"] is None
    assert line["lens_id"] is None
    assert line["operation"] is None


def test_context_set_in_a_worker_thread_reaches_the_log(client: TestClient, request_log: LineCapture) -> None:
    response = client.get("/sync/5")
    (line,) = request_log.records()
    assert line["user_id"] == "sync-user-5"
    assert line["route"] == "/sync/{n}"
    assert line["request_id"] == response.json()["request_id"]


def test_streaming_response_passes_through(client: TestClient, request_log: LineCapture) -> None:
    response = client.get("/stream")
    assert response.text == "chunk0;chunk1;chunk2;"
    assert GENERATED_ID.fullmatch(response.headers["x-request-id"])
    (line,) = request_log.records()
    assert (line["route"], line["status"]) == ("/stream", 200)


def test_unmatched_path_logs_raw_path_and_counts_as_unmatched(
    client: TestClient, request_log: LineCapture
) -> None:
    before = requests_total("GET", "<unmatched>", 404)
    response = client.get("/no/such/thing/123")
    assert response.status_code == 404
    assert GENERATED_ID.fullmatch(response.headers["x-request-id"])
    (line,) = request_log.records()
    assert (line["route"], line["status"]) == ("/no/such/thing/123", 404)
    assert requests_total("GET", "<unmatched>", 404) == before + 1


def test_exception_is_logged_counted_and_reraised(request_log: LineCapture) -> None:
    before = requests_total("GET", "/boom", 500)
    with TestClient(build_app()) as test_client, pytest.raises(RuntimeError, match="kaboom"):
        test_client.get("/boom")
    (line,) = request_log.records()
    assert (line["status"], line["level"], line["route"]) == (500, "ERROR", "/boom")
    assert "RuntimeError: kaboom" in str(line["exc_info"])
    assert requests_total("GET", "/boom", 500) == before + 1


def test_server_error_response_carries_the_request_id(request_log: LineCapture) -> None:
    with TestClient(build_app(), raise_server_exceptions=False) as test_client:
        response = test_client.get("/boom", headers={"X-Request-ID": "trace-me"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "trace-me"
    (line,) = request_log.records()
    assert (line["request_id"], line["status"]) == ("trace-me", 500)


# --- metrics -----------------------------------------------------------------------------------------


def test_route_label_is_the_template(client: TestClient) -> None:
    before = requests_total("GET", "/w/{ws}/docs/{doc_id}", 200)
    durations = duration_count("GET", "/w/{ws}/docs/{doc_id}")
    for n in range(3):
        assert client.get(f"/w/team-{n}/docs/doc-{n}").status_code == 200
    assert requests_total("GET", "/w/{ws}/docs/{doc_id}", 200) == before + 3
    assert duration_count("GET", "/w/{ws}/docs/{doc_id}") == durations + 3
    text = client.get("/metrics").text
    assert "team-1" not in text and "doc-1" not in text


def test_metrics_endpoint_exposes_the_counter(client: TestClient) -> None:
    client.get("/items/5")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    text = response.text
    assert 'concord_http_requests_total{method="GET",route="/items/{item_id}",status="200"}' in text
    assert 'concord_http_request_duration_seconds_count{method="GET",route="/items/{item_id}"}' in text


def test_unknown_method_is_labelled_other(client: TestClient) -> None:
    before = requests_total("OTHER", "/items/{item_id}", 405)
    assert client.request("BREW", "/items/1").status_code == 405
    assert requests_total("OTHER", "/items/{item_id}", 405) == before + 1


def test_websocket_gets_context_but_no_metrics(client: TestClient, request_log: LineCapture) -> None:
    with client.websocket_connect("/ws", headers={"X-Request-ID": "ws-1"}) as websocket:
        assert websocket.receive_text() == "ws-1"
        websocket.send_text("echo")
        assert websocket.receive_text() == "echo"
    assert request_log.lines == []
    text = metrics_response()[0].decode()
    assert 'route="/ws"' not in text


def test_get_or_create_helpers_return_the_same_metric() -> None:
    first = counter("concord_test_things_total", "Things.", ("kind",))
    assert counter("concord_test_things_total", "Things.", ["kind"]) is first
    assert isinstance(first, Counter)
    assert isinstance(gauge("concord_test_level", "Level."), Gauge)
    assert gauge("concord_test_level", "Level.") is gauge("concord_test_level", "Level.")
    assert isinstance(histogram("concord_test_seconds", "Seconds.", buckets=(1, 2)), Histogram)
    assert histogram("concord_test_seconds", "Seconds.") is histogram("concord_test_seconds", "Seconds.")
    with pytest.raises(ValueError, match="labels"):
        counter("concord_test_things_total", "Things.", ("other",))
    with pytest.raises(ValueError):
        gauge("concord_test_things_total", "Things.")
    first.labels(kind="a").inc()
    body, content_type = metrics_response()
    assert b'concord_test_things_total{kind="a"} 1.0' in body
    assert content_type == CONTENT_TYPE_LATEST


# --- context -----------------------------------------------------------------------------------------


def test_context_outside_a_request_is_empty() -> None:
    assert current() == RequestContext()
    assert current_request_id() is None


def test_bind_inherits_overrides_and_restores() -> None:
    def scenario() -> None:
        with bind(request_id="job-1", user_id="u1") as outer:
            assert outer == RequestContext(request_id="job-1", user_id="u1")
            with bind(operation="job:render", user_id=None):
                assert current() == RequestContext(request_id="job-1", operation="job:render")
                set_lens_id("studio")
                assert current().lens_id == "studio"
            assert current() == RequestContext(request_id="job-1", user_id="u1")
        assert current() == RequestContext()

    contextvars.copy_context().run(scenario)


def test_setters_outside_any_context_start_one() -> None:
    def scenario() -> RequestContext:
        set_user_id("cli-user")
        set_operation("backup")
        return current()

    assert contextvars.copy_context().run(scenario) == RequestContext(user_id="cli-user", operation="backup")
    assert current() == RequestContext()


def test_new_request_id_is_hex() -> None:
    assert GENERATED_ID.fullmatch(new_request_id())
    assert new_request_id() != new_request_id()


# --- logging configuration ---------------------------------------------------------------------------


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_configure_logging_writes_json_with_context_and_extras(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging("info", json=True, stream=stream)
    logger = logging.getLogger("concord.test")

    def scenario() -> None:
        with bind(request_id="rid-9", lens_id="market"):
            logger.info("hello %s", "world", extra={"job_id": "j1", "attempt": 2, "level": "shadowed"})
            try:
                raise ValueError("bad input")
            except ValueError:
                logger.exception("failed")
        logger.debug("not shown")

    contextvars.copy_context().run(scenario)
    hello, failed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert hello["message"] == "hello world"
    assert (hello["level"], hello["logger"]) == ("INFO", "concord.test")
    assert (hello["request_id"], hello["lens_id"]) == ("rid-9", "market")
    assert "user_id" not in hello  # context fields appear only when set
    assert (hello["job_id"], hello["attempt"]) == ("j1", 2)
    assert hello["extra.level"] == "shadowed"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", hello["ts"])
    assert failed["level"] == "ERROR"
    assert "ValueError: bad input" in failed["exc_info"]


def test_configure_logging_is_idempotent(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    before = len(root_logger.handlers)
    configure_logging("INFO", json=True, stream=stream)
    configure_logging("WARNING", json=True, stream=stream)
    assert len(root_logger.handlers) == before + 1
    assert root_logger.level == logging.WARNING
    logging.getLogger("concord.test").warning("once")
    assert len(stream.getvalue().splitlines()) == 1


def test_configure_logging_text_mode(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    configure_logging("INFO", json=False, stream=stream)

    def scenario() -> None:
        with bind(request_id="rid-t"):
            logging.getLogger("concord.test").info("plain", extra={"k": "v"})

    contextvars.copy_context().run(scenario)
    line = stream.getvalue().strip()
    assert "INFO" in line and "concord.test: plain" in line
    assert "request_id=rid-t" in line and "k=v" in line


def test_configure_logging_rejects_unknown_level(root_logger: logging.Logger) -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("LOUD", json=True)
