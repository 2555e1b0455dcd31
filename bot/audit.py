"""Writing the audit trail: redact secrets, stamp the time, append to the store's hash chain."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from bot.redact import REDACTOR, Redactor
from bot.store.base import AuditEntry, AuditRecord, Store

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
