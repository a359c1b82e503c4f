"""Request context: who is asking, through which lens and operation, under which request id.

The HTTP middleware opens a context per request; resolvers and handlers fill in what only they know
(:func:`set_user_id`, :func:`set_lens_id`, :func:`set_operation`); the log formatter and the request log
read it back with :func:`current`. Code outside HTTP (CLI commands, job workers) opens one with
:func:`bind`.

The context variable holds a *mutable* record rather than one variable per field, on purpose: FastAPI runs
sync endpoints and dependencies in worker threads, and Strawberry gathers async resolvers in child tasks;
both run in a *copy* of the context, so a plain ``ContextVar.set`` there would be invisible to the
middleware that writes the request log afterwards. Mutating the shared record is visible to all of them.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = [
    "RequestContext",
    "bind",
    "current",
    "current_request_id",
    "new_request_id",
    "set_lens_id",
    "set_operation",
    "set_user_id",
]


@dataclass(frozen=True, slots=True)
class RequestContext:
    """A snapshot of the current request's context; every field is ``None`` when unknown."""

    request_id: str | None = None
    user_id: str | None = None
    lens_id: str | None = None
    operation: str | None = None
    client_addr: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        """All fields, unset ones as ``None`` (a stable shape for log lines)."""
        return dataclasses.asdict(self)


@dataclass(slots=True)
class _State:
    """The mutable record shared by every task and thread serving one request."""

    request_id: str | None = None
    user_id: str | None = None
    lens_id: str | None = None
    operation: str | None = None
    client_addr: str | None = None


_state: ContextVar[_State | None] = ContextVar("concord_request_context", default=None)


class _Keep(enum.Enum):
    """Marks a :func:`bind` argument as not given (``None`` is a real value: "clear this field")."""

    KEEP = enum.auto()


_KEEP = _Keep.KEEP


def new_request_id() -> str:
    """A fresh request id: 32 lowercase hex digits (uuid4)."""
    return uuid.uuid4().hex


def current() -> RequestContext:
    """A snapshot of the current context (all ``None`` outside any request or :func:`bind`)."""
    state = _state.get()
    if state is None:
        return RequestContext()
    return RequestContext(
        request_id=state.request_id,
        user_id=state.user_id,
        lens_id=state.lens_id,
        operation=state.operation,
        client_addr=state.client_addr,
    )


def current_request_id() -> str | None:
    """The current request id, or ``None`` outside any request."""
    state = _state.get()
    return state.request_id if state is not None else None


def _writable_state() -> _State:
    state = _state.get()
    if state is None:
        # Outside a request or bind(): start a context here rather than dropping the value.
        state = _State()
        _state.set(state)
    return state


def set_user_id(user_id: str | None) -> None:
    """Record the authenticated user (called by the auth layer once the principal is known)."""
    _writable_state().user_id = user_id


def set_lens_id(lens_id: str | None) -> None:
    """Record the lens serving the request (called by lens resolvers and REST handlers)."""
    _writable_state().lens_id = lens_id


def set_operation(operation: str | None) -> None:
    """Record the operation: the GraphQL operation name, or a handler's own name for the request."""
    _writable_state().operation = operation


@contextmanager
def bind(
    *,
    request_id: str | _Keep | None = _KEEP,
    user_id: str | _Keep | None = _KEEP,
    lens_id: str | _Keep | None = _KEEP,
    operation: str | _Keep | None = _KEEP,
    client_addr: str | _Keep | None = _KEEP,
) -> Iterator[RequestContext]:
    """Open a context for the block, inheriting any field not given from the enclosing context.

    For code outside HTTP, e.g. a worker running a job on behalf of the request that created it::

        with bind(request_id=job.request_id or new_request_id(), operation=f"job:{job.type}"):
            run(job)

    On exit the enclosing context is restored, including anything set inside by :func:`set_user_id` etc.
    """
    outer = _state.get() or _State()
    given = {
        "request_id": request_id,
        "user_id": user_id,
        "lens_id": lens_id,
        "operation": operation,
        "client_addr": client_addr,
    }
    inner = dataclasses.replace(outer, **{name: value for name, value in given.items() if value is not _KEEP})
    token = _state.set(inner)
    try:
        yield current()
    finally:
        _state.reset(token)
