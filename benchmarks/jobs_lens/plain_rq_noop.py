"""What plain RQ runs in benchmarks/jobs.py: a no-op in a module that imports nothing, so RQ's forking
Worker (which imports the function's module in every work horse it forks) is not charged for importing
Concord, as it was when the no-op lived in benchmarks/jobs.py."""


def noop() -> None:
    """Nothing."""
