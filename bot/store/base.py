"""The store interface: what Moko keeps durably (deliveries, audit trail, sweep checkpoints,
reconciliation turns, redeliveries asked for, locks), one Protocol per concern, and `Store`
all of them: code names the part it uses.

Two implementations share this contract and one test suite: SQLite (embedded default)
and PostgreSQL (several replicas). Every method is atomic on its own; none is a
read-then-write that two replicas could interleave.
"""

from __future__ import annotations

import abc
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

SCHEMA_VERSION = 4

# Delivery states. A delivery goes queued -> processing -> done | failed;
# a failed one sent again goes back to queued.
QUEUED = "queued"
PROCESSING = "processing"
DONE = "done"
FAILED = "failed"


class StoreUnavailable(RuntimeError):
    """The store could not be opened (unreachable, refused, or of a newer Moko); the message is
    one line, with the password of the database URL masked."""


class RepositoryLockLost(Exception):
    """A repository's lock ended while held (its database connection died, its lease ran out):
    another process may hold it now, so the work under it stops before its next change."""


class HeldLock:
    """A repository lock while it is held; ensure() raises RepositoryLockLost once it is lost.

    probe: an extra check ensure() makes (e.g. that the lock's connection still answers);
    valid_until: a time.monotonic() after which the lock counts as lost (a lease not renewed).
    """

    def __init__(self, repo: str, probe: Callable[[], Awaitable[str | None]] | None = None) -> None:
        self.repo = repo
        self.lost: str | None = None
        self.valid_until: float | None = None
        self._probe = probe

    def lose(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason

    async def ensure(self) -> None:
        if self.lost is None and self.valid_until is not None and time.monotonic() >= self.valid_until:
            self.lose("its lease ran out before it could be renewed")
        if self.lost is None and self._probe is not None:
            reason = await self._probe()
            if reason is not None:
                self.lose(reason)
        if self.lost is not None:
            raise RepositoryLockLost(f"the lock of {self.repo} was lost: {self.lost}")


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery as stored before it was acknowledged."""

    id: str
    event: str
    installation_id: int | None
    headers: Mapping[str, str]
    body: bytes
    state: str
    attempts: int
    error: str | None
    received_at: datetime


@dataclass(frozen=True)
class NewDelivery:
    """A verified delivery about to be stored."""

    id: str
    event: str
    installation_id: int | None
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class AuditEntry:
    """An audit record before the store puts it in the chain (no hashes yet)."""

    time: datetime
    run_id: str
    trigger: str
    installation: int | None
    repo: str
    actor: str
    policy: str
    field: str
    before: Any
    after: Any
    outcome: str
    error: str | None = None


@dataclass(frozen=True)
class AuditRecord:
    """An audit record as stored: the entry, its position, and its place in the hash chain."""

    seq: int
    time: datetime
    run_id: str
    trigger: str
    installation: int | None
    repo: str
    actor: str
    policy: str
    field: str
    before: Any
    after: Any
    outcome: str
    error: str | None
    prev_hash: str
    hash: str


def delivery_from_row(row: Mapping[str, Any], received_at: datetime) -> Delivery:
    """A stored delivery from a database row (each store converts its own time type)."""
    return Delivery(
        id=row["id"],
        event=row["event"],
        installation_id=row["installation_id"],
        headers=json.loads(row["headers"]),
        body=bytes(row["body"]),
        state=row["state"],
        attempts=row["attempts"],
        error=row["error"],
        received_at=received_at,
    )


def audit_record_from_row(row: Mapping[str, Any], time: datetime) -> AuditRecord:
    """An audit record from a database row; before and after are stored as JSON text."""
    return AuditRecord(
        seq=row["seq"],
        time=time,
        run_id=row["run_id"],
        trigger=row["trigger"],
        installation=row["installation"],
        repo=row["repo"],
        actor=row["actor"],
        policy=row["policy"],
        field=row["field"],
        before=json.loads(row["before"]),
        after=json.loads(row["after"]),
        outcome=row["outcome"],
        error=row["error"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


@dataclass(frozen=True)
class SweepProgress:
    """A sweep of one organization: its id, whether it resumed an unfinished one, and what is done."""

    sweep_id: str
    org: str
    resumed: bool
    outcomes: Mapping[str, str]  # repo name -> outcome recorded by a checkpoint


@dataclass(frozen=True)
class ReconcileTurn:
    """One installation in the continuous reconciliation: when its next turn is due, who
    holds the turn now (a lease), and the interval its last turn settled on."""

    installation_id: int
    account: str
    due_at: datetime
    interval: float | None  # seconds; None before its first turn
    owner: str | None  # the replica holding the turn, while it runs
    lease_until: datetime | None
    last_started: datetime | None
    last_finished: datetime | None


def new_owner() -> str:
    """A process's identity in claims and locks: readable, and unique even on one host."""
    return f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"


class Lifecycle(Protocol):
    """Opening and closing the store, and the process it names."""

    owner: str  # this process's identity in claims and locks (see Store)

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create or migrate the schema to SCHEMA_VERSION."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; pending writes are committed first."""

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The schema version recorded in the database."""


class Health(Protocol):
    """Whether the store answers, and whether it can write."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise if the store does not answer (used by /readyz)."""

    @abc.abstractmethod
    async def heartbeat(self) -> None:
        """Raise unless the store can write: one tiny write (used by /readyz, which a full
        disk or a read-only database must turn to 503, though reads still answer)."""


class Deliveries(Protocol):
    """Webhook deliveries: stored before they are acknowledged, claimed under a lease, finished."""

    @abc.abstractmethod
    async def add_delivery(self, delivery: NewDelivery) -> bool:
        """Store a delivery, committed to disk before returning.

        True when it is now queued: a new ID, or an ID whose earlier delivery
        ended failed (GitHub's Redeliver keeps the ID). False for a duplicate:
        an ID already stored that is queued, processing or done.
        """

    async def add_and_claim(
        self, delivery: NewDelivery, owner: str, lease_seconds: float
    ) -> tuple[bool, Delivery | None]:
        """Store a delivery claimed at once by owner (the intake that will process it).

        (stored, claimed): stored is add_delivery's answer; claimed is the Delivery when owner
        holds it. Stores may do this in one statement; this default takes two, and another
        worker may claim the delivery in between (stored, not claimed: still not a duplicate).
        """
        if not await self.add_delivery(delivery):
            return False, None
        return True, await self.claim_delivery(delivery.id, owner, lease_seconds)

    @abc.abstractmethod
    async def claim_delivery(self, delivery_id: str, owner: str, lease_seconds: float) -> Delivery | None:
        """Atomically move a queued delivery (or one whose lease expired) to processing for owner.

        None when another worker or replica holds it or it is finished.
        """

    @abc.abstractmethod
    async def claim_pending(self, owner: str, lease_seconds: float, limit: int) -> list[Delivery]:
        """Claim up to limit deliveries that are queued, or processing with an expired lease or
        by a process that is gone, oldest first."""

    @abc.abstractmethod
    async def renew_lease(self, delivery_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend owner's lease on a delivery it is processing; False if it lost it."""

    @abc.abstractmethod
    async def release_delivery(self, delivery_id: str, owner: str) -> None:
        """Give a claimed but unfinished delivery back (queued), e.g. on shutdown."""

    @abc.abstractmethod
    async def finish_delivery(self, delivery_id: str, owner: str, state: str, error: str | None = None) -> None:
        """Record the end of processing: state is DONE or FAILED."""

    @abc.abstractmethod
    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """The stored delivery, or None."""

    @abc.abstractmethod
    async def count_deliveries(self, state: str) -> int:
        """How many deliveries are in a state."""

    @abc.abstractmethod
    async def prune_deliveries(self, received_before: datetime, limit: int) -> int:
        """Delete up to limit finished (done or failed) deliveries received before the cutoff;
        return how many went. Unfinished ones always stay."""


class AuditTrail(Protocol):
    """The audit trail: one hash chain of records, appended to atomically."""

    @abc.abstractmethod
    async def append_audit(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Append entries to the single hash chain, atomically against every other writer."""

    @abc.abstractmethod
    async def audit_records(
        self,
        *,
        repo: str | None = None,
        since: datetime | None = None,
        run_id: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[AuditRecord]:
        """Records filtered by repository, time and run, in chain order unless newest_first."""

    @abc.abstractmethod
    async def audit_anchor(self) -> str:
        """The hash the oldest kept record must chain to (genesis, or the last pruned record's hash)."""

    @abc.abstractmethod
    async def audit_chain(self) -> tuple[str, list[AuditRecord]]:
        """The anchor and every record, read in one snapshot: a prune between two separate
        reads would make a sound chain look broken."""

    @abc.abstractmethod
    async def audit_head(self) -> tuple[int, str]:
        """The chain's head as (seq, hash): its newest record, or the last pruned one when
        none is kept ((0, genesis) for a trail never written)."""

    @abc.abstractmethod
    async def prune_audit(self, older_than: datetime) -> int:
        """Delete records older than a time from the start of the chain, keeping it verifiable."""


class SweepCheckpoints(Protocol):
    """Sweeps of an organization, with a checkpoint per repository so that one resumes."""

    @abc.abstractmethod
    async def start_sweep(self, org: str, *, sweep_id: str, retry_failed: bool = False) -> SweepProgress:
        """Resume the organization's unfinished sweep, or start a new one with sweep_id.

        With retry_failed, start a new sweep that only takes the repositories that
        failed in the last finished sweep (outcomes hold the others as done).
        """

    @abc.abstractmethod
    async def checkpoint(self, sweep_id: str, repo: str, outcome: str, detail: str | None = None) -> None:
        """Record that a repository of a sweep finished with an outcome."""

    @abc.abstractmethod
    async def finish_sweep(self, sweep_id: str) -> None:
        """Mark a sweep finished: the next run for the organization starts afresh."""

    @abc.abstractmethod
    async def sweep_outcomes(self, sweep_id: str) -> dict[str, str]:
        """Checkpointed outcomes of a sweep, by repository."""


class ReconciliationTurns(Protocol):
    """The continuous reconciliation: one turn per installation, under a lease."""

    @abc.abstractmethod
    async def join_reconciliation(self, installation_id: int, account: str, first_in: float) -> bool:
        """Add an installation to the cycle, its first turn due first_in seconds from now.
        True when it was new; an installation already in the cycle keeps its turn (the
        account's login is updated)."""

    @abc.abstractmethod
    async def leave_reconciliation(self, installation_id: int) -> bool:
        """Take an installation out of the cycle; True when it was in it."""

    @abc.abstractmethod
    async def claim_reconcile_turn(self, owner: str, lease_seconds: float) -> ReconcileTurn | None:
        """Atomically take the most overdue turn that no live lease holds (none held by
        anyone, or one whose holder stopped renewing it), for owner, for lease_seconds."""

    @abc.abstractmethod
    async def renew_reconcile_turn(self, installation_id: int, owner: str, lease_seconds: float) -> bool:
        """Extend owner's lease on a turn it is running; False when it no longer holds it."""

    @abc.abstractmethod
    async def finish_reconcile_turn(
        self, installation_id: int, owner: str, *, next_in: float, interval: float | None
    ) -> bool:
        """End owner's turn: the next is due next_in seconds from now, and interval (when
        given) is recorded as the installation's interval. False when owner had lost it."""

    @abc.abstractmethod
    async def reconcile_turns(self) -> list[ReconcileTurn]:
        """Every installation in the cycle, by installation id."""


class Redeliveries(Protocol):
    """Which deliveries Moko holds, and which GitHub was asked to send again."""

    @abc.abstractmethod
    async def stored_delivery_ids(self, delivery_ids: Sequence[str]) -> set[str]:
        """Which of these delivery IDs the store holds, in any state."""

    @abc.abstractmethod
    async def note_redelivery(self, guid: str) -> bool:
        """Remember that GitHub is asked to redeliver the delivery with this guid: True when
        it was not asked before (the caller asks), False when someone already did."""

    @abc.abstractmethod
    async def forget_redelivery(self, guid: str) -> None:
        """Forget a redelivery that could not be asked for, so that it is asked again later."""

    @abc.abstractmethod
    async def prune_redeliveries(self, asked_before: datetime) -> int:
        """Forget redeliveries asked before a time (GitHub no longer lists their deliveries)."""


class NamedLocks(Protocol):
    """Lease locks by name, for work one replica does at a time (a sweep, a poll)."""

    @abc.abstractmethod
    async def try_lock(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take a named lease lock (e.g. the scheduled sweep); True if owner holds it now."""

    @abc.abstractmethod
    async def unlock(self, name: str, owner: str) -> None:
        """Release a named lock held by owner."""


class RepositoryLocks(Protocol):
    """One repository's changes at a time, across processes and replicas."""

    @abc.abstractmethod
    @asynccontextmanager
    async def repository_lock(self, repo: str) -> AsyncIterator[HeldLock]:
        """Hold the lock of one repository while its changes are applied (across replicas);
        the work checks the HeldLock before each change, as the lock can end on its own."""
        yield HeldLock(repo)


class HitCounter(Protocol):
    """Counting hits in a sliding window (the commands' rate limit)."""

    @abc.abstractmethod
    async def count_hit(self, key: str, window_seconds: float, now: float) -> int:
        """Record one hit for key and return the hits within the window ending now (this one included)."""


class Store(
    Lifecycle, Health, Deliveries, AuditTrail, SweepCheckpoints, ReconciliationTurns, Redeliveries,
    NamedLocks, RepositoryLocks, HitCounter, Protocol,
):
    """Everything durable, shared by the web intake, the workers, the CLI and other replicas:
    each of its parts above, for the code that needs only that one.

    `owner` is the identity of the process that opened the store. While the store is open,
    the process holds a liveness signal that dies with it (SQLite: an flock on a file beside
    the database; PostgreSQL: a session advisory lock): deliveries claimed by an owner whose
    signal is gone are taken again at once, without waiting for their lease. Claims by an
    owner that never held a signal are judged by their lease alone.
    """
