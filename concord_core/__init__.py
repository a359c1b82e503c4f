"""Concord: the kernel. Nothing lens-specific lives in this package."""

__version__ = "0.1.0"
