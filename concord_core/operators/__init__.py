"""Operators: the only way state changes. Validate, authorize, blob first, one transaction, typed result."""

from concord_core.operators.base import OperationContext
from concord_core.operators.errors import ErrorCode, FieldError, OperatorError

__all__ = ["ErrorCode", "FieldError", "OperationContext", "OperatorError"]
