"""Which backups to keep: the newest of each of the last N days, ISO weeks and months (plan A3: 7 daily,
4 weekly, 6 monthly), and the rest removed by ``concord backup prune``."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from concord_core.backup.layout import PARTIAL_PREFIX, BackupError, backups_in, taken_at

#: A ``.partial-`` directory untouched for this long is a backup whose process died; younger ones may
#: still be being written.
PARTIAL_GRACE_SECONDS = 6 * 3600


@dataclass(frozen=True)
class Policy:
    daily: int = 7
    weekly: int = 4
    monthly: int = 6

    def __post_init__(self) -> None:
        if min(self.daily, self.weekly, self.monthly) < 0:
            raise BackupError("the numbers of backups to keep cannot be negative")
        if not (self.daily or self.weekly or self.monthly):
            raise BackupError("a policy that keeps no backup would remove every backup")


def _periods(policy: Policy) -> list[tuple[int, Callable[[datetime], Hashable]]]:
    return [
        (policy.daily, lambda moment: moment.date()),
        (policy.weekly, lambda moment: moment.isocalendar()[:2]),
        (policy.monthly, lambda moment: (moment.year, moment.month)),
    ]


def to_keep(moments: Iterable[datetime], policy: Policy) -> set[datetime]:
    """Of the moments backups were taken, those ``policy`` keeps: for each kind of period, the newest
    backup of each of the newest ``n`` periods that have one."""
    newest_first = sorted(set(moments), reverse=True)
    kept: set[datetime] = set()
    for count, period in _periods(policy):
        seen: set[Hashable] = set()
        for moment in newest_first:
            if len(seen) == count:
                break
            key = period(moment)
            if key not in seen:
                seen.add(key)
                kept.add(moment)
    return kept


@dataclass(frozen=True)
class Pruned:
    kept: list[Path]
    removed: list[Path]


def prune(directory: Path, policy: Policy, *, dry_run: bool = False) -> Pruned:
    """Remove the backups in ``directory`` that ``policy`` does not keep, and the ``.partial-`` directories
    of backups that died (untouched for ``PARTIAL_GRACE_SECONDS``). With ``dry_run``, only say which."""
    backups = backups_in(directory)
    keep = to_keep((taken_at(backup) for backup in backups), policy)
    kept = [backup for backup in backups if taken_at(backup) in keep]
    removed = [backup for backup in backups if taken_at(backup) not in keep]
    if directory.is_dir():
        cutoff = time.time() - PARTIAL_GRACE_SECONDS
        removed += sorted(
            path
            for path in directory.iterdir()
            if path.name.startswith(PARTIAL_PREFIX) and path.is_dir() and _last_touched(path) < cutoff
        )
    if not dry_run:
        for path in removed:
            shutil.rmtree(path)
    return Pruned(kept, removed)


def _last_touched(partial: Path) -> float:
    """When anything was last added to the ``.partial-`` directory of a backup: the newest modification
    time of it and the directories in it (a backup copying blobs for hours adds files to blobs/ab/)."""
    return max(
        [partial.stat().st_mtime]
        + [
            (Path(parent) / name).stat().st_mtime
            for parent, names, _files in os.walk(partial)
            for name in names
        ]
    )
