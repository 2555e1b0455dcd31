"""Writing the audit trail: redact secrets, stamp the time, append to the store's hash chain;
and logging the chain's head, so that a cut or rewritten trail shows from outside the database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from bot.audit_chain import is_keyed
from bot.logs import get_logger
from bot.outcomes import AUDIT_OUTCOMES, Outcome
from bot.redact import REDACTOR, Redactor
from bot.store.base import AuditEntry, AuditRecord, AuditTrail

log = get_logger("moko.audit")

# How often `moko serve` logs the chain's head (also at start and at shutdown).
AUDIT_HEAD_EVERY = 300.0



def utcnow() -> datetime:
    return datetime.now(UTC)


class AuditWriter:
    """Appends records for a run; every string in them is redacted first."""

    def __init__(self, store: AuditTrail, *, redactor: Redactor = REDACTOR, clock: Callable[[], datetime] = utcnow) -> None:
        self._store = store
        self._redactor = redactor
        self._clock = clock

    def now(self) -> datetime:
        return self._clock()

    async def write(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        for entry in entries:
            if entry.outcome not in AUDIT_OUTCOMES:
                raise ValueError(f"unknown audit outcome {entry.outcome!r}")
        return await self._store.append_audit([self._redacted(entry) for entry in entries])

    def _redacted(self, entry: AuditEntry) -> AuditEntry:
        before, after = self._redactor.value(entry.before), self._redactor.value(entry.after)
        error = self._redactor.text(entry.error) if entry.error else entry.error
        field = self._redactor.text(entry.field)
        if before is entry.before and after is entry.after and error is entry.error and field == entry.field:
            return entry  # most entries hold no secret: no copy (two for each change made)
        return replace(entry, before=before, after=after, error=error, field=field)


async def vouch_for_plain_records(store: AuditTrail, writer: AuditWriter, owner: str) -> AuditRecord | None:
    """With MOKO_AUDIT_KEY newly set, one keyed record after the records written without it:
    its HMAC covers their last hash, so a rewrite of them shows at once, not only after the
    next change (``verify_chain``). Nothing when the head is keyed already, or the trail empty.
    The store must have been opened with the key."""
    seq, digest = await store.audit_head()
    if seq == 0 or is_keyed(digest):
        return None
    [record] = await writer.write([AuditEntry(
        time=writer.now(), run_id=f"start-{owner}", trigger="start", installation=None, repo="",
        actor="moko", policy="audit", field="MOKO_AUDIT_KEY", before=None, after=None, outcome=Outcome.APPLIED,
    )])
    log.info("audit_key_set", seq=record.seq, plain_records=seq)
    return record


def settled(records: Sequence[AuditRecord]) -> list[AuditRecord]:
    """The records as a reader wants them, in the order given: a pending record is left out
    once a record with its outcome follows it (a later seq, same run, repository, policy and
    field). A pending record with no outcome stays: nobody knows what became of it."""
    outcome_seqs: dict[tuple[str, str, str, str], list[int]] = {}
    for record in records:
        if record.outcome != Outcome.PENDING:
            outcome_seqs.setdefault(_change_key(record), []).append(record.seq)
    # Each outcome settles the latest pending record before it that is still open.
    settled_seqs: set[int] = set()
    for record in sorted((r for r in records if r.outcome == Outcome.PENDING), key=lambda r: -r.seq):
        later = [seq for seq in outcome_seqs.get(_change_key(record), []) if seq > record.seq]
        if later:
            outcome_seqs[_change_key(record)].remove(min(later))
            settled_seqs.add(record.seq)
    return [record for record in records if record.seq not in settled_seqs]


def _change_key(record: AuditRecord) -> tuple[str, str, str, str]:
    return record.run_id, record.repo, record.policy, record.field


async def log_audit_head(store: AuditTrail) -> tuple[int, str]:
    """Log the chain's head (`audit_head`, its seq and hash): kept outside the database, it is
    the anchor `moko audit --verify --anchor SEQ:HASH` checks the trail against."""
    seq, digest = await store.audit_head()
    log.info("audit_head", seq=seq, hash=digest)
    return seq, digest


async def log_audit_heads_forever(
    store: AuditTrail, *, every: float = AUDIT_HEAD_EVERY, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
) -> None:
    """Log the head now and every `every` seconds until cancelled."""
    while True:
        try:
            await log_audit_head(store)
        except Exception as exc:  # the store may be briefly away; the next round logs again
            log.warning("audit_head_unavailable", error=REDACTOR.text(f"{type(exc).__name__}: {exc}"))
        await sleep(every)
