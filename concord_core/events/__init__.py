"""The event log: hash-chained appends (`log`), state rebuilt from events alone (`replay`)."""

from concord_core.events.log import (
    ChainReport,
    append_event,
    canonical_json,
    iter_events,
    seal_pending,
    verify_chain,
)

__all__ = ["ChainReport", "append_event", "canonical_json", "iter_events", "seal_pending", "verify_chain"]
