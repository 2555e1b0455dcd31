"""The PostgreSQL store: the Store contract on asyncpg, shared safely by several replicas.

Every rule that must hold across replicas is decided by the database, in one statement or
one transaction, never by a read in Python followed by a write:

- deliveries: a primary key and `INSERT … ON CONFLICT … WHERE state = 'failed'` decide
  new/requeued versus duplicate; claims are conditional `UPDATE`s (row locks re-check the
  condition), `claim_pending` uses `FOR UPDATE SKIP LOCKED`.
- leases and lock expiry use the server's clock (`now()`), so replicas whose clocks
  disagree still agree on who holds what.
- the audit chain is appended under one transaction-level advisory lock, so it stays a
  single chain whichever replica writes.
- a repository's remediation holds a session-level advisory lock on a connection of a
  separate small pool, so waiting for a repository never starves the pool the work needs.
- each open store (a process) holds a session-level advisory lock on a key derived from
  its owner id, on a connection of its own, and is registered in `locks` as
  `process:<owner>`: a registered owner whose lock nobody holds (pg_locks) is dead, and its
  claims are taken at once instead of when their lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg

# Imported as a module, not by name: bot.audit_chain imports bot.store.base, so a
# from-import here could meet a partially initialised module when bot.store imports us.
from bot import audit_chain
from bot.logs import get_logger
from bot.outcomes import Outcome
from bot.redact import REDACTOR, mask_url_credentials
from bot.store.base import (
    DONE,
    FAILED,
    PROCESSING,
    QUEUED,
    SCHEMA_VERSION,
    AuditEntry,
    AuditRecord,
    Delivery,
    HeldLock,
    NewDelivery,
    ReconcileTurn,
    Store,
    StoreUnavailable,
    SweepProgress,
    audit_record_from_row,
    delivery_from_row,
    new_owner,
)
from bot.turns import give_back_turn

log = get_logger("moko.store")


def _advisory_key(name: str) -> int:
    """A signed 64-bit advisory lock key for a name (PostgreSQL's bigint lock space)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# Advisory lock keys; the names keep them apart from repository keys.
MIGRATION_LOCK = _advisory_key("moko:schema-migration")
AUDIT_CHAIN_LOCK = _advisory_key("moko:audit-chain")

# A connection that died under an operation (the server restarted, an administrator ended
# the session): the operation is tried again on a new connection after each of these delays,
# about 4 s in all, long enough for a restart and short of GitHub's 10 s for the intake.
_CONNECTION_LOST = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown, starting up
    OSError,
    # A session ended while its connection sat idle in the pool: asyncpg can read the server's
    # last message (FATAL, admin shutdown) before it sees the socket close, which leaves the
    # connection's protocol wedged, so its next operation fails with "cannot switch to state
    # …; another operation (2) is in progress". The pool drops that connection on release.
    asyncpg.InternalClientError,
)
_RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)

# Opening the store gives up on a server that does not answer after this long.
_CONNECT_TIMEOUT = 10.0
# What an unreachable or refusing server raises while the store opens.
_UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

# Rate-limit hits older than this are deleted whatever their key (a key's own old hits
# are deleted each time it is counted); windows longer than this are not supported.
HIT_RETENTION_SECONDS = 86400.0
_HIT_CLEANUP_EVERY = 256

# Migrations: MIGRATIONS[n] takes the schema from version n to n + 1. Append only.
MIGRATIONS: list[list[str]] = [
    [
        """
        CREATE TABLE deliveries (
            id              TEXT PRIMARY KEY,
            event           TEXT NOT NULL,
            installation_id BIGINT,
            headers         JSONB NOT NULL,
            body            BYTEA NOT NULL,
            state           TEXT NOT NULL
                            CHECK (state IN ('queued', 'processing', 'done', 'failed')),
            attempts        INTEGER NOT NULL DEFAULT 0,
            error           TEXT,
            owner           TEXT,
            lease_until     TIMESTAMPTZ,
            received_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
            finished_at     TIMESTAMPTZ
        )
        """,
        """
        CREATE INDEX deliveries_pending ON deliveries (received_at, id)
            WHERE state IN ('queued', 'processing')
        """,
        # before/after hold the JSON text exactly as written (TEXT, not JSONB, which
        # would reorder keys and normalise numbers); the hash is over the canonical form.
        """
        CREATE TABLE audit_log (
            seq          BIGINT PRIMARY KEY,
            time         TIMESTAMPTZ NOT NULL,
            run_id       TEXT NOT NULL,
            trigger      TEXT NOT NULL,
            installation BIGINT,
            repo         TEXT NOT NULL,
            actor        TEXT NOT NULL,
            policy       TEXT NOT NULL,
            field        TEXT NOT NULL,
            before       TEXT NOT NULL,
            after        TEXT NOT NULL,
            outcome      TEXT NOT NULL,
            error        TEXT,
            prev_hash    TEXT NOT NULL UNIQUE,
            hash         TEXT NOT NULL UNIQUE
        )
        """,
        "CREATE INDEX audit_log_repo ON audit_log (repo, seq)",
        "CREATE INDEX audit_log_time ON audit_log (time)",
        "CREATE INDEX audit_log_run ON audit_log (run_id, seq)",
        """
        CREATE TABLE sweeps (
            id       TEXT PRIMARY KEY,
            org      TEXT NOT NULL,
            started  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
            finished TIMESTAMPTZ,
            retry_of TEXT REFERENCES sweeps (id) ON DELETE SET NULL
        )
        """,
        # At most one unfinished sweep per organization, whatever the replicas do.
        "CREATE UNIQUE INDEX sweeps_one_open ON sweeps (org) WHERE finished IS NULL",
        "CREATE INDEX sweeps_started ON sweeps (org, started)",
        """
        CREATE TABLE sweep_checkpoints (
            sweep_id TEXT NOT NULL REFERENCES sweeps (id) ON DELETE CASCADE,
            repo     TEXT NOT NULL,
            outcome  TEXT NOT NULL,
            detail   TEXT,
            at       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
            UNIQUE (sweep_id, repo)
        )
        """,
        """
        CREATE TABLE locks (
            name    TEXT PRIMARY KEY,
            owner   TEXT NOT NULL,
            expires TIMESTAMPTZ NOT NULL
        )
        """,
        "CREATE TABLE rate_hits (key TEXT NOT NULL, at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX rate_hits_key_at ON rate_hits (key, at)",
        "CREATE INDEX rate_hits_at ON rate_hits (at)",
    ],
    # 2: finished deliveries are pruned after MOKO_DELIVERY_RETENTION_DAYS (by received_at).
    [
        "CREATE INDEX deliveries_finished ON deliveries (received_at) WHERE state IN ('done', 'failed')",
    ],
    # 3: continuous reconciliation, one turn per installation under a lease.
    [
        """
        CREATE TABLE reconcile_turns (
            installation_id BIGINT PRIMARY KEY,
            account         TEXT NOT NULL,
            due_at          TIMESTAMPTZ NOT NULL,
            interval        DOUBLE PRECISION,
            owner           TEXT,
            lease_until     TIMESTAMPTZ,
            last_started    TIMESTAMPTZ,
            last_finished   TIMESTAMPTZ
        )
        """,
        "CREATE INDEX reconcile_turns_due ON reconcile_turns (due_at)",
    ],
    # 4: the failed deliveries GitHub was asked to redeliver, each asked for once.
    [
        "CREATE TABLE redeliveries (guid TEXT PRIMARY KEY, asked_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        "CREATE INDEX redeliveries_asked ON redeliveries (asked_at)",
    ],
]

_DELIVERY_FIELDS = ("id", "event", "installation_id", "headers", "body", "state", "attempts", "error", "received_at")
_DELIVERY_COLUMNS = ", ".join(_DELIVERY_FIELDS)
_AUDIT_COLUMNS = (
    "seq, time, run_id, trigger, installation, repo, actor, policy, field,"
    " before, after, outcome, error, prev_hash, hash"
)
# A lease of lease_seconds from the server's now(); $n is a float number of seconds.
_LEASE = "now() + make_interval(secs => {})"

# A process's liveness lock: a session advisory lock on this key of its owner id.
_LIVE_KEY = "hashtextextended('moko:live:' || {}, 0)"
_PROCESS = "process:"  # the name of a process's registration row in locks
_LIVE_CHECK_EVERY = 5.0
# After a process took its liveness lock again (the server restarted: every process lost
# its lock at once), how long it leaves the others' claims alone: each of them notices its
# own loss within a check, and takes its lock again as soon as the server is back.
_LIVE_GRACE = 2 * _LIVE_CHECK_EVERY
# The owners registered as processes whose liveness lock no session holds: they are gone.
_DEAD_OWNERS = f"""
    SELECT substr(l.name, {len(_PROCESS) + 1}) FROM locks AS l
    WHERE l.name LIKE '{_PROCESS}%'
      AND NOT EXISTS (
        SELECT 1 FROM pg_locks AS p
        WHERE p.locktype = 'advisory' AND p.objsubid = 1 AND p.granted
          AND p.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND ((p.classid::bigint << 32) | p.objid::bigint) = {_LIVE_KEY.format(f"substr(l.name, {len(_PROCESS) + 1})")}
      )
"""



def _reconnecting(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Run a store operation again on a fresh connection when its connection died under it.

    The pool replaces a closed connection when one is next acquired. An operation that failed
    this way did not commit (or, if the connection died during COMMIT, rarely did: the
    operations are conditional updates and upserts, which a second run leaves as they are;
    an audit append finds its entries already in the chain and appends nothing)."""

    @functools.wraps(method)
    async def retrying(self: PostgresStore, *args: Any, **kwargs: Any) -> Any:
        for delay in _RETRY_DELAYS:
            try:
                return await method(self, *args, **kwargs)
            except _CONNECTION_LOST as exc:
                log.warning(
                    "store_connection_lost", operation=method.__name__, retry_in=delay,
                    error=REDACTOR.text(f"{type(exc).__name__}: {exc}"),
                )
                await self._sleep(delay)
        return await method(self, *args, **kwargs)

    return retrying


class PostgresStore(Store):
    """The store on a PostgreSQL server, for one or many replicas."""

    def __init__(
        self,
        url: str,
        *,
        min_connections: int = 1,
        max_connections: int = 10,
        max_lock_connections: int = 10,
        audit_key: str | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        owner: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("a PostgreSQL store needs a postgresql:// or postgres:// URL")
        self.url = url
        self.owner = owner or new_owner()
        self._live_conn: asyncpg.Connection | None = None
        self._live_keeper: asyncio.Task[None] | None = None
        self._live_regained = float("-inf")  # when this process last set out to take it again
        self._clock = clock
        self._audit_key = audit_key.encode() if audit_key else None
        self._sleep = sleep
        self._min_connections = min_connections
        self._max_connections = max_connections
        self._max_lock_connections = max_lock_connections
        self._pool_handle: asyncpg.Pool | None = None
        self._lock_pool_handle: asyncpg.Pool | None = None
        self._hits_counted = 0
        self._longest_window = 0.0

    # --- lifecycle ----------------------------------------------------------

    async def open(self) -> None:
        if self._pool_handle is not None:
            return
        if len(MIGRATIONS) != SCHEMA_VERSION:
            raise RuntimeError(
                f"bot.store.postgres has {len(MIGRATIONS)} migrations but SCHEMA_VERSION is {SCHEMA_VERSION}"
            )
        try:
            pool = await asyncpg.create_pool(
                self.url, min_size=self._min_connections, max_size=self._max_connections,
                timeout=_CONNECT_TIMEOUT,
            )
        except _UNREACHABLE as exc:
            raise self._unavailable(exc) from None
        try:
            await self._migrate(pool)
            # Repository locks wait on their own connections, so any number of waiters
            # cannot take the connections that the lock holders need to finish.
            lock_pool = await asyncpg.create_pool(
                self.url, min_size=0, max_size=self._max_lock_connections, timeout=_CONNECT_TIMEOUT
            )
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, _UNREACHABLE):
                raise self._unavailable(exc) from None
            raise
        self._pool_handle, self._lock_pool_handle = pool, lock_pool
        try:
            await self._hold_liveness()
        except BaseException as exc:
            await self.close()
            if isinstance(exc, _UNREACHABLE):
                raise self._unavailable(exc) from None
            raise
        self._live_keeper = asyncio.create_task(self._keep_liveness(), name="moko-store-liveness")

    async def _hold_liveness(self) -> None:
        """Take this process's liveness lock on a connection of its own, register the process,
        and remove the registrations of dead processes that no claim refers to any more."""
        conn = await asyncpg.connect(self.url, timeout=_CONNECT_TIMEOUT)
        try:
            await conn.execute(f"SELECT pg_advisory_lock({_LIVE_KEY.format('$1')})", self.owner)
        except BaseException:
            await conn.close()
            raise
        self._live_conn = conn
        await self._pool.execute(
            "INSERT INTO locks (name, owner, expires) VALUES ($1, $2, 'infinity') ON CONFLICT (name) DO NOTHING",
            _PROCESS + self.owner,
            self.owner,
        )
        await self._pool.execute(
            f"""
            DELETE FROM locks WHERE name IN (
                SELECT '{_PROCESS}' || dead.owner FROM ({_DEAD_OWNERS}) AS dead (owner)
                WHERE NOT EXISTS (
                    SELECT 1 FROM deliveries WHERE state = 'processing' AND deliveries.owner = dead.owner
                )
            )
            """
        )

    async def _keep_liveness(self) -> None:
        """A lost connection (the server restarted) lost the lock too: take it again, soon,
        as other replicas would take this process's claims meanwhile."""
        while True:
            await asyncio.sleep(_LIVE_CHECK_EVERY)
            conn = self._live_conn
            try:
                if conn is None or conn.is_closed():
                    raise ConnectionError("liveness connection closed")
                await conn.fetchval("SELECT 1", timeout=_LIVE_CHECK_EVERY)
            except Exception as exc:
                log.warning("store_liveness_lost", error=mask_url_credentials(str(exc)))
                if conn is not None:
                    conn.terminate()
                self._live_conn = None
                # The grace counts from the try that takes it again (before the lock is held).
                self._live_regained = self._clock()
                with contextlib.suppress(*_UNREACHABLE):
                    await self._hold_liveness()
                    log.info("store_liveness_regained")

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return StoreUnavailable(mask_url_credentials(f"cannot open the PostgreSQL store at {self.url}: {reason}"))

    async def _migrate(self, pool: asyncpg.Pool) -> None:
        """Bring the schema to SCHEMA_VERSION, one replica at a time, all or nothing."""
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS moko_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            stored = await conn.fetchval("SELECT value FROM moko_meta WHERE key = 'schema_version'")
            version = int(stored) if stored is not None else 0
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"the database's schema version {version} is newer than this Moko's {SCHEMA_VERSION}"
                )
            for steps in MIGRATIONS[version:]:
                for statement in steps:
                    await conn.execute(statement)
            await conn.execute(
                """
                INSERT INTO moko_meta (key, value) VALUES
                    ('schema_version', $1), ('audit_anchor', $2), ('audit_anchor_seq', '0')
                ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
                WHERE moko_meta.key = 'schema_version'
                """,
                str(SCHEMA_VERSION),
                audit_chain.GENESIS_HASH,
            )

    async def close(self) -> None:
        keeper, self._live_keeper = self._live_keeper, None
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        live, self._live_conn = self._live_conn, None
        if live is not None:
            if self._pool_handle is not None:
                with contextlib.suppress(*_UNREACHABLE):
                    await self._pool_handle.execute(
                        "DELETE FROM locks WHERE name = $1 AND owner = $2", _PROCESS + self.owner, self.owner
                    )
            with contextlib.suppress(*_UNREACHABLE):
                await live.close(timeout=5)
        pools = [self._lock_pool_handle, self._pool_handle]
        self._pool_handle = self._lock_pool_handle = None
        for pool in pools:
            if pool is not None:
                await pool.close()

    @property
    def _pool(self) -> asyncpg.Pool:
        if self._pool_handle is None:
            raise RuntimeError("the PostgreSQL store is not open")
        return self._pool_handle

    async def ping(self) -> None:
        async with self._pool.acquire(timeout=5) as conn:
            await conn.fetchval("SELECT 1", timeout=5)

    async def heartbeat(self) -> None:
        await self._pool.execute(
            "INSERT INTO moko_meta (key, value) VALUES ('heartbeat', clock_timestamp()::text) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            timeout=5,
        )

    @_reconnecting
    async def schema_version(self) -> int:
        value = await self._pool.fetchval("SELECT value FROM moko_meta WHERE key = 'schema_version'")
        return int(value) if value is not None else 0

    # --- deliveries ---------------------------------------------------------

    @_reconnecting
    async def add_delivery(self, delivery: NewDelivery) -> bool:
        # One statement: a new ID inserts; an ID that ended failed is requeued; any other
        # stored ID matches no row. Concurrent duplicates wait on the key and re-check the
        # WHERE against the committed row, so exactly one of them gets a row back.
        row = await self._pool.fetchrow(
            """
            INSERT INTO deliveries (id, event, installation_id, headers, body, state)
            VALUES ($1, $2, $3, $4::jsonb, $5, 'queued')
            ON CONFLICT (id) DO UPDATE SET
                event = EXCLUDED.event,
                installation_id = EXCLUDED.installation_id,
                headers = EXCLUDED.headers,
                body = EXCLUDED.body,
                state = 'queued',
                error = NULL,
                owner = NULL,
                lease_until = NULL,
                finished_at = NULL,
                received_at = clock_timestamp()
            WHERE deliveries.state = 'failed'
            RETURNING id
            """,
            delivery.id,
            delivery.event,
            delivery.installation_id,
            json.dumps(dict(delivery.headers)),
            bytes(delivery.body),
        )
        return row is not None

    @_reconnecting
    async def add_and_claim(
        self, delivery: NewDelivery, owner: str, lease_seconds: float
    ) -> tuple[bool, Delivery | None]:
        # add_delivery's statement, storing the delivery already claimed: one round trip.
        row = await self._pool.fetchrow(
            f"""
            INSERT INTO deliveries (id, event, installation_id, headers, body, state, owner, lease_until, attempts)
            VALUES ($1, $2, $3, $4::jsonb, $5, 'processing', $6, {_LEASE.format("$7")}, 1)
            ON CONFLICT (id) DO UPDATE SET
                event = EXCLUDED.event,
                installation_id = EXCLUDED.installation_id,
                headers = EXCLUDED.headers,
                body = EXCLUDED.body,
                state = 'processing',
                error = NULL,
                owner = EXCLUDED.owner,
                lease_until = EXCLUDED.lease_until,
                attempts = deliveries.attempts + 1,
                finished_at = NULL,
                received_at = clock_timestamp()
            WHERE deliveries.state = 'failed'
            RETURNING {_DELIVERY_COLUMNS}
            """,
            delivery.id,
            delivery.event,
            delivery.installation_id,
            json.dumps(dict(delivery.headers)),
            bytes(delivery.body),
            owner,
            float(lease_seconds),
        )
        return (True, _delivery(row)) if row is not None else (False, None)

    @_reconnecting
    async def claim_delivery(self, delivery_id: str, owner: str, lease_seconds: float) -> Delivery | None:
        row = await self._pool.fetchrow(
            f"""
            UPDATE deliveries
            SET state = 'processing', owner = $2, lease_until = {_LEASE.format("$3")},
                attempts = attempts + 1
            WHERE id = $1
              AND (state = 'queued' OR (state = 'processing' AND lease_until < now()))
            RETURNING {_DELIVERY_COLUMNS}
            """,
            delivery_id,
            owner,
            float(lease_seconds),
        )
        return _delivery(row) if row is not None else None

    def _judges_liveness(self) -> bool:
        """Whether this process may take a claim for a dead process's because that process
        holds no liveness lock: not while it holds none itself (the server restarted: every
        process lost its lock, and has not taken it again yet), nor for a while after taking
        its own again (the others are taking theirs)."""
        conn = self._live_conn
        if conn is None or conn.is_closed():
            return False
        return self._clock() - self._live_regained >= _LIVE_GRACE

    @_reconnecting
    async def claim_pending(self, owner: str, lease_seconds: float, limit: int) -> list[Delivery]:
        if limit <= 0:
            return []
        # A process is never dead to itself: what it claimed is in its queue or at work.
        rows = await self._pool.fetch(
            f"""
            WITH picked AS (
                SELECT id FROM deliveries
                WHERE state = 'queued'
                   OR (state = 'processing' AND (lease_until < now()
                       OR ($4 AND owner <> $1 AND owner IN ({_DEAD_OWNERS}))))
                ORDER BY received_at, id
                LIMIT $3
                FOR UPDATE SKIP LOCKED
            )
            UPDATE deliveries AS d
            SET state = 'processing', owner = $1, lease_until = {_LEASE.format("$2")},
                attempts = d.attempts + 1
            FROM picked
            WHERE d.id = picked.id
            RETURNING {", ".join(f"d.{field}" for field in _DELIVERY_FIELDS)}
            """,
            owner,
            float(lease_seconds),
            limit,
            self._judges_liveness(),
        )
        return sorted((_delivery(row) for row in rows), key=lambda d: (d.received_at, d.id))

    @_reconnecting
    async def renew_lease(self, delivery_id: str, owner: str, lease_seconds: float) -> bool:
        row = await self._pool.fetchrow(
            f"""
            UPDATE deliveries SET lease_until = {_LEASE.format("$3")}
            WHERE id = $1 AND owner = $2 AND state = 'processing'
            RETURNING id
            """,
            delivery_id,
            owner,
            float(lease_seconds),
        )
        return row is not None

    @_reconnecting
    async def release_delivery(self, delivery_id: str, owner: str) -> None:
        await self._pool.execute(
            """
            UPDATE deliveries SET state = 'queued', owner = NULL, lease_until = NULL
            WHERE id = $1 AND owner = $2 AND state = 'processing'
            """,
            delivery_id,
            owner,
        )

    @_reconnecting
    async def finish_delivery(self, delivery_id: str, owner: str, state: str, error: str | None = None) -> None:
        if state not in (DONE, FAILED):
            raise ValueError(f"a delivery finishes {DONE!r} or {FAILED!r}, not {state!r}")
        # Only the current holder may finish: a worker whose lease expired and was taken
        # over by another replica changes nothing.
        await self._pool.execute(
            """
            UPDATE deliveries
            SET state = $3, error = $4, lease_until = NULL, finished_at = clock_timestamp()
            WHERE id = $1 AND owner = $2 AND state = 'processing'
            """,
            delivery_id,
            owner,
            state,
            error,
        )

    @_reconnecting
    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        row = await self._pool.fetchrow(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE id = $1", delivery_id
        )
        return _delivery(row) if row is not None else None

    @_reconnecting
    async def prune_deliveries(self, received_before: datetime, limit: int) -> int:
        status = await self._pool.execute(
            "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries "
            "WHERE state IN ('done', 'failed') AND received_at < $1 LIMIT $2)",
            received_before,
            limit,
        )
        return int(status.split()[-1])

    @_reconnecting
    async def count_deliveries(self, state: str) -> int:
        if state not in (QUEUED, PROCESSING, DONE, FAILED):
            raise ValueError(f"unknown delivery state {state!r}")
        return await self._pool.fetchval("SELECT count(*) FROM deliveries WHERE state = $1", state)

    # --- audit trail ----------------------------------------------------------

    @_reconnecting
    async def append_audit(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        if not entries:
            return []
        async with self._pool.acquire() as conn, conn.transaction():
            # The lock is held until commit, so the next writer reads this batch's last hash.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_CHAIN_LOCK)
            first = entries[0]
            # Run again after a connection lost during COMMIT, which may have committed: the
            # same entries (their time included) already in the chain are not appended twice.
            stored = await conn.fetch(
                f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE run_id = $1 AND time = $2 AND repo = $3 "
                "AND field = $4 AND outcome = $5 ORDER BY seq LIMIT 1",
                first.run_id, _utc(first.time), first.repo, first.field, first.outcome,
            )
            if stored:
                seq = stored[0]["seq"]
                rows = await conn.fetch(
                    f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE seq >= $1 AND seq < $2 ORDER BY seq",
                    seq, seq + len(entries),
                )
                return [_audit_record(row) for row in rows]
            last = await conn.fetchrow("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            if last is None:
                prev_hash, prev_seq = await _anchor(conn)
            else:
                prev_hash, prev_seq = last["hash"], last["seq"]
            records = audit_chain.chain(entries, prev_hash, prev_seq + 1, self._audit_key)
            await conn.executemany(
                f"""
                INSERT INTO audit_log ({_AUDIT_COLUMNS})
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                """,
                [_audit_row(record) for record in records],
            )
        return records

    @_reconnecting
    async def audit_records(
        self,
        *,
        repo: str | None = None,
        since: datetime | None = None,
        run_id: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[AuditRecord]:
        conditions: list[str] = []
        args: list[Any] = []
        for column, operator, value in (
            ("repo", "=", repo),
            ("time", ">=", _utc(since) if since is not None else None),
            ("run_id", "=", run_id),
        ):
            if value is not None:
                args.append(value)
                conditions.append(f"{column} {operator} ${len(args)}")
        query = f"SELECT {_AUDIT_COLUMNS} FROM audit_log"
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        query += " ORDER BY seq DESC" if newest_first else " ORDER BY seq"
        if limit is not None:
            args.append(max(limit, 0))
            query += f" LIMIT ${len(args)}"
        rows = await self._pool.fetch(query, *args)
        return [_audit_record(row) for row in rows]

    @_reconnecting
    async def audit_anchor(self) -> str:
        async with self._pool.acquire() as conn:
            anchor, _seq = await _anchor(conn)
        return anchor

    @_reconnecting
    async def audit_chain(self) -> tuple[str, list[AuditRecord]]:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            anchor, _seq = await _anchor(conn)
            rows = await conn.fetch(f"SELECT {_AUDIT_COLUMNS} FROM audit_log ORDER BY seq")
        return anchor, [_audit_record(row) for row in rows]

    @_reconnecting
    async def audit_head(self) -> tuple[int, str]:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            last = await conn.fetchrow("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            if last is not None:
                return last["seq"], last["hash"]
            anchor, seq = await _anchor(conn)
        return seq, anchor

    @_reconnecting
    async def prune_audit(self, older_than: datetime) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_CHAIN_LOCK)
            # Only a prefix of the chain may go: stop at the first record that is not old
            # enough, even if later ones are (times come from the callers' clocks).
            deleted = await conn.fetch(
                """
                DELETE FROM audit_log
                WHERE seq < coalesce(
                    (SELECT min(seq) FROM audit_log WHERE time >= $1),
                    (SELECT max(seq) + 1 FROM audit_log)
                )
                RETURNING seq, hash
                """,
                _utc(older_than),
            )
            if not deleted:
                return 0
            last = max(deleted, key=lambda row: row["seq"])
            await conn.execute(
                """
                UPDATE moko_meta SET value = CASE key WHEN 'audit_anchor' THEN $1 ELSE $2 END
                WHERE key IN ('audit_anchor', 'audit_anchor_seq')
                """,
                last["hash"],
                str(last["seq"]),
            )
        return len(deleted)

    # --- sweeps -------------------------------------------------------------------

    @_reconnecting
    async def start_sweep(self, org: str, *, sweep_id: str, retry_failed: bool = False) -> SweepProgress:
        """Resume the organization's unfinished sweep, or start sweep_id.

        Without retry_failed, an unfinished sweep is resumed: its own id, resumed=True,
        the outcomes checkpointed so far. With retry_failed, the unfinished sweep (if
        any) is marked finished, and sweep_id starts with retry_of = the organization's
        last sweep (by start time) and a copy of every checkpoint of it whose outcome was
        not "failed" (same outcome; detail names the sweep it came from). What is left to
        take is what failed or was never reached. With no earlier sweep at all, it is an
        ordinary new sweep.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _advisory_key(f"moko:sweep:{org}"))
            open_id = await conn.fetchval(
                "SELECT id FROM sweeps WHERE org = $1 AND finished IS NULL", org
            )
            if open_id is not None and not retry_failed:
                return SweepProgress(open_id, org, True, await _outcomes(conn, open_id))
            if open_id is not None:
                await conn.execute("UPDATE sweeps SET finished = clock_timestamp() WHERE id = $1", open_id)
            retry_of = None
            if retry_failed:
                retry_of = await conn.fetchval(
                    "SELECT id FROM sweeps WHERE org = $1 ORDER BY started DESC, id DESC LIMIT 1",
                    org,
                )
            await conn.execute(
                "INSERT INTO sweeps (id, org, retry_of) VALUES ($1, $2, $3)", sweep_id, org, retry_of
            )
            if retry_of is not None:
                await conn.execute(
                    """
                    INSERT INTO sweep_checkpoints (sweep_id, repo, outcome, detail)
                    SELECT $1, repo, outcome, 'carried from sweep ' || $2
                    FROM sweep_checkpoints WHERE sweep_id = $2 AND outcome <> $3
                    """,
                    sweep_id,
                    retry_of,
                    Outcome.FAILED,
                )
            return SweepProgress(sweep_id, org, False, await _outcomes(conn, sweep_id))

    @_reconnecting
    async def checkpoint(self, sweep_id: str, repo: str, outcome: str, detail: str | None = None) -> None:
        await self._pool.execute(
            """
            INSERT INTO sweep_checkpoints (sweep_id, repo, outcome, detail) VALUES ($1, $2, $3, $4)
            ON CONFLICT (sweep_id, repo) DO UPDATE
            SET outcome = EXCLUDED.outcome, detail = EXCLUDED.detail, at = clock_timestamp()
            """,
            sweep_id,
            repo,
            outcome,
            detail,
        )

    @_reconnecting
    async def finish_sweep(self, sweep_id: str) -> None:
        await self._pool.execute(
            "UPDATE sweeps SET finished = clock_timestamp() WHERE id = $1 AND finished IS NULL",
            sweep_id,
        )

    @_reconnecting
    async def sweep_outcomes(self, sweep_id: str) -> dict[str, str]:
        async with self._pool.acquire() as conn:
            return await _outcomes(conn, sweep_id)

    # --- continuous reconciliation -----------------------------------------------

    async def join_reconciliation(self, installation_id: int, account: str, first_in: float) -> bool:
        # xmax = 0 only for a row this statement inserted (an update sets it).
        inserted = await self._pool.fetchval(
            f"""
            INSERT INTO reconcile_turns (installation_id, account, due_at)
            VALUES ($1, $2, {_LEASE.format("$3")})
            ON CONFLICT (installation_id) DO UPDATE SET account = EXCLUDED.account
            RETURNING xmax = 0
            """,
            installation_id,
            account,
            max(0.0, float(first_in)),
        )
        return bool(inserted)

    async def leave_reconciliation(self, installation_id: int) -> bool:
        row = await self._pool.fetchrow(
            "DELETE FROM reconcile_turns WHERE installation_id = $1 RETURNING installation_id", installation_id
        )
        return row is not None

    async def claim_reconcile_turn(self, owner: str, lease_seconds: float) -> ReconcileTurn | None:
        row = await self._pool.fetchrow(
            f"""
            WITH picked AS (
                SELECT installation_id FROM reconcile_turns
                WHERE due_at <= now() AND (lease_until IS NULL OR lease_until < now())
                ORDER BY due_at, installation_id
                LIMIT 1
                FOR UPDATE SKIP LOCKED
            )
            UPDATE reconcile_turns AS t
            SET owner = $1, lease_until = {_LEASE.format("$2")}, last_started = now()
            FROM picked
            WHERE t.installation_id = picked.installation_id
            RETURNING t.*
            """,
            owner,
            float(lease_seconds),
        )
        return _turn(row) if row is not None else None

    async def renew_reconcile_turn(self, installation_id: int, owner: str, lease_seconds: float) -> bool:
        row = await self._pool.fetchrow(
            f"""
            UPDATE reconcile_turns SET lease_until = {_LEASE.format("$3")}
            WHERE installation_id = $1 AND owner = $2
            RETURNING installation_id
            """,
            installation_id,
            owner,
            float(lease_seconds),
        )
        return row is not None

    async def finish_reconcile_turn(
        self, installation_id: int, owner: str, *, next_in: float, interval: float | None
    ) -> bool:
        row = await self._pool.fetchrow(
            f"""
            UPDATE reconcile_turns
            SET owner = NULL, lease_until = NULL, due_at = {_LEASE.format("$3")},
                interval = COALESCE($4, interval), last_finished = now()
            WHERE installation_id = $1 AND owner = $2
            RETURNING installation_id
            """,
            installation_id,
            owner,
            max(0.0, float(next_in)),
            None if interval is None else float(interval),
        )
        return row is not None

    async def reconcile_turns(self) -> list[ReconcileTurn]:
        rows = await self._pool.fetch("SELECT * FROM reconcile_turns ORDER BY installation_id")
        return [_turn(row) for row in rows]

    # --- redeliveries ------------------------------------------------------------

    @_reconnecting
    async def stored_delivery_ids(self, delivery_ids: Sequence[str]) -> set[str]:
        if not delivery_ids:
            return set()
        rows = await self._pool.fetch("SELECT id FROM deliveries WHERE id = ANY($1::text[])", list(delivery_ids))
        return {row["id"] for row in rows}

    @_reconnecting
    async def note_redelivery(self, guid: str) -> bool:
        row = await self._pool.fetchrow(
            "INSERT INTO redeliveries (guid) VALUES ($1) ON CONFLICT (guid) DO NOTHING RETURNING guid", guid
        )
        return row is not None

    @_reconnecting
    async def forget_redelivery(self, guid: str) -> None:
        await self._pool.execute("DELETE FROM redeliveries WHERE guid = $1", guid)

    @_reconnecting
    async def prune_redeliveries(self, asked_before: datetime) -> int:
        status = await self._pool.execute("DELETE FROM redeliveries WHERE asked_at < $1", asked_before)
        return int(status.split()[-1])

    # --- locks and counters -----------------------------------------------------

    @_reconnecting
    async def try_lock(self, name: str, owner: str, ttl_seconds: float) -> bool:
        # Taken when free, expired, or already ours (then the lease is extended).
        row = await self._pool.fetchrow(
            f"""
            INSERT INTO locks (name, owner, expires) VALUES ($1, $2, {_LEASE.format("$3")})
            ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, expires = EXCLUDED.expires
            WHERE locks.expires < now() OR locks.owner = EXCLUDED.owner
            RETURNING name
            """,
            name,
            owner,
            float(ttl_seconds),
        )
        return row is not None

    @_reconnecting
    async def unlock(self, name: str, owner: str) -> None:
        await self._pool.execute("DELETE FROM locks WHERE name = $1 AND owner = $2", name, owner)

    @asynccontextmanager
    async def repository_lock(self, repo: str) -> AsyncIterator[HeldLock]:
        if self._lock_pool_handle is None:
            raise RuntimeError("the PostgreSQL store is not open")
        # GitHub repository names are case-insensitive: Owner/Repo and owner/repo are one.
        key = _advisory_key(f"moko:repo:{repo.lower()}")
        pool = self._lock_pool_handle
        conn = await self._take_repository_lock(pool, key)
        try:
            async def alive() -> str | None:
                # The lock lives exactly as long as this session: if it answers, it holds.
                try:
                    await conn.fetchval("SELECT 1", timeout=5)
                except (*_CONNECTION_LOST, asyncpg.InterfaceError, TimeoutError) as exc:
                    return f"its database connection failed ({type(exc).__name__})"
                return None

            held = HeldLock(repo, probe=alive)

            def closed(_conn: object) -> None:
                held.lose("its database connection closed")
                log.warning("repository_lock_lost", repo=repo, reason=held.lost)

            conn.add_termination_listener(closed)
            try:
                yield held
            finally:
                if held.lost is None and not _detached_or_closed(conn):
                    conn.remove_termination_listener(closed)
                    try:
                        await conn.execute("SELECT pg_advisory_unlock($1)", key)
                    except (*_CONNECTION_LOST, asyncpg.InterfaceError) as exc:
                        # The session, and the lock with it, ended anyway.
                        log.warning("repository_lock_not_released", repo=repo, error=str(exc))
        finally:
            await pool.release(conn)

    async def _take_repository_lock(self, pool: asyncpg.Pool, key: int) -> Any:
        """A connection of the lock pool that holds the advisory lock. A session-level lock
        lives as long as its connection: returned to the pool (cancelled mid-wait, or done),
        the connection is reset, and asyncpg's reset runs pg_advisory_unlock_all(), so no lock
        outlives its holder. Until the lock is held, a connection lost (the server restarting)
        is tried again on a new one, as the store's other operations are: nothing was taken."""
        for delay in (*_RETRY_DELAYS, None):
            conn = None
            try:
                conn = await pool.acquire()
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                    # Another delivery holds the repository (it may wait for a late answer or
                    # its installation's write turn): the worker takes other work meanwhile.
                    give_back_turn()
                    await conn.execute("SELECT pg_advisory_lock($1)", key)
                return conn
            except _CONNECTION_LOST as exc:
                if conn is not None:
                    conn.terminate()  # a session ended mid-statement: not one to reset and reuse
                    await pool.release(conn)
                if delay is None:
                    raise
                log.warning(
                    "store_connection_lost", operation="repository_lock", retry_in=delay,
                    error=REDACTOR.text(f"{type(exc).__name__}: {exc}"),
                )
                await self._sleep(delay)
            except BaseException:
                if conn is not None:
                    await pool.release(conn)
                raise
        raise AssertionError("unreachable")

    @_reconnecting
    async def count_hit(self, key: str, window_seconds: float, now: float) -> int:
        start = now - window_seconds
        self._longest_window = max(self._longest_window, window_seconds)
        self._hits_counted += 1
        async with self._pool.acquire() as conn, conn.transaction():
            # Serialise hits of one key so concurrent hits count each other.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _advisory_key(f"moko:hits:{key}"))
            await conn.execute("DELETE FROM rate_hits WHERE key = $1 AND at <= $2", key, start)
            await conn.execute("INSERT INTO rate_hits (key, at) VALUES ($1, $2)", key, now)
            count = await conn.fetchval(
                "SELECT count(*) FROM rate_hits WHERE key = $1 AND at > $2 AND at <= $3",
                key,
                start,
                now,
            )
            if self._hits_counted % _HIT_CLEANUP_EVERY == 0:
                retention = max(HIT_RETENTION_SECONDS, self._longest_window)
                await conn.execute("DELETE FROM rate_hits WHERE at < $1", now - retention)
        return count


def _detached_or_closed(conn: asyncpg.Connection) -> bool:
    """A pooled connection whose session ended: the pool may have taken it back already."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


# --- row conversion ---------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken as local time, as format_time does."""
    return moment.astimezone(UTC)


def _turn(row: asyncpg.Record) -> ReconcileTurn:
    def moment(value: datetime | None) -> datetime | None:
        return None if value is None else _utc(value)

    return ReconcileTurn(
        installation_id=row["installation_id"],
        account=row["account"],
        due_at=_utc(row["due_at"]),
        interval=row["interval"],
        owner=row["owner"],
        lease_until=moment(row["lease_until"]),
        last_started=moment(row["last_started"]),
        last_finished=moment(row["last_finished"]),
    )


def _delivery(row: asyncpg.Record) -> Delivery:
    return delivery_from_row(row, row["received_at"])


def _json_text(value: Any) -> str:
    """The JSON kept for before/after; loads() of it hashes like the original value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _audit_row(record: AuditRecord) -> tuple[Any, ...]:
    return (
        record.seq,
        _utc(record.time),
        record.run_id,
        record.trigger,
        record.installation,
        record.repo,
        record.actor,
        record.policy,
        record.field,
        _json_text(record.before),
        _json_text(record.after),
        record.outcome,
        record.error,
        record.prev_hash,
        record.hash,
    )


def _audit_record(row: asyncpg.Record) -> AuditRecord:
    return audit_record_from_row(row, row["time"])


async def _anchor(conn: asyncpg.Connection) -> tuple[str, int]:
    """The hash and seq the oldest kept record chains to (genesis and 0 until a prune)."""
    rows = await conn.fetch(
        "SELECT key, value FROM moko_meta WHERE key IN ('audit_anchor', 'audit_anchor_seq')"
    )
    values = {row["key"]: row["value"] for row in rows}
    return values.get("audit_anchor", audit_chain.GENESIS_HASH), int(values.get("audit_anchor_seq", "0"))


async def _outcomes(conn: asyncpg.Connection, sweep_id: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT repo, outcome FROM sweep_checkpoints WHERE sweep_id = $1 ORDER BY repo", sweep_id
    )
    return {row["repo"]: row["outcome"] for row in rows}
