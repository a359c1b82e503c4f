"""concord-lens-bookmarks: an example third-party Concord lens (see docs/plugin-hooks.md in Concord)."""

__version__ = "0.1.0"
