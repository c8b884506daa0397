"""One SQLite connection on one thread of its own: the one mechanism for every database of the daemon.

SQLite connections are not to be shared between threads while in use, and a
write with ``synchronous=FULL`` fsyncs: neither may run on the event loop.  A
:class:`SqliteWorker` owns one connection and one thread; everything that
touches the connection runs there, through :meth:`call` (awaitable, from the
loop) or :meth:`submit` (a future, from any thread).  A single-threaded
program (the CLI, a test) may use :attr:`db` directly instead.

The segment index, the alarm store, the auth database and the console's
witness store are each a SqliteWorker with a schema of their own.  A module
that needs a second, independent connection to the same file (retention
deleting while recorders add rows) makes a second worker: SQLite in WAL mode
serialises the writers, and each thread waits only for the other's short
transactions, never for its long work.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

BUSY_TIMEOUT_SECONDS = 30


def connect(path: Path | str, schema: str, *, durable: bool = True, foreign_keys: bool = False,
            mode: int | None = None) -> sqlite3.Connection:
    """Open (and create) a database: WAL and ``synchronous=FULL`` when ``durable``; ``":memory:"`` works too."""
    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_SECONDS)
    if durable:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
    if foreign_keys:
        db.execute("PRAGMA foreign_keys=ON")
    db.executescript(schema)
    if mode is not None and isinstance(path, Path):
        path.chmod(mode)
    return db


class SqliteWorker:
    """A database connection with a thread of its own; subclasses add their queries."""

    def __init__(self, name: str, opener: Callable[[], sqlite3.Connection]) -> None:
        self.worker_name = name
        self._opener = opener
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    # -- the thread -----------------------------------------------------------------------

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.worker_name)
            return self._executor

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the worker's thread and await its result."""
        return await asyncio.get_running_loop().run_in_executor(self._pool(), fn, *args)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on the worker's thread; callable from any thread, never blocks."""
        return self._pool().submit(fn, *args)

    def close(self) -> None:
        """Finish the queued work, close the connection and the thread. Idempotent; blocks (call off the loop)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.submit(self._close_db).result()
            executor.shutdown(wait=True)
        else:
            self._close_db()

    # -- the connection (worker thread, or a single-threaded program) ----------------------

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._opener()
        return self._db

    def open(self) -> None:
        """Open the connection now (and create the schema)."""
        _ = self.db

    def replace_db(self, db: sqlite3.Connection) -> None:
        """Swap the connection (worker thread): the alarm store moves from memory onto the storage."""
        self._close_db()
        self._db = db

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
