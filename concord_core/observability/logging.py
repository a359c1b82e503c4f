"""Log output: one JSON object per line (or readable text for a terminal), carrying the request context.

:func:`configure_logging` installs one handler on the root logger. Each line holds ``ts`` (ISO 8601,
UTC), ``level``, ``logger`` and ``message``; the request context fields that are set (``request_id``,
``user_id``, ``lens_id``, ``operation``, ``client_addr``); every field passed as ``extra={...}``; and
``exc_info`` (the formatted traceback) when there is one. So a log call anywhere in a request is tied to
that request by its id without anyone passing the id around.
"""

from __future__ import annotations

import json as _json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from concord_core.observability.context import current

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging"]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# uvicorn's loggers: sent through our handler; its access log is replaced by the request log line
# that RequestContextMiddleware writes (one line per request, with the request id).
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """Context fields that are set, then the record's ``extra`` fields (which win over the context)."""
    fields: dict[str, Any] = {name: value for name, value in current().as_dict().items() if value is not None}
    for name, value in record.__dict__.items():
        if name not in _RECORD_ATTRIBUTES and not name.startswith("_"):
            fields[name] = value
    return fields


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON; values that are not JSON types are written with ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in _fields(record).items():
            # An extra field never replaces a core one; it is kept under another name instead.
            entry[f"extra.{name}" if name in entry else name] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return _json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: message key=value ...`` with the traceback on the following lines."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname:<8} {record.name}: {record.getMessage()}"
        pairs = " ".join(f"{name}={value}" for name, value in _fields(record).items())
        if pairs:
            line = f"{line}  {pairs}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class _ConcordHandler(logging.StreamHandler[TextIO]):
    """Our root handler, marked by its class so :func:`configure_logging` can replace it."""


def configure_logging(level: str = "INFO", json: bool = True, *, stream: TextIO | None = None) -> None:
    """Send all logging through one handler on the root logger, as JSON lines or as text.

    Idempotent: a second call replaces the handler the first one installed (so the level or format can
    change) and never adds a duplicate. ``stream`` defaults to standard error. When running uvicorn
    programmatically, pass ``log_config=None`` so it does not install handlers of its own.
    """
    name = level.upper()
    if name not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}: use one of {', '.join(_LEVELS)}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ConcordHandler):
            root.removeHandler(handler)
            handler.close()
    handler = _ConcordHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root.addHandler(handler)
    root.setLevel(name)
    for logger_name in _UVICORN_LOGGERS:
        logger = logging.getLogger(logger_name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
