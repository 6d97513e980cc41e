"""The embedded durable message queue: one SQLite file, shared by the processes of one host.

``messages`` holds every message not yet acknowledged; a consumer claims a batch in one
``BEGIN IMMEDIATE`` transaction by moving its ``visible_at`` one lease into the future and
incrementing ``delivery_count``. ``ack`` deletes, ``retry`` moves ``visible_at`` to now + delay,
and a consumer that dies (even by ``kill -9``) simply lets its lease run out, after which the
message is claimed again: at-least-once. A message already delivered ``delivery_limit`` times
is moved to ``dead_letters`` by the next claim instead of being delivered.

Durability: ``publish`` returns after the COMMIT that contains the message. In WAL mode with
``synchronous=NORMAL`` a committed transaction is in the WAL file (the OS page cache), which
survives the crash of any process; only a power loss or kernel crash can roll back the last
transactions. ``synchronous="FULL"`` (an fsync per commit) makes commits survive those too.

Every write runs on one writer thread per queue object with its own connection. Operations
that arrive while a transaction commits are batched into the next one (group commit), each in
a SAVEPOINT of its own so one failing operation fails only its caller. Correctness never
depends on in-process state: claims, leases and counts live in the file, so several processes
(SCP workers publishing, an indexer consuming) share it safely. Waiting consumers poll at
``poll_interval`` (a cheap read on a reader connection) and are also woken at once by a commit
of a publish in the same process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from archive.adapters._sqlite import connect as sqlite_connect
from archive.core.errors import BackendUnavailable, ConfigError
from archive.core.ports import DeadLetter, Delivery, QueueDepth

log = logging.getLogger(__name__)

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

SCHEMA_VERSION = 2
DELIVERY_LIMIT_REASON = "delivery limit reached"
_MAX_BATCH = 2000  # operations per group-commit transaction
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS queue_schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body BLOB NOT NULL,
    enqueued_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0
)""",
    "CREATE INDEX IF NOT EXISTS messages_visible ON messages (visible_at, id)",
    """CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    body BLOB NOT NULL,
    enqueued_at REAL NOT NULL,
    dead_at REAL NOT NULL,
    delivery_count INTEGER NOT NULL,
    reason TEXT NOT NULL
)""",
)

# v2: claims record their owner (a process on this host), so the claims of a consumer that
# died (kill -9) are released as soon as another consumer notices, not after the lease.
_MIGRATIONS = {2: "ALTER TABLE messages ADD COLUMN owner TEXT"}
_RELEASE_CHECK_SECONDS = 2.0


def _process_start(pid: int) -> str | None:
    """The start time of a process on this host (clock ticks since boot), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # the command name (field 2) may hold spaces; fields after the last ")" are fixed
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # not ours to judge: let its lease run out
    return _process_start(int(pid)) == started


# Wake-ups of consumers waiting in this process, by database file: latency only, never
# correctness (other processes are seen by polling).
_waiters: dict[Path, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
_waiters_lock = threading.Lock()


def _wake(path: Path) -> None:
    with _waiters_lock:
        waiters = list(_waiters.get(path, ()))
    for loop, event in waiters:
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # that loop is closed
            pass


def _unavailable(exc: BaseException) -> BaseException:
    """Locked past busy_timeout, disk full or gone, file unopenable: transient for callers."""
    if isinstance(exc, sqlite3.OperationalError):
        return BackendUnavailable("queue", str(exc))
    return exc


class SqliteDelivery:
    """A claimed message; ``ack`` or ``retry`` settles it once."""

    def __init__(self, queue: SqliteQueue, message_id: int, body: bytes, delivery_count: int) -> None:
        self.body = body
        self.delivery_count = delivery_count
        self.message_id = message_id
        self._queue = queue
        self._settled = False

    def _settle(self) -> None:
        if self._settled:
            raise RuntimeError(f"message {self.message_id} is already settled")
        self._settled = True

    async def ack(self) -> None:
        self._settle()
        await self._queue._ack(self.message_id)

    async def retry(self, delay: float) -> None:
        self._settle()
        await self._queue._retry(self.message_id, self.delivery_count, delay)

    def __repr__(self) -> str:
        return f"SqliteDelivery(id={self.message_id}, delivery_count={self.delivery_count})"


class SqliteQueue:
    """The embedded MessageQueue in the SQLite file ``path`` (created by ``migrate``).

    ``lease_seconds``: how long a claimed message stays invisible; a consumer that dies holds
    its messages that long (so it must exceed the time to process a batch). ``poll_interval``:
    how often a waiting consumer looks for messages published by other processes.
    ``synchronous``: "NORMAL" survives process crashes (``kill -9``); "FULL" also power loss.
    """

    name = "sqlite-queue"

    def __init__(
        self,
        path: Path,
        delivery_limit: int = 5,
        lease_seconds: float = 300.0,
        poll_interval: float = 0.02,
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 30.0,
    ) -> None:
        if delivery_limit < 1:
            raise ConfigError(f"queue delivery_limit must be >= 1, not {delivery_limit}")
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ConfigError(f"queue synchronous must be one of {', '.join(_SYNCHRONOUS)}, not {synchronous!r}")
        self.path = Path(path)
        self.delivery_limit = delivery_limit
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        self._key = self.path.resolve()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-queue-write")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-queue-read")
        self._write_conn: sqlite3.Connection | None = None
        self._read_conn: sqlite3.Connection | None = None
        self._pending: list[tuple[Op, Future[Any]]] = []
        self._pending_lock = threading.Lock()
        self._flush_scheduled = False
        self._closed = False
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid())}"
        self._next_release_check = 0.0

    # connections: each lives in (and is used only by) its executor's one thread

    def _connect(self) -> sqlite3.Connection:
        return sqlite_connect(self.path, "queue", synchronous=self.synchronous, busy_timeout=self.busy_timeout)

    def _w(self) -> sqlite3.Connection:
        if self._write_conn is None:
            self._write_conn = self._connect()
        return self._write_conn

    def _r(self) -> sqlite3.Connection:
        if self._read_conn is None:
            self._read_conn = self._connect()
            self._read_conn.execute("PRAGMA query_only=ON")
        return self._read_conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise BackendUnavailable("queue", "the queue is closed")

        def run() -> T:
            try:
                return fn(self._r())
            except sqlite3.OperationalError as exc:
                raise BackendUnavailable("queue", str(exc)) from exc

        return await asyncio.get_running_loop().run_in_executor(self._reader, run)

    # group commit on the writer thread

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` in a write transaction, batched with whatever else is pending."""
        future: Future[T] = Future()
        with self._pending_lock:
            if self._closed:
                raise BackendUnavailable("queue", "the queue is closed")
            self._pending.append((op, future))
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            self._writer.submit(self._flush)
        return await asyncio.wrap_future(future)

    def _flush(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
            if self._pending:
                self._writer.submit(self._flush)
            else:
                self._flush_scheduled = False
        self._commit(batch)

    def _commit(self, batch: list[tuple[Op, Future[Any]]]) -> None:
        """One transaction for the whole batch; each future resolves after the COMMIT."""
        batch = [(op, fut) for op, fut in batch if fut.set_running_or_notify_cancel()]
        if not batch:
            return
        results: list[tuple[Future[Any], BaseException | None, Any]] = []
        try:
            conn = self._w()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for op, fut in batch:
                    conn.execute("SAVEPOINT op")
                    try:
                        results.append((fut, None, op(conn)))
                    except Exception as exc:  # fails this caller only
                        conn.execute("ROLLBACK TO op")
                        results.append((fut, exc, None))
                    conn.execute("RELEASE op")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except Exception as exc:  # nothing of this transaction is durable
            for _, fut in batch:
                fut.set_exception(_unavailable(exc))
            return
        for fut, error, value in results:
            if error is None:
                fut.set_result(value)
            else:
                fut.set_exception(_unavailable(error))

    # Backend

    async def migrate(self) -> None:
        def op(conn: sqlite3.Connection) -> None:
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT max(version) FROM queue_schema_version").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise ConfigError(f"queue schema {current} in {self.path} is newer than this code ({SCHEMA_VERSION})")
            columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
            for version, statement in sorted(_MIGRATIONS.items()):
                if version > current and "owner" not in columns:
                    conn.execute(statement)
            if current < SCHEMA_VERSION:
                conn.execute("DELETE FROM queue_schema_version")
                conn.execute("INSERT INTO queue_schema_version VALUES (?)", (SCHEMA_VERSION,))

        await self._write(op)

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1 FROM messages LIMIT 1").fetchall())

    async def close(self) -> None:
        if self._closed:
            return
        with self._pending_lock:
            self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._drain_and_close)
        await loop.run_in_executor(self._reader, self._close_conn, "_read_conn")
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    def _drain_and_close(self) -> None:
        """Writes accepted before the close still commit; then the connection closes."""
        while True:
            with self._pending_lock:
                batch, self._pending = self._pending, []
            if not batch:
                break
            self._commit(batch)
        self._close_conn("_write_conn")

    def _close_conn(self, attribute: str) -> None:
        conn: sqlite3.Connection | None = getattr(self, attribute)
        if conn is not None:
            conn.close()
            setattr(self, attribute, None)

    # MessageQueue

    async def publish(self, body: bytes) -> None:
        data = bytes(body)

        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute(
                "INSERT INTO messages (body, enqueued_at, visible_at, delivery_count) VALUES (?, ?, ?, 0)",
                (data, now, now),
            )

        await self._write(op)  # returns after the COMMIT that holds the message
        _wake(self._key)

    def _release_dead_claims(self, conn: sqlite3.Connection, now: float) -> None:
        """Make the claims of consumers that died visible again (at-least-once, promptly)."""
        owners = [row[0] for row in conn.execute(
            "SELECT DISTINCT owner FROM messages WHERE visible_at > ? AND owner IS NOT NULL AND owner != ?",
            (now, self._owner),
        )]
        for owner in owners:
            if not _owner_alive(owner):
                released = conn.execute(
                    "UPDATE messages SET visible_at = ?, owner = NULL WHERE owner = ? AND visible_at > ?",
                    (now, owner, now),
                ).rowcount
                log.warning("released %d queue messages claimed by a consumer that died", released)

    def _claim(self, conn: sqlite3.Connection, max_messages: int) -> list[tuple[int, bytes, int]]:
        now = time.time()
        if now >= self._next_release_check:
            self._next_release_check = now + _RELEASE_CHECK_SECONDS
            self._release_dead_claims(conn, now)
        claimed: list[tuple[int, bytes, int]] = []
        while len(claimed) < max_messages:
            rows = conn.execute(
                "SELECT id, body, enqueued_at, delivery_count FROM messages WHERE visible_at <= ? "
                "ORDER BY visible_at, id LIMIT ?",
                (now, max_messages - len(claimed)),
            ).fetchall()
            if not rows:
                break
            for message_id, body, enqueued_at, count in rows:
                if count >= self.delivery_limit:
                    conn.execute(
                        "INSERT OR REPLACE INTO dead_letters (id, body, enqueued_at, dead_at, delivery_count, reason) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (message_id, body, enqueued_at, now, count, DELIVERY_LIMIT_REASON),
                    )
                    conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
                    log.warning("queue message %d dead-lettered after %d deliveries", message_id, count)
                else:
                    conn.execute(
                        "UPDATE messages SET visible_at = ?, delivery_count = ?, owner = ? WHERE id = ?",
                        (now + self.lease_seconds, count + 1, self._owner, message_id),
                    )
                    claimed.append((message_id, bytes(body), count + 1))
        return claimed

    def _any_visible(self, conn: sqlite3.Connection) -> bool:
        row = conn.execute("SELECT 1 FROM messages WHERE visible_at <= ? LIMIT 1", (time.time(),)).fetchone()
        return row is not None

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        if max_messages < 1:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        event = asyncio.Event()
        waiter = (loop, event)
        with _waiters_lock:
            _waiters.setdefault(self._key, set()).add(waiter)
        try:
            while True:
                event.clear()
                rows = await self._write(lambda conn: self._claim(conn, max_messages))
                if rows:
                    return [SqliteDelivery(self, i, body, count) for i, body, count in rows]
                # Nothing visible: wait for a local publish or the next poll, then peek
                # cheaply on the reader before taking the write lock again.
                while True:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return []
                    try:
                        await asyncio.wait_for(event.wait(), min(self.poll_interval, remaining))
                    except TimeoutError:
                        pass
                    if event.is_set() or await self._read(self._any_visible):
                        break
        finally:
            with _waiters_lock:
                waiters = _waiters.get(self._key)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del _waiters[self._key]

    async def _ack(self, message_id: int) -> None:
        # Deleted even if the lease ran out meanwhile: the work is done, and a concurrent
        # redelivery is harmless for an idempotent consumer.
        await self._write(lambda conn: conn.execute("DELETE FROM messages WHERE id = ?", (message_id,)))

    async def _retry(self, message_id: int, delivery_count: int, delay: float) -> None:
        def op(conn: sqlite3.Connection) -> int:
            # Only while still ours: a lapsed lease may have been claimed again by now.
            cursor = conn.execute(
                "UPDATE messages SET visible_at = ?, owner = NULL WHERE id = ? AND delivery_count = ?",
                (time.time() + max(delay, 0.0), message_id, delivery_count),
            )
            return cursor.rowcount

        if await self._write(op) == 0:
            log.info("queue message %d: retry after its lease ran out; left to the new claim", message_id)
        elif delay <= self.poll_interval:
            _wake(self._key)

    async def depth(self) -> QueueDepth:
        def count(conn: sqlite3.Connection) -> QueueDepth:
            ready = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            return QueueDepth(ready=int(ready), dead=int(dead))

        return await self._read(count)

    async def replay(self, limit: int = 100) -> int:
        def op(conn: sqlite3.Connection) -> int:
            now = time.time()
            rows = conn.execute("SELECT id, body FROM dead_letters ORDER BY dead_at, id LIMIT ?", (limit,)).fetchall()
            for dead_id, body in rows:  # one transaction: queued and removed together
                conn.execute(
                    "INSERT INTO messages (body, enqueued_at, visible_at, delivery_count) VALUES (?, ?, ?, 0)",
                    (body, now, now),
                )
                conn.execute("DELETE FROM dead_letters WHERE id = ?", (dead_id,))
            return len(rows)

        moved = await self._write(op)
        if moved:
            log.info("replayed %d dead-lettered queue messages", moved)
            _wake(self._key)
        return moved

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        def fetch(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT body, delivery_count, reason FROM dead_letters ORDER BY dead_at, id LIMIT ?", (limit,)
            ).fetchall()
            return [DeadLetter(bytes(body), int(count), str(reason)) for body, count, reason in rows]

        return await self._read(fetch)
