"""The pluggy markers for project ``concord``. Lenses decorate their hook functions with ``hookimpl``."""

import pluggy

PROJECT_NAME = "concord"
ENTRY_POINT_GROUP = "concord.lenses"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
