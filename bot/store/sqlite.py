"""The embedded SQLite store (stdlib sqlite3, WAL): the schema and the queries.

Every write goes through the group commit (bot/store/group_commit.py), which runs it in the
next batch on the event loop and answers only once the batch is on disk; reads run on a
connection of their own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson

from bot.audit_chain import GENESIS_HASH, chain
from bot.logs import get_logger
from bot.outcomes import Outcome
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
from bot.store.group_commit import GroupCommit, connect_reader, connect_writer
from bot.store.process_files import ProcessFiles
from bot.turns import give_back_turn

log = get_logger("moko.store")

# Ordered migrations: index i brings the schema from version i to i + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS deliveries (
        id TEXT PRIMARY KEY,
        event TEXT NOT NULL,
        installation_id INTEGER,
        headers TEXT NOT NULL,
        body BLOB NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        owner TEXT,
        lease_until REAL,
        received_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (state, received_at);
    CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY,
        time TEXT NOT NULL,
        run_id TEXT NOT NULL,
        trigger TEXT NOT NULL,
        installation INTEGER,
        repo TEXT NOT NULL,
        actor TEXT NOT NULL,
        policy TEXT NOT NULL,
        field TEXT NOT NULL,
        before TEXT NOT NULL,
        after TEXT NOT NULL,
        outcome TEXT NOT NULL,
        error TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS audit_repo ON audit (repo, seq);
    CREATE INDEX IF NOT EXISTS audit_run ON audit (run_id);
    CREATE TABLE IF NOT EXISTS sweeps (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        retry_of TEXT
    );
    CREATE TABLE IF NOT EXISTS sweep_checkpoints (
        sweep_id TEXT NOT NULL,
        repo TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT,
        PRIMARY KEY (sweep_id, repo)
    );
    CREATE TABLE IF NOT EXISTS locks (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL);
    CREATE TABLE IF NOT EXISTS hits (key TEXT NOT NULL, at REAL NOT NULL);
    CREATE INDEX IF NOT EXISTS hits_key ON hits (key, at);
    """,
    # 2: finished deliveries are pruned after MOKO_DELIVERY_RETENTION_DAYS (by received_at).
    """
    CREATE INDEX IF NOT EXISTS deliveries_finished ON deliveries (received_at) WHERE state IN ('done', 'failed');
    """,
    # 3: continuous reconciliation, one turn per installation under a lease.
    """
    CREATE TABLE IF NOT EXISTS reconcile_turns (
        installation_id INTEGER PRIMARY KEY,
        account TEXT NOT NULL,
        due_at REAL NOT NULL,
        interval REAL,
        owner TEXT,
        lease_until REAL,
        last_started REAL,
        last_finished REAL
    );
    CREATE INDEX IF NOT EXISTS reconcile_turns_due ON reconcile_turns (due_at);
    """,
    # 4: the failed deliveries GitHub was asked to redeliver, each asked for once.
    """
    CREATE TABLE IF NOT EXISTS redeliveries (guid TEXT PRIMARY KEY, asked_at REAL NOT NULL);
    CREATE INDEX IF NOT EXISTS redeliveries_asked ON redeliveries (asked_at);
    """,
]

# A process that dies holding a repository's lock loses it after this long (renewed while held).
REPO_LOCK_TTL = 30.0
_REPO_LOCK_POLL = 0.05
# Rate-limit hits older than this are deleted whatever their key, every so many hits (a
# key's own old hits go each time it is counted), as the PostgreSQL store does.
HIT_RETENTION_SECONDS = 86400.0
_HIT_CLEANUP_EVERY = 256


def sqlite_path(url: str) -> str:
    """sqlite:///relative.db -> relative.db; sqlite:////abs/path.db -> /abs/path.db."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url}")
    return url[len("sqlite:///") :]


def _iso(moment: datetime) -> str:
    """A fixed-width UTC spelling, so that comparing the strings compares the times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


# Made once: json.dumps with options builds an encoder for each call (two per audit record).
_dumps = json.JSONEncoder(sort_keys=True, default=str).encode


def _delivery(row: sqlite3.Row) -> Delivery:
    return delivery_from_row(row, datetime.fromtimestamp(row["received_at"], UTC))


def _moment(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _turn(row: sqlite3.Row) -> ReconcileTurn:
    return ReconcileTurn(
        installation_id=row["installation_id"],
        account=row["account"],
        due_at=datetime.fromtimestamp(row["due_at"], UTC),
        interval=row["interval"],
        owner=row["owner"],
        lease_until=_moment(row["lease_until"]),
        last_started=_moment(row["last_started"]),
        last_finished=_moment(row["last_finished"]),
    )


def _record(row: sqlite3.Row) -> AuditRecord:
    return audit_record_from_row(row, datetime.fromisoformat(row["time"].replace("Z", "+00:00")))


class SQLiteStore(Store):
    """Store on one SQLite file; safe for several processes on one machine (WAL, write lock retried)."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        lock_ttl: float = REPO_LOCK_TTL,
        audit_key: str | None = None,
        owner: str | None = None,
        group_commit: GroupCommit | None = None,
    ) -> None:
        self.path = sqlite_path(url)
        self.owner = owner or new_owner()
        self._process_files: ProcessFiles | None = None
        self._audit_key = audit_key.encode() if audit_key else None
        self._lock_ttl = lock_ttl
        self._clock = clock
        self._batches = group_commit or GroupCommit()
        # Writes queue in the next batch (several statements: in a savepoint of their own; atomic:
        # one statement); reads run beside the batches.
        self._call = self._batches.call
        self._submit = self._batches.submit
        self._read = self._batches.read
        self._own_loop = self._batches.own_loop
        self._repo_locks: dict[str, asyncio.Lock] = {}
        # Names each hold of a repository lock: the owner (unique to this process) makes it
        # unique across processes.
        self._lock_serials = itertools.count(1)
        self._hits_counted = 0
        self._longest_window = 0.0

    @property
    def commits(self) -> int:
        """Transactions committed, for the benchmark's group-commit figure."""
        return self._batches.commits

    # --- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        if self._batches.is_open:
            return
        try:
            conn = connect_writer(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open the SQLite store at {self.path}: {exc}") from None
        self._batches.start(conn)
        try:
            await self._call(self._migrate)
            if self.path == ":memory:":
                self._batches.reader = conn  # one in-memory database per connection
            else:
                self._batches.reader = connect_reader(self.path)
                self._hold_process_file()
        except BaseException as exc:
            await self.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreUnavailable(f"cannot open the SQLite store at {self.path}: {exc}") from None
            raise

    def _hold_process_file(self) -> None:
        """Announce this process as alive (an flocked file beside the database), and remove
        the files of dead processes that no claim or lock refers to any more."""
        files = ProcessFiles(self.path)
        if not files.hold(self.owner):
            return
        self._process_files = files
        reader = self._batches.reader
        assert reader is not None

        def referenced(owner: str) -> bool:
            return bool(
                reader.execute(
                    "SELECT EXISTS (SELECT 1 FROM deliveries WHERE state = 'processing' AND owner = ?) "
                    "OR EXISTS (SELECT 1 FROM locks WHERE substr(owner, 1, ?) = ?)",
                    (owner, len(owner) + 1, owner + "/"),
                ).fetchone()[0]
            )

        files.remove_dead(referenced)

    def _dead_owners(self) -> list[str]:
        """The owners of other processes on this file that are gone and may have left claims."""
        if self._process_files is None:
            return []
        return [owner for _, owner in self._process_files.dead_files() if owner and owner != self.owner]

    def _dead(self, owner: str) -> bool:
        """Whether another process that held the liveness file for owner is gone."""
        return owner != self.owner and self._process_files is not None and self._process_files.is_dead(owner)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row["value"]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"database schema version {version} is newer than this Moko ({SCHEMA_VERSION})"
            )
        for step in MIGRATIONS[version:]:
            for statement in step.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )

    async def close(self) -> None:
        if not self._batches.is_open:
            return
        # Whatever callers still wait for is written (or fails) before the file closes.
        await self._batches.close()
        if self._process_files is not None:
            self._process_files.release()
            self._process_files = None

    async def ping(self) -> None:
        await self._call(lambda conn: conn.execute("SELECT 1").fetchone())

    async def heartbeat(self) -> None:
        now = str(self._clock())
        await self._call(
            lambda conn: conn.execute(
                "INSERT INTO meta (key, value) VALUES ('heartbeat', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (now,),
            ),
            atomic=True,
        )

    async def schema_version(self) -> int:
        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            return int(row["value"]) if row else 0

        return await self._call(read)

    # --- deliveries ----------------------------------------------------------

    async def add_delivery(self, delivery: NewDelivery) -> bool:
        now = self._clock()
        headers = orjson.dumps(dict(delivery.headers)).decode()

        def add(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT INTO deliveries (id, event, installation_id, headers, body, state, received_at) "
                "VALUES (?, ?, ?, ?, ?, 'queued', ?) "
                "ON CONFLICT(id) DO UPDATE SET state = 'queued', headers = excluded.headers, "
                "body = excluded.body, error = NULL, owner = NULL, lease_until = NULL, "
                "received_at = excluded.received_at, finished_at = NULL "
                "WHERE deliveries.state = 'failed'",
                (delivery.id, delivery.event, delivery.installation_id, headers, delivery.body, now),
            )
            return cursor.rowcount == 1

        # Urgent: GitHub waits for the acknowledgement, which waits for this commit.
        return bool(await self._call(add, atomic=True, urgent=True))

    async def add_and_claim(
        self, delivery: NewDelivery, owner: str, lease_seconds: float
    ) -> tuple[bool, Delivery | None]:
        now = self._clock()
        headers = orjson.dumps(dict(delivery.headers)).decode()

        def add(conn: sqlite3.Connection) -> tuple[bool, Delivery | None]:
            row = conn.execute(
                "INSERT INTO deliveries (id, event, installation_id, headers, body, state, attempts, owner, "
                "lease_until, received_at) VALUES (?, ?, ?, ?, ?, 'processing', 1, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET state = 'processing', headers = excluded.headers, "
                "body = excluded.body, error = NULL, owner = excluded.owner, lease_until = excluded.lease_until, "
                "attempts = deliveries.attempts + 1, received_at = excluded.received_at, finished_at = NULL "
                "WHERE deliveries.state = 'failed' "
                "RETURNING id, event, installation_id, state, attempts, error, received_at",
                (delivery.id, delivery.event, delivery.installation_id, headers, delivery.body,
                 owner, now + lease_seconds, now),
            ).fetchone()
            if row is None:
                return False, None
            return True, Delivery(
                id=row["id"], event=row["event"], installation_id=row["installation_id"],
                headers=delivery.headers, body=delivery.body, state=row["state"], attempts=row["attempts"],
                error=None, received_at=datetime.fromtimestamp(row["received_at"], UTC),
            )

        return await self._call(add, atomic=True, urgent=True)

    async def claim_delivery(self, delivery_id: str, owner: str, lease_seconds: float) -> Delivery | None:
        now = self._clock()

        def claim(conn: sqlite3.Connection) -> Delivery | None:
            row = conn.execute(
                "UPDATE deliveries SET state = 'processing', owner = ?, lease_until = ?, attempts = attempts + 1 "
                "WHERE id = ? AND (state = 'queued' OR (state = 'processing' AND lease_until < ?)) "
                "RETURNING *",
                (owner, now + lease_seconds, delivery_id, now),
            ).fetchone()
            return _delivery(row) if row else None

        return await self._call(claim, atomic=True)

    async def claim_pending(self, owner: str, lease_seconds: float, limit: int) -> list[Delivery]:
        now = self._clock()
        # Processes that died holding claims whose lease still runs: theirs are taken now. They
        # are told by their files (a dead process stays dead: owners are never reused), not by
        # reading the claims: that read went over every claimed row, and a row's owner lies
        # past its body (3,000 claimed deliveries: 8-20 ms of the loop at each recovery).
        dead = self._dead_owners()
        marks = ", ".join("?" * len(dead))

        def claim(conn: sqlite3.Connection) -> list[Delivery]:
            rows = conn.execute(
                "UPDATE deliveries SET state = 'processing', owner = ?, lease_until = ?, attempts = attempts + 1 "
                "WHERE id IN (SELECT id FROM deliveries WHERE state = 'queued' "
                f"OR (state = 'processing' AND (lease_until < ? OR owner IN ({marks}))) ORDER BY received_at LIMIT ?) "
                "RETURNING *",
                (owner, now + lease_seconds, now, *dead, limit),
            ).fetchall()
            return sorted((_delivery(row) for row in rows), key=lambda d: d.received_at)

        return await self._call(claim, atomic=True)

    async def renew_lease(self, delivery_id: str, owner: str, lease_seconds: float) -> bool:
        until = self._clock() + lease_seconds

        def renew(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE deliveries SET lease_until = ? WHERE id = ? AND owner = ? AND state = 'processing'",
                (until, delivery_id, owner),
            )
            return cursor.rowcount == 1

        return bool(await self._call(renew, atomic=True))

    async def release_delivery(self, delivery_id: str, owner: str) -> None:
        await self._call(
            lambda conn: conn.execute(
                "UPDATE deliveries SET state = 'queued', owner = NULL, lease_until = NULL "
                "WHERE id = ? AND owner = ? AND state = 'processing'",
                (delivery_id, owner),
            ),
            atomic=True,
        )

    async def finish_delivery(self, delivery_id: str, owner: str, state: str, error: str | None = None) -> None:
        if state not in (DONE, FAILED):
            raise ValueError(f"a delivery finishes done or failed, not {state}")
        now = self._clock()
        await self._call(
            lambda conn: conn.execute(
                "UPDATE deliveries SET state = ?, error = ?, owner = NULL, lease_until = NULL, finished_at = ? "
                "WHERE id = ? AND owner = ? AND state = 'processing'",
                (state, error, now, delivery_id, owner),
            ),
            atomic=True,
        )

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        def get(conn: sqlite3.Connection) -> Delivery | None:
            row = conn.execute("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
            return _delivery(row) if row else None

        return await self._read(get)

    async def prune_deliveries(self, received_before: datetime, limit: int) -> int:
        cutoff = received_before.timestamp()
        return int(
            await self._call(
                lambda conn: conn.execute(
                    "DELETE FROM deliveries WHERE rowid IN (SELECT rowid FROM deliveries "
                    "WHERE state IN ('done', 'failed') AND received_at < ? LIMIT ?)",
                    (cutoff, limit),
                ).rowcount,
                atomic=True,
            )
        )

    async def count_deliveries(self, state: str) -> int:
        if state not in (QUEUED, PROCESSING, DONE, FAILED):
            raise ValueError(f"unknown delivery state {state}")
        return await self._read(
            lambda conn: conn.execute("SELECT count(*) FROM deliveries WHERE state = ?", (state,)).fetchone()[0]
        )

    # --- audit -------------------------------------------------------------

    @staticmethod
    def _anchor(conn: sqlite3.Connection) -> str:
        row = conn.execute("SELECT value FROM meta WHERE key = 'audit_anchor'").fetchone()
        return row["value"] if row else GENESIS_HASH

    async def append_audit(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        entries = list(entries)
        if not entries:
            return []

        def append(conn: sqlite3.Connection) -> list[AuditRecord]:
            last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            if last is None:
                prev_hash = self._anchor(conn)
                seq_row = conn.execute("SELECT value FROM meta WHERE key = 'audit_next_seq'").fetchone()
                first_seq = int(seq_row["value"]) if seq_row else 1
            else:
                prev_hash, first_seq = last["hash"], last["seq"] + 1
            records = chain(entries, prev_hash, first_seq, self._audit_key)
            conn.executemany(
                "INSERT INTO audit (seq, time, run_id, trigger, installation, repo, actor, policy, field, "
                "before, after, outcome, error, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.seq, _iso(r.time), r.run_id, r.trigger, r.installation,
                        r.repo, r.actor, r.policy, r.field, _dumps(r.before), _dumps(r.after),
                        r.outcome, r.error, r.prev_hash, r.hash,
                    )
                    for r in records
                ],
            )
            return records

        return await self._call(append)

    async def audit_records(
        self,
        *,
        repo: str | None = None,
        since: datetime | None = None,
        run_id: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[AuditRecord]:
        clauses, params = [], []
        if repo is not None:
            clauses.append("repo = ?")
            params.append(repo)
        if since is not None:
            clauses.append("time >= ?")
            params.append(_iso(since))
        if run_id is not None:
            clauses.append("run_id = ?")
            params.append(run_id)
        sql = "SELECT * FROM audit"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY seq DESC" if newest_first else " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return await self._read(lambda conn: [_record(row) for row in conn.execute(sql, params)])

    async def audit_anchor(self) -> str:
        return await self._read(self._anchor)

    async def audit_chain(self) -> tuple[str, list[AuditRecord]]:
        return await self._read(
            lambda conn: (self._anchor(conn), [_record(row) for row in conn.execute("SELECT * FROM audit ORDER BY seq")]),
            snapshot=True,
        )

    async def audit_head(self) -> tuple[int, str]:
        def head(conn: sqlite3.Connection) -> tuple[int, str]:
            last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            if last is not None:
                return last["seq"], last["hash"]
            next_seq = conn.execute("SELECT value FROM meta WHERE key = 'audit_next_seq'").fetchone()
            return (int(next_seq["value"]) - 1 if next_seq else 0), self._anchor(conn)

        return await self._read(head, snapshot=True)

    async def prune_audit(self, older_than: datetime) -> int:
        cutoff = _iso(older_than)

        def prune(conn: sqlite3.Connection) -> int:
            # Only a prefix of the chain goes, so what stays still links to the new anchor.
            keep = conn.execute("SELECT min(seq) FROM audit WHERE time >= ?", (cutoff,)).fetchone()[0]
            last_row = conn.execute(
                "SELECT seq, hash FROM audit WHERE (? IS NULL OR seq < ?) ORDER BY seq DESC LIMIT 1",
                (keep, keep),
            ).fetchone()
            if last_row is None:
                return 0
            deleted = conn.execute("DELETE FROM audit WHERE seq <= ?", (last_row["seq"],)).rowcount
            for key, value in (("audit_anchor", last_row["hash"]), ("audit_next_seq", str(last_row["seq"] + 1))):
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
            return deleted

        return await self._call(prune)

    # --- sweeps ------------------------------------------------------------

    async def start_sweep(self, org: str, *, sweep_id: str, retry_failed: bool = False) -> SweepProgress:
        now = self._clock()

        def start(conn: sqlite3.Connection) -> SweepProgress:
            open_row = conn.execute(
                "SELECT id FROM sweeps WHERE org = ? AND finished_at IS NULL ORDER BY started_at DESC LIMIT 1",
                (org,),
            ).fetchone()
            if open_row is not None and not retry_failed:
                outcomes = self._outcomes(conn, open_row["id"])
                return SweepProgress(open_row["id"], org, True, outcomes)
            if open_row is not None:
                conn.execute("UPDATE sweeps SET finished_at = ? WHERE id = ?", (now, open_row["id"]))
            retry_of = None
            carried: dict[str, str] = {}
            if retry_failed:
                last = conn.execute(
                    "SELECT id FROM sweeps WHERE org = ? ORDER BY started_at DESC LIMIT 1", (org,)
                ).fetchone()
                if last is not None:
                    retry_of = last["id"]
                    carried = {
                        repo: outcome
                        for repo, outcome in self._outcomes(conn, retry_of).items()
                        if outcome != Outcome.FAILED
                    }
            conn.execute(
                "INSERT INTO sweeps (id, org, started_at, retry_of) VALUES (?, ?, ?, ?)",
                (sweep_id, org, now, retry_of),
            )
            conn.executemany(
                "INSERT INTO sweep_checkpoints (sweep_id, repo, outcome, detail) VALUES (?, ?, ?, 'carried')",
                [(sweep_id, repo, outcome) for repo, outcome in carried.items()],
            )
            return SweepProgress(sweep_id, org, False, carried)

        return await self._call(start)

    @staticmethod
    def _outcomes(conn: sqlite3.Connection, sweep_id: str) -> dict[str, str]:
        rows = conn.execute("SELECT repo, outcome FROM sweep_checkpoints WHERE sweep_id = ?", (sweep_id,))
        return {row["repo"]: row["outcome"] for row in rows}

    async def checkpoint(self, sweep_id: str, repo: str, outcome: str, detail: str | None = None) -> None:
        # Urgent: each of a sweep's few workers waits for its checkpoint before its next
        # repository, so the sweep would go at the loaded interval's pace.
        await self._call(
            lambda conn: conn.execute(
                "INSERT INTO sweep_checkpoints (sweep_id, repo, outcome, detail) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(sweep_id, repo) DO UPDATE SET outcome = excluded.outcome, detail = excluded.detail",
                (sweep_id, repo, outcome, detail),
            ),
            urgent=True,
        )

    async def finish_sweep(self, sweep_id: str) -> None:
        now = self._clock()
        await self._call(
            lambda conn: conn.execute("UPDATE sweeps SET finished_at = ? WHERE id = ?", (now, sweep_id))
        )

    async def sweep_outcomes(self, sweep_id: str) -> dict[str, str]:
        return await self._read(lambda conn: self._outcomes(conn, sweep_id))

    # --- continuous reconciliation -------------------------------------------

    async def join_reconciliation(self, installation_id: int, account: str, first_in: float) -> bool:
        due = self._clock() + max(0.0, first_in)

        def join(conn: sqlite3.Connection) -> bool:
            # Inside one batch (a write transaction): the look and the write are one step.
            cursor = conn.execute(
                "UPDATE reconcile_turns SET account = ? WHERE installation_id = ?", (account, installation_id)
            )
            if cursor.rowcount == 1:
                return False
            conn.execute(
                "INSERT INTO reconcile_turns (installation_id, account, due_at) VALUES (?, ?, ?)",
                (installation_id, account, due),
            )
            return True

        return bool(await self._call(join))

    async def leave_reconciliation(self, installation_id: int) -> bool:
        def leave(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM reconcile_turns WHERE installation_id = ?", (installation_id,))
            return cursor.rowcount == 1

        return bool(await self._call(leave, atomic=True))

    async def claim_reconcile_turn(self, owner: str, lease_seconds: float) -> ReconcileTurn | None:
        now = self._clock()

        def claim(conn: sqlite3.Connection) -> ReconcileTurn | None:
            # One statement: the write lock makes the pick and the take one step.
            row = conn.execute(
                "UPDATE reconcile_turns SET owner = ?, lease_until = ?, last_started = ? "
                "WHERE installation_id = (SELECT installation_id FROM reconcile_turns "
                "WHERE due_at <= ? AND (lease_until IS NULL OR lease_until < ?) "
                "ORDER BY due_at, installation_id LIMIT 1) RETURNING *",
                (owner, now + lease_seconds, now, now, now),
            ).fetchone()
            return _turn(row) if row else None

        return await self._call(claim, atomic=True)

    async def renew_reconcile_turn(self, installation_id: int, owner: str, lease_seconds: float) -> bool:
        until = self._clock() + lease_seconds

        def renew(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE reconcile_turns SET lease_until = ? WHERE installation_id = ? AND owner = ?",
                (until, installation_id, owner),
            )
            return cursor.rowcount == 1

        return bool(await self._call(renew, atomic=True))

    async def finish_reconcile_turn(
        self, installation_id: int, owner: str, *, next_in: float, interval: float | None
    ) -> bool:
        now = self._clock()

        def finish(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE reconcile_turns SET owner = NULL, lease_until = NULL, due_at = ?, "
                "interval = COALESCE(?, interval), last_finished = ? WHERE installation_id = ? AND owner = ?",
                (now + max(0.0, next_in), interval, now, installation_id, owner),
            )
            return cursor.rowcount == 1

        return bool(await self._call(finish, atomic=True))

    async def reconcile_turns(self) -> list[ReconcileTurn]:
        def read(conn: sqlite3.Connection) -> list[ReconcileTurn]:
            rows = conn.execute("SELECT * FROM reconcile_turns ORDER BY installation_id").fetchall()
            return [_turn(row) for row in rows]

        return await self._read(read)

    # --- redeliveries ------------------------------------------------------

    async def stored_delivery_ids(self, delivery_ids: Sequence[str]) -> set[str]:
        wanted = list(dict.fromkeys(delivery_ids))

        def read(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(wanted), 500):  # under SQLite's limit of bound variables
                chunk = wanted[start:start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(row[0] for row in conn.execute(f"SELECT id FROM deliveries WHERE id IN ({marks})", chunk))
            return found

        return await self._read(read) if wanted else set()

    async def note_redelivery(self, guid: str) -> bool:
        now = self._clock()
        return bool(await self._call(
            lambda conn: conn.execute(
                "INSERT INTO redeliveries (guid, asked_at) VALUES (?, ?) ON CONFLICT(guid) DO NOTHING", (guid, now)
            ).rowcount == 1,
            atomic=True,
        ))

    async def forget_redelivery(self, guid: str) -> None:
        await self._call(lambda conn: conn.execute("DELETE FROM redeliveries WHERE guid = ?", (guid,)), atomic=True)

    async def prune_redeliveries(self, asked_before: datetime) -> int:
        cutoff = asked_before.timestamp()
        return int(await self._call(
            lambda conn: conn.execute("DELETE FROM redeliveries WHERE asked_at < ?", (cutoff,)).rowcount, atomic=True
        ))

    # --- locks and counters ------------------------------------------------

    async def try_lock(self, name: str, owner: str, ttl_seconds: float) -> bool:
        now = self._clock()

        def take(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "INSERT INTO locks (name, owner, expires) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, expires = excluded.expires "
                "WHERE locks.expires < ? OR locks.owner = excluded.owner",
                (name, owner, now + ttl_seconds, now),
            )
            row = conn.execute("SELECT owner FROM locks WHERE name = ?", (name,)).fetchone()
            return row is not None and row["owner"] == owner

        return bool(await self._call(take))

    async def unlock(self, name: str, owner: str) -> None:
        await self._call(_release_lock(name, owner), atomic=True)

    @asynccontextmanager
    async def repository_lock(self, repo: str) -> AsyncIterator[HeldLock]:
        # In-process lock first (cheap, fair), then a lease row so a CLI sweep in another
        # process on the same file never interleaves with the server.
        repo = repo.lower()  # GitHub treats Owner/Repo and owner/repo as one repository
        lock = self._repo_locks.setdefault(repo, asyncio.Lock())
        if lock.locked():
            # Waiting on another delivery about this repository (which may itself wait for a
            # late answer or its installation's write turn): the worker takes other work.
            give_back_turn()
        async with lock:
            # The holder is named after this process, so others can tell when it died.
            name, owner = f"repo:{repo}", f"{self.owner}/{next(self._lock_serials)}"
            # Another process holds it: poll its lease row (there is nothing to wait on across
            # processes), and take it at once if that process is gone.
            try:
                while not await self.try_lock(name, owner, self._lock_ttl):  # noqa: ASYNC110
                    if await self._take_from_dead(name, owner):
                        break
                    give_back_turn()
                    await asyncio.sleep(_REPO_LOCK_POLL)
            except asyncio.CancelledError:
                # Cancelled while asking: the row may have been taken all the same; give it back.
                await asyncio.shield(self.unlock(name, owner))
                raise
            held = HeldLock(repo)
            held.valid_until = time.monotonic() + self._lock_ttl
            # Most holds end long before the first renewal is due: a timer, not a task for
            # each hold, which would be made, cancelled and awaited for nothing.
            keepers: list[asyncio.Task[None]] = []
            timer = self._own_loop().call_later(
                self._lock_ttl / 3,
                lambda: keepers.append(asyncio.create_task(self._keep_lock(name, owner, held))),
            )
            try:
                yield held
            finally:
                timer.cancel()
                for keeper in keepers:
                    keeper.cancel()
                    # Not suppress(CancelledError): that would also swallow this task's own
                    # cancellation arriving here, and the cancelled work would carry on.
                    await asyncio.gather(keeper, return_exceptions=True)
                # The release goes with the next commit (the delivery's own end, most often),
                # not one of its own: queued before anything the next holder here asks, it
                # comes first in that batch, and another process may wait a moment longer.
                released = self._submit(_release_lock(name, owner), atomic=True)
                released.add_done_callback(partial(_release_failed, repo))
                if not lock._waiters:  # type: ignore[attr-defined]
                    self._repo_locks.pop(repo, None)

    async def _take_from_dead(self, name: str, owner: str) -> bool:
        """Take a lock row whose holder's process is gone (its lease may still run)."""
        row = await self._read(lambda conn: conn.execute("SELECT owner FROM locks WHERE name = ?", (name,)).fetchone())
        if row is None or "/" not in row["owner"] or not self._dead(row["owner"].rsplit("/", 1)[0]):
            return False
        holder, until = row["owner"], self._clock() + self._lock_ttl
        return bool(
            await self._call(
                lambda conn: conn.execute(
                    "UPDATE locks SET owner = ?, expires = ? WHERE name = ? AND owner = ?", (owner, until, name, holder)
                ).rowcount
                == 1,
                atomic=True,
            )
        )

    async def _keep_lock(self, name: str, owner: str, held: HeldLock) -> None:
        """Renew the lease row while the lock is held, now (a third of the lease after it was
        taken) and every third of it after; a renewal refused means another process took the
        row after the lease ran out, and the holder must stop."""
        while True:
            asked = time.monotonic()
            try:
                renewed = await self.try_lock(name, owner, self._lock_ttl)
            except sqlite3.Error as exc:  # busy or away: the lease says how long we may wait
                log.warning("repository_lock_not_renewed", lock=name, error=str(exc))
            else:
                if not renewed:
                    held.lose("another process took it after its lease ran out")
                    return
                held.valid_until = asked + self._lock_ttl
            await asyncio.sleep(self._lock_ttl / 3)

    async def count_hit(self, key: str, window_seconds: float, now: float) -> int:
        self._longest_window = max(self._longest_window, window_seconds)
        self._hits_counted += 1
        sweep_old = self._hits_counted % _HIT_CLEANUP_EVERY == 0
        retention = max(HIT_RETENTION_SECONDS, self._longest_window)

        def hit(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM hits WHERE key = ? AND at <= ?", (key, now - window_seconds))
            conn.execute("INSERT INTO hits (key, at) VALUES (?, ?)", (key, now))
            if sweep_old:  # keys nobody counts any more would otherwise stay for good
                conn.execute("DELETE FROM hits WHERE at < ?", (now - retention,))
            return conn.execute("SELECT count(*) FROM hits WHERE key = ?", (key,)).fetchone()[0]

        return int(await self._call(hit))


def _release_lock(name: str, owner: str) -> Callable[[sqlite3.Connection], Any]:
    return lambda conn: conn.execute("DELETE FROM locks WHERE name = ? AND owner = ?", (name, owner))


def _release_failed(repo: str, released: asyncio.Future[Any]) -> None:
    # The row expires after the lock's TTL; the work's own error, if any, is what its caller
    # must hear about, not this one.
    if not released.cancelled() and (error := released.exception()) is not None:
        log.warning("repository_lock_not_released", repo=repo, error=str(error))
