"""The metadata database: engine and sessions (`engine`), typed models (`models`), migrations (`migrate`)."""

from concord_core.db.engine import Database
from concord_core.db.types import new_id, utcnow

__all__ = ["Database", "new_id", "utcnow"]
