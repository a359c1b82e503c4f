"""Backups and restore (plan A3): a consistent copy of the metadata database and of every blob it refers
to, in one directory that one command verifies and one command restores, on either backend.

``concord backup create|list|verify|restore|prune``: :mod:`.layout` is the format and its check,
:mod:`.create` and :mod:`.restore` the two directions, :mod:`.retention` what ``prune`` keeps. Nothing is
imported here, so that the ``concord`` command can name :class:`~.layout.BackupError` without loading the
object stores' clients.
"""
