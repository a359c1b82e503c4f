"""Backups and restore (plan A3): a consistent copy of the metadata database and of every blob it refers
to, in one directory that one command verifies and one command restores, on either backend.

``concord backup create|list|verify|restore|prune``; :mod:`.layout` is the format, :mod:`.create` and
:mod:`.restore` the two directions, :mod:`.retention` what ``prune`` keeps.
"""

from concord_core.backup.create import Created, create_backup
from concord_core.backup.layout import BackupError, Verified, backups_in, verify
from concord_core.backup.restore import Restored, restore_backup
from concord_core.backup.retention import Policy, Pruned, prune, to_keep

__all__ = [
    "BackupError",
    "Created",
    "Policy",
    "Pruned",
    "Restored",
    "Verified",
    "backups_in",
    "create_backup",
    "prune",
    "restore_backup",
    "to_keep",
    "verify",
]
