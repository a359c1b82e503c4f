"""GraphQL error shapes: payload `errors {field code message}`, top-level `extensions {code requestId}`."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import strawberry
from strawberry.extensions import SchemaExtension
from strawberry.types import ExecutionResult, StreamExecutionResult

from concord_core.observability.context import current
from concord_core.operators.errors import ErrorCode, FieldError, OperatorError
from graphql import GraphQLError

log = logging.getLogger("concord.graphql")

strawberry.enum(ErrorCode, description="What kind of problem an error is.")


@strawberry.type(name="FieldError", description="One problem with a mutation's input or its effect.")
class FieldErrorType:
    field: str | None = strawberry.field(description="The input field (dotted path), when one is to blame.")
    code: ErrorCode
    message: str

    @classmethod
    def from_error(cls, error: FieldError) -> FieldErrorType:
        return cls(field=error.field, code=error.code, message=error.message)


def payload_errors(exc: OperatorError) -> list[FieldErrorType]:
    return [FieldErrorType.from_error(error) for error in exc.errors]


def shape_errors(errors: list[GraphQLError]) -> list[GraphQLError]:
    """Every error with a code and the request id in its extensions, in Concord's words: an operator's
    refusal gives its own message, an unexpected failure only "internal error" (and is logged)."""
    request_id = current().request_id
    shaped = []
    for error in errors:
        original = error.original_error
        if isinstance(original, OperatorError):
            code, message = original.code.value, str(original.errors[0].message)
        elif original is None:
            code, message = str((error.extensions or {}).get("code", "GRAPHQL_VALIDATION")), error.message
        elif isinstance(original, GraphQLError):
            code, message = str((original.extensions or {}).get("code", "BAD_REQUEST")), error.message
        else:
            log.error("unexpected error in resolver", exc_info=original)
            code, message = ErrorCode.INTERNAL.value, "internal error"
        extensions = {**(error.extensions or {}), "code": code, "requestId": request_id}
        shaped.append(
            GraphQLError(
                message, error.nodes, error.source, error.positions, error.path, extensions=extensions
            )
        )
    return shaped


class ErrorShaping(SchemaExtension):
    """Give every top-level error a code and the request id; hide internal details of unexpected ones.

    Queries and mutations are shaped once their operation ends; every result a subscription (or any
    operation over a websocket) streams is shaped before it is sent.
    """

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        errors = getattr(result, "errors", None)
        if not errors or result is None:
            return
        result.errors = shape_errors(errors)

    def on_stream_result(self, result: StreamExecutionResult) -> Iterator[None]:
        # Incremental-delivery frames (@defer, @stream; not enabled here) carry their errors elsewhere.
        if isinstance(result, ExecutionResult) and result.errors:
            result.errors = shape_errors(result.errors)
        yield
