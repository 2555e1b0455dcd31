"""Group commit for the SQLite store: concurrent writes share one transaction and one fsync.

The connection belongs to the event loop that opened the store. Callers queue their
operations; everything queued runs in one transaction on the loop (an operation of
several statements inside its own savepoint, so one failing operation does not undo the
others), the COMMIT runs in a helper thread, and only when it has returned is every
caller answered. Acknowledged deliveries are therefore on disk, while fifty concurrent
deliveries cost one fsync instead of fifty.

How the work is split, and why (measured with bench/intake.py on 2 cores):
- The statements run on the loop. Python's sqlite3 gives up the GIL around every
  statement, and a thread gets it back from a busy loop only at the interpreter's switch
  interval: the earlier design, a writer thread for everything, spent most of its time
  waiting for the GIL (2,600 deliveries/s against 3,000 with the statements on the loop).
- The COMMIT, which is the WAL write and the fsync with the GIL released, runs in the
  helper thread, so the loop reads the next requests meanwhile; the loop is held only
  for the statements themselves (a few microseconds each).
- At most one commit starts per _COMMIT_INTERVAL: an fsync costs the same for one write
  or fifty, so under load a commit carries a millisecond's writes. A write arriving after a
  quiet spell commits at once.
- Under load (the last commit carried _LOADED_BATCH operations or more), the next one starts
  _LOADED_INTERVAL after it, not _COMMIT_INTERVAL, unless an urgent operation waits (a
  delivery's acknowledgement: GitHub times out). Each commit costs an fsync, which on a
  virtual disk costs about 0.15 ms of CPU however little it writes, and every page the batch
  touches is written once per commit however many operations changed it: fewer, fuller
  commits cost less per delivery. A lone caller (a CLI sweep, one command) never meets
  the longer interval: its commits carry one operation each.
- No busy wait inside SQLite, which would block the loop: when another process holds the
  write lock, the batch is tried again from the loop a little later.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_BATCH_LIMIT = 512
# At most one commit starts per this many seconds (see the module's docstring), or per
# _LOADED_INTERVAL after a commit of _LOADED_BATCH operations or more, unless one is urgent.
_COMMIT_INTERVAL = 0.001
_LOADED_BATCH = 8
_LOADED_INTERVAL = 0.010
# Another process holding the write lock: retry this often, give up after this long. Two
# seconds, not more: the intake's acknowledgement waits on it, and GitHub gives up at 10 s;
# the caller answers 503 with Retry-After instead.
_BUSY_RETRY = 0.002
_BUSY_TIMEOUT = 2.0
# Opening the file (before the store serves anyone) may wait longer for another process.
_OPEN_TIMEOUT = 30.0


def connect_writer(path: str) -> sqlite3.Connection:
    """The connection the batches run on, set up for group commit."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Setting up may wait for another process (the store is not in use yet); later it may
    # not. The COMMIT runs in the helper thread, never at the same time as the loop's use.
    conn = sqlite3.connect(path, isolation_level=None, timeout=_OPEN_TIMEOUT, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before the caller hears about it (group commit pays for it).
    conn.execute("PRAGMA synchronous=FULL")
    # No busy wait inside SQLite: it would block the event loop. A batch that finds the
    # write lock taken (another process on this file) is retried from the loop instead.
    conn.execute("PRAGMA busy_timeout=0")
    return conn


def connect_reader(path: str) -> sqlite3.Connection:
    """The connection reads run on, outside the batches (see GroupCommit.read)."""
    reader = sqlite3.connect(path, isolation_level=None, timeout=1.0)
    reader.row_factory = sqlite3.Row
    return reader


class _Job:
    __slots__ = ("fn", "future", "atomic", "urgent")

    def __init__(
        self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any], atomic: bool, urgent: bool
    ) -> None:
        self.fn = fn
        self.future = future
        self.atomic = atomic
        self.urgent = urgent


def _fail_all(batch: Sequence[_Job], error: BaseException) -> None:
    for job in batch:
        if not job.future.done():
            job.future.set_exception(error)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


class GroupCommit:
    """The writer connection's batches and commits, and the reader connection, on one event loop."""

    def __init__(
        self,
        *,
        commit_interval: float = _COMMIT_INTERVAL,
        loaded_batch: int = _LOADED_BATCH,
        loaded_interval: float = _LOADED_INTERVAL,
    ) -> None:
        self._commit_interval = commit_interval
        self._loaded_batch = loaded_batch
        self._loaded_interval = loaded_interval
        self._conn: sqlite3.Connection | None = None
        # The reader connection; in memory, the writer's own (one database per connection).
        self.reader: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[_Job] = []
        self._flush_handle: asyncio.Handle | None = None
        self._commit: asyncio.Future[Any] | None = None
        self._last_begin = 0.0
        self._last_size = 0  # operations the last batch carried
        self._urgent = False  # an urgent operation waits in _pending
        self._waiting_out_load = False  # the scheduled flush waits out the loaded interval
        self._committer: ThreadPoolExecutor | None = None
        self._busy_since: float | None = None
        self.commits = 0  # transactions committed, for the benchmark's group-commit figure

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def start(self, conn: sqlite3.Connection) -> None:
        """Run batches on conn, from the running event loop, from now on."""
        self._conn = conn
        self._loop = asyncio.get_running_loop()
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="moko-sqlite-commit")

    async def call(
        self, fn: Callable[[sqlite3.Connection], Any], *, atomic: bool = False, urgent: bool = False
    ) -> Any:
        """Run fn in the next batch; atomic: fn is a single statement (no savepoint needed);
        urgent: its caller must not wait out the loaded interval (an acknowledgement)."""
        return await self.submit(fn, atomic=atomic, urgent=urgent)

    def submit(
        self, fn: Callable[[sqlite3.Connection], Any], *, atomic: bool = False, urgent: bool = False
    ) -> asyncio.Future[Any]:
        """Queue fn for the next batch now, in order with every other write; its future."""
        loop = self.own_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Job(fn, future, atomic, urgent))
        if urgent and not self._urgent:
            self._urgent = True
            if self._flush_handle is not None and self._waiting_out_load:
                # The next flush waits out the loaded interval: this one may not.
                self._flush_handle.cancel()
                self._flush_handle = None
        if self._commit is None:
            self._flush_later(loop)
        return future

    async def read(self, fn: Callable[[sqlite3.Connection], Any], *, snapshot: bool = False) -> Any:
        """Run a read on the reader connection, outside the write batches: in WAL mode it sees
        every committed write, and neither waits for nor holds up a writer (this process's
        commit in flight, or another process's batch). A batch would take the write lock for
        the read's whole length: a long `moko audit` would have stalled a server's intake.
        snapshot: fn's statements read one state of the database (one read transaction)."""
        self.own_loop()
        reader = self.reader
        if reader is None or reader is self._conn:
            # In memory the database is the writer's connection: read inside a batch, which
            # is one transaction too.
            return await self.call(fn)
        if not snapshot:
            return fn(reader)
        reader.execute("BEGIN")
        try:
            return fn(reader)
        finally:
            reader.execute("COMMIT")

    def own_loop(self) -> asyncio.AbstractEventLoop:
        if self._conn is None or self._loop is None:
            raise RuntimeError("store is not open")
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("the SQLite store is used from the event loop that opened it")
        return self._loop

    def _flush_later(self, loop: asyncio.AbstractEventLoop) -> None:
        """Schedule the next batch if work waits and none is scheduled (see _COMMIT_INTERVAL)."""
        if self._pending and self._flush_handle is None:
            self._schedule_flush(loop)

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        loaded = self._last_size >= self._loaded_batch and not self._urgent
        due = self._last_begin + (self._loaded_interval if loaded else self._commit_interval)
        self._waiting_out_load = loaded
        if loop.time() >= due:
            self._flush_handle = loop.call_soon(self._flush)
        else:
            self._flush_handle = loop.call_at(due, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self._waiting_out_load = False
        conn, loop = self._conn, self._loop
        if conn is None or loop is None or self._commit is not None:
            return  # a commit in flight flushes again when it completes
        batch = [job for job in self._pending[:_BATCH_LIMIT] if not job.future.done()]
        rest = self._pending[_BATCH_LIMIT:]
        if batch:
            self._last_begin = loop.time()
            self._last_size = len(batch)
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if _is_busy(exc) and not self._waited_too_long():
                    # Another process is writing: try again shortly, without blocking the loop.
                    self._flush_handle = loop.call_later(_BUSY_RETRY, self._flush)
                    return
                self._busy_since = None
                self._take(rest)
                _fail_all(batch, exc)
            else:
                self._busy_since = None
                self._take(rest)
                self._run_batch(conn, loop, batch)
                return
        else:
            self._take(rest)
        self._flush_later(loop)

    def _take(self, rest: list[_Job]) -> None:
        """The batch is taken from the queue: rest waits for the next one."""
        self._pending = rest
        self._urgent = any(job.urgent for job in rest)

    def _waited_too_long(self) -> bool:
        now = time.monotonic()
        if self._busy_since is None:
            self._busy_since = now
        return now - self._busy_since > _BUSY_TIMEOUT

    def _run_batch(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        """Run the batch inside the transaction just begun, then commit it in the committer thread."""
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            for job in batch:
                if job.atomic:
                    # One statement: SQLite undoes a failed statement on its own.
                    try:
                        outcomes.append((job, job.fn(conn), None))
                    except Exception as exc:
                        outcomes.append((job, None, exc))
                    continue
                conn.execute("SAVEPOINT op")
                try:
                    result = job.fn(conn)
                except Exception as exc:  # one operation's error is its caller's, not the batch's
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((job, None, exc))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((job, result, None))
        except Exception as exc:  # the connection itself failed: nothing of the batch stands
            self._rollback(conn)
            _fail_all(batch, exc)
            self._flush_later(loop)
            return
        # The commit (WAL write and fsync, GIL released) runs beside the loop, which goes on
        # reading requests meanwhile: they make the next batch, so batches grow with load.
        self._commit = loop.run_in_executor(self._committer, conn.execute, "COMMIT")
        self._commit.add_done_callback(lambda done: self._committed(done, batch, outcomes))

    def _committed(
        self, done: asyncio.Future[Any], batch: list[_Job], outcomes: list[tuple[_Job, Any, BaseException | None]]
    ) -> None:
        self._commit = None
        conn, loop = self._conn, self._loop
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if error is not None:  # the commit failed: nobody's work is durable
            if conn is not None:
                self._rollback(conn)
            _fail_all(batch, error)
        else:
            self.commits += 1
            for job, result, failure in outcomes:
                if job.future.done():
                    continue
                if failure is not None:
                    job.future.set_exception(failure)
                else:
                    job.future.set_result(result)
        if loop is not None:
            self._flush_later(loop)

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    async def close(self) -> None:
        """Write what callers still wait for (or fail it), then close both connections."""
        if self._conn is None:
            return
        while self._pending or self._commit is not None:
            if self._commit is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._commit)
                await asyncio.sleep(0)  # let the commit's completion callback run
                continue
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            self._flush()
            if self._pending and self._commit is None:
                await asyncio.sleep(_BUSY_RETRY)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        conn, reader, self._conn, self.reader, self._loop = self._conn, self.reader, None, None, None
        if reader is not None and reader is not conn:
            reader.close()
        conn.close()
        if self._committer is not None:
            self._committer.shutdown(wait=False)
            self._committer = None
