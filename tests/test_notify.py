"""Live-update wake-ups between processes over PostgreSQL NOTIFY: two notifiers on one database stand for
two processes (each listens on its own connection, as a process would)."""

from __future__ import annotations

from concord_core.db.engine import Database
from concord_core.jobs.notify import MAX_MESSAGE_CHARS, PostgresNotifier

#: Far below the waiters' poll fallback: a wake-up that arrives comes from the notification.
WAKE_SECONDS = 5.0


def test_a_publish_wakes_the_other_processes_subscribers(postgres_url: str) -> None:
    db = Database(postgres_url)
    sender, receiver = PostgresNotifier(db), PostgresNotifier(db)
    try:
        with receiver.subscribe(["job:a"]) as job_a, receiver.subscribe(["events"]) as events:
            # The listener is up once a notification sent after subscribing comes back to it.
            for _attempt in range(4):
                sender.publish(["events"])
                if events.wait_sync(WAKE_SECONDS):
                    break
            else:
                raise AssertionError("no notification arrived")
            sender.publish(["job:b"])
            assert sender.flush()
            assert not job_a.wait_sync(0.3), "a topic nobody subscribed to woke a subscriber"

            # Many topics at once go out as several messages, in one statement; each one is delivered.
            many = [f"job:{n:05}{'x' * 60}" for n in range(3 * MAX_MESSAGE_CHARS // 60)]
            sender.publish([*many, "job:a"])
            assert sender.flush()
            assert job_a.wait_sync(WAKE_SECONDS)
    finally:
        sender.close()
        receiver.close()
        db.dispose()
