"""Writing the audit trail: redact secrets, stamp the time, append to the store's hash chain;
and logging the chain's head, so that a cut or rewritten trail shows from outside the database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from bot.logs import get_logger
from bot.redact import REDACTOR, Redactor
from bot.store.base import AuditEntry, AuditRecord, Store

log = get_logger("moko.audit")

# How often `moko serve` logs the chain's head (also at start and at shutdown).
AUDIT_HEAD_EVERY = 300.0

OUTCOMES = ("applied", "dry-run", "failed", "rolled-back", "deferred", "denied")


def utcnow() -> datetime:
    return datetime.now(UTC)


class AuditWriter:
    """Appends records for a run; every string in them is redacted first."""

    def __init__(self, store: Store, *, redactor: Redactor = REDACTOR, clock: Callable[[], datetime] = utcnow) -> None:
        self._store = store
        self._redactor = redactor
        self._clock = clock

    def now(self) -> datetime:
        return self._clock()

    async def write(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        for entry in entries:
            if entry.outcome not in OUTCOMES:
                raise ValueError(f"unknown audit outcome {entry.outcome!r}")
        clean = [
            replace(
                entry,
                before=self._redactor.value(entry.before),
                after=self._redactor.value(entry.after),
                error=self._redactor.text(entry.error) if entry.error else entry.error,
                field=self._redactor.text(entry.field),
            )
            for entry in entries
        ]
        return await self._store.append_audit(clean)


async def log_audit_head(store: Store) -> tuple[int, str]:
    """Log the chain's head (`audit_head`, its seq and hash): kept outside the database, it is
    the anchor `moko audit --verify --anchor SEQ:HASH` checks the trail against."""
    seq, digest = await store.audit_head()
    log.info("audit_head", seq=seq, hash=digest)
    return seq, digest


async def log_audit_heads_forever(
    store: Store, *, every: float = AUDIT_HEAD_EVERY, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
) -> None:
    """Log the head now and every `every` seconds until cancelled."""
    while True:
        try:
            await log_audit_head(store)
        except Exception as exc:  # the store may be briefly away; the next round logs again
            log.warning("audit_head_unavailable", error=REDACTOR.text(f"{type(exc).__name__}: {exc}"))
        await sleep(every)
