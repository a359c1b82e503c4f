"""Live-update wake-ups across processes: Redis pub/sub, PostgreSQL LISTEN/NOTIFY, or in-process fan-out.

A notification carries only a topic (``job:<id>``, ``workflow:<id>``, ``events``), never state: whoever is
woken re-reads the database, which is the truth. Wake-ups can be lost (a dropped connection, a restart), so
every waiter also wakes on a timeout and re-reads anyway (the poll fallback); a wake-up can at worst come
late, never wrong.

With ``CONCORD_REDIS_URL`` notifications go through Redis pub/sub; else, on PostgreSQL, through
``NOTIFY``; else (SQLite, one process) they stay in the process. Publishing never raises: a failed publish
is logged and the waiters' poll picks the change up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable

from sqlalchemy import func, select

from concord_core.db.engine import Database
from concord_core.settings import Settings

log = logging.getLogger("concord.jobs.notify")

PG_CHANNEL = "concord_notify"
_RECONNECT_SECONDS = 1.0


class Subscription:
    """Wake-ups for a set of topics, awaitable from asyncio or waitable from a thread."""

    def __init__(self, bus: Notifier, topics: frozenset[str]) -> None:
        self._bus = bus
        self.topics = topics
        self._thread_event = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_event: asyncio.Event | None = None
        try:
            self._loop = asyncio.get_running_loop()
            self._async_event = asyncio.Event()
        except RuntimeError:
            pass

    def _signal(self) -> None:
        self._thread_event.set()
        if self._loop is not None and self._async_event is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: the subscriber is gone
                self._loop.call_soon_threadsafe(self._async_event.set)

    async def wait(self, timeout: float) -> bool:
        """Wait (asyncio) for a wake-up or ``timeout`` seconds; True if woken. Clears the wake-up."""
        assert self._async_event is not None, "subscribe from a running event loop to wait asynchronously"
        try:
            await asyncio.wait_for(self._async_event.wait(), timeout)
            woken = True
        except TimeoutError:
            woken = False
        self._async_event.clear()
        self._thread_event.clear()
        return woken

    def wait_sync(self, timeout: float) -> bool:
        """Wait (blocking) for a wake-up or ``timeout`` seconds; True if woken. Clears the wake-up."""
        woken = self._thread_event.wait(timeout)
        self._thread_event.clear()
        return woken

    def close(self) -> None:
        self._bus._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class Notifier:
    """In-process fan-out; the subclasses carry topics between processes and feed them in here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, set[Subscription]] = {}

    def publish(self, topics: Iterable[str]) -> None:
        """Wake every subscriber of any of ``topics`` (in every process). Never raises."""
        self.deliver(topics)

    def deliver(self, topics: Iterable[str]) -> None:
        """Wake this process's subscribers of ``topics``."""
        with self._lock:
            woken = {sub for topic in topics for sub in self._subscribers.get(topic, ())}
        for sub in woken:
            sub._signal()

    def subscribe(self, topics: Iterable[str]) -> Subscription:
        sub = Subscription(self, frozenset(topics))
        with self._lock:
            for topic in sub.topics:
                self._subscribers.setdefault(topic, set()).add(sub)
        self._listening()
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            for topic in sub.topics:
                subscribers = self._subscribers.get(topic)
                if subscribers is not None:
                    subscribers.discard(sub)
                    if not subscribers:
                        del self._subscribers[topic]

    def _listening(self) -> None:
        """Make sure other processes' notifications reach this one (started on the first subscription)."""

    def close(self) -> None:
        """Stop listening to other processes."""


class _ListeningNotifier(Notifier):
    """A notifier with a daemon thread that receives other processes' topics and delivers them here."""

    def __init__(self) -> None:
        super().__init__()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def _listening(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._listen_forever, name="concord-notify", daemon=True
                )
                self._thread.start()

    def _listen_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # the connection dropped: waiters poll meanwhile; reconnect
                if not self._stop.is_set():
                    log.warning("live-update listener lost its connection (%s); reconnecting", exc)
                    # Whatever was published while disconnected is lost: wake everyone to re-read.
                    with self._lock:
                        everyone = list(self._subscribers)
                    self.deliver(everyone)
                    self._stop.wait(_RECONNECT_SECONDS)

    def _listen(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=3)


class RedisNotifier(_ListeningNotifier):
    """Topics over one Redis pub/sub channel per namespace."""

    def __init__(self, url: str, namespace: str) -> None:
        super().__init__()
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._url = url
        self.channel = f"{namespace}:notify"

    def publish(self, topics: Iterable[str]) -> None:
        names = list(topics)
        if not names:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for topic in names:
                pipe.publish(self.channel, topic)
            pipe.execute()
        except Exception as exc:  # never fail a committed write over a wake-up
            log.warning("could not publish live updates to Redis (%s); subscribers will poll", exc)
            self.deliver(names)

    def _listen(self) -> None:
        import redis

        connection = redis.Redis.from_url(self._url, socket_connect_timeout=5, health_check_interval=10)
        pubsub = connection.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel)
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    data = message["data"]
                    self.deliver([data.decode() if isinstance(data, bytes) else str(data)])
        finally:
            pubsub.close()
            connection.close()


class PostgresNotifier(_ListeningNotifier):
    """Topics over PostgreSQL ``NOTIFY`` on the metadata database."""

    def __init__(self, db: Database) -> None:
        super().__init__()
        self._db = db

    def publish(self, topics: Iterable[str]) -> None:
        names = list(topics)
        if not names:
            return
        try:
            with self._db.engine.connect() as conn:
                for topic in names:
                    conn.execute(select(func.pg_notify(PG_CHANNEL, topic)))
                conn.commit()
        except Exception as exc:  # never fail a committed write over a wake-up
            log.warning("could not NOTIFY live updates (%s); subscribers will poll", exc)
            self.deliver(names)

    def _listen(self) -> None:
        import psycopg

        url = self._db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"LISTEN {PG_CHANNEL}")
            while not self._stop.is_set():
                for notice in conn.notifies(timeout=1.0):
                    self.deliver([notice.payload])
                    if self._stop.is_set():
                        break


def open_notifier(settings: Settings, db: Database) -> Notifier:
    """The notifier this deployment uses (see the module docstring)."""
    if settings.redis_url:
        return RedisNotifier(settings.redis_url, settings.redis_namespace)
    if db.is_postgres:
        return PostgresNotifier(db)
    return Notifier()
