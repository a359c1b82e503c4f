"""Live-update wake-ups across processes: Redis pub/sub, PostgreSQL LISTEN/NOTIFY, or in-process fan-out.

A notification carries only a topic (``job:<id>``, ``workflow:<id>``, ``events``), never state: whoever is
woken re-reads the database, which is the truth. Wake-ups can be lost (a dropped connection, a restart), so
every waiter also wakes on a timeout and re-reads anyway (the poll fallback); a wake-up can at worst come
late, never wrong.

With ``CONCORD_REDIS_URL`` notifications go through Redis pub/sub; else, on PostgreSQL, through
``NOTIFY``; else (SQLite, one process) they stay in the process. Publishing never raises: a failed publish
is logged and the waiters' poll picks the change up.

Across processes, :meth:`Notifier.publish` only hands the topics to a publisher thread, which sends
everything published meanwhile as one message (topics separated by newlines): a job's transition does
not wait for a round trip to Redis or PostgreSQL, and a busy worker sends one message for many jobs.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable

from concord_core.db.engine import Database
from concord_core.settings import Settings

log = logging.getLogger("concord.jobs.notify")

PG_CHANNEL = "concord_notify"
_RECONNECT_SECONDS = 1.0
#: Topics per message stay under this many characters (PostgreSQL's NOTIFY payload limit is 8000 bytes).
MAX_MESSAGE_CHARS = 7000
#: How long :meth:`_ListeningNotifier.close` waits for the publisher to send what is pending.
_FLUSH_SECONDS = 2.0
#: The publisher gathers topics this long after the first one before sending (a job's start and end, or
#: many jobs' when busy, go out as one message); a wake-up comes this much later at most.
_LINGER_SECONDS = 0.005


def pack_topics(topics: Iterable[str]) -> list[str]:
    """Topics as newline-separated messages of at most :data:`MAX_MESSAGE_CHARS` characters."""
    messages: list[str] = []
    current: list[str] = []
    size = 0
    for topic in sorted(set(topics)):
        if current and size + len(topic) + 1 > MAX_MESSAGE_CHARS:
            messages.append("\n".join(current))
            current, size = [], 0
        current.append(topic)
        size += len(topic) + 1
    if current:
        messages.append("\n".join(current))
    return messages


def unpack_topics(message: str) -> list[str]:
    return [topic for topic in message.split("\n") if topic]


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


class _ListeningNotifier(Notifier, abc.ABC):
    """A notifier with a daemon thread that receives other processes' topics and delivers them here, and
    one that sends this process's topics (batched: see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._outbox: set[str] = set()
        self._outbox_lock = threading.Condition()
        self._sending = False
        #: Whether the publisher waits for a first topic (while it lingers it wakes by itself: notifying
        #: it then would cost every publish a thread switch for nothing).
        self._idle = False
        self._publisher: threading.Thread | None = None
        self._closed = False

    def publish(self, topics: Iterable[str]) -> None:
        names = set(topics)
        if not names:
            return
        with self._outbox_lock:
            if self._closed:
                self.deliver(names)
                return
            self._outbox |= names
            if self._publisher is None:
                self._publisher = threading.Thread(
                    target=self._publish_forever, name="concord-notify-publish", daemon=True
                )
                self._publisher.start()
            elif self._idle:
                self._outbox_lock.notify()

    def _publish_forever(self) -> None:
        while True:
            with self._outbox_lock:
                while not self._outbox and not self._closed:
                    self._idle = True
                    self._outbox_lock.wait()
                    self._idle = False
                if not self._outbox:
                    return  # closed, and everything was sent
                linger_until = time.monotonic() + _LINGER_SECONDS
                while not self._closed and (left := linger_until - time.monotonic()) > 0:
                    self._outbox_lock.wait(left)
                batch, self._outbox = self._outbox, set()
                self._sending = True
            try:
                self._send(pack_topics(batch))
            except Exception as exc:  # never fail anything over a wake-up: the waiters' poll catches up
                log.warning("could not publish live updates (%s); subscribers will poll", exc)
                self.deliver(batch)
            finally:
                with self._outbox_lock:
                    self._sending = False
                    self._outbox_lock.notify_all()

    @abc.abstractmethod
    def _send(self, messages: list[str]) -> None:
        """Send each message (newline-separated topics) to every process."""

    def flush(self, timeout: float = _FLUSH_SECONDS) -> bool:
        """Wait until everything published so far was sent (or ``timeout``); whether it was."""
        with self._outbox_lock:
            return self._outbox_lock.wait_for(lambda: not self._outbox and not self._sending, timeout)

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

    @abc.abstractmethod
    def _listen(self) -> None:
        """Receive messages until the connection drops, delivering each to this process's waiters."""

    def close(self) -> None:
        """Send what is pending (for a moment at most), then stop both threads."""
        with self._outbox_lock:
            self._closed = True
            self._outbox_lock.notify_all()
        publisher = self._publisher
        if publisher is not None:
            publisher.join(timeout=_FLUSH_SECONDS)
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

    def _send(self, messages: list[str]) -> None:
        if len(messages) == 1:
            self._redis.publish(self.channel, messages[0])
            return
        pipe = self._redis.pipeline(transaction=False)
        for message in messages:
            pipe.publish(self.channel, message)
        pipe.execute()

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
                    self.deliver(unpack_topics(data.decode() if isinstance(data, bytes) else str(data)))
        finally:
            pubsub.close()
            connection.close()


_NOTIFY = "SELECT pg_notify(%s, message) FROM unnest(%s::text[]) AS message"


class PostgresNotifier(_ListeningNotifier):
    """Topics over PostgreSQL ``NOTIFY`` on the metadata database."""

    def __init__(self, db: Database) -> None:
        super().__init__()
        self._db = db

    def _send(self, messages: list[str]) -> None:
        # Every message in one statement, a transaction of its own: one round trip.
        with self._db.autocommit_statement() as connection:
            connection.execute(_NOTIFY, [PG_CHANNEL, messages])

    def _listen(self) -> None:
        import psycopg

        url = self._db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"LISTEN {PG_CHANNEL}")
            while not self._stop.is_set():
                for notice in conn.notifies(timeout=1.0):
                    self.deliver(unpack_topics(notice.payload))
                    if self._stop.is_set():
                        break


def open_notifier(settings: Settings, db: Database) -> Notifier:
    """The notifier this deployment uses (see the module docstring)."""
    if settings.redis_url:
        return RedisNotifier(settings.redis_url, settings.redis_namespace)
    if db.is_postgres:
        return PostgresNotifier(db)
    return Notifier()
