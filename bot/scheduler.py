"""The scheduled reconciliation inside `moko serve`: every MOKO_SWEEP_INTERVAL one replica, and
only one, sweeps every installation (a lock in the store), then prunes the audit trail."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.context import Services
from bot.logs import get_logger

log = get_logger("moko.scheduler")

LOCK_NAME = "scheduled-sweep"
# A replica that dies mid-sweep holds the lock this long at most; a live one renews it.
LEASE_SECONDS = 300.0
# How often each replica looks whether a sweep is due (never more often than the interval).
POLL_SECONDS = 60.0

SweepAll = Callable[[Services], Awaitable[Any]]


class ScheduledSweeps:
    """One replica's side of the schedule.

    Every replica polls; the one that takes the lock sweeps. After a sweep that completed,
    it keeps the lock for the whole interval, so that no replica (nor this one after a
    restart) sweeps again before the next one is due. A sweep that failed or was stopped
    gives the lock back at once: the next poll anywhere resumes it from its checkpoints.
    """

    def __init__(
        self,
        services: Services,
        sweep_all: SweepAll,
        *,
        lease_seconds: float = LEASE_SECONDS,
        poll_seconds: float = POLL_SECONDS,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.services = services
        self.sweep_all = sweep_all
        self.interval = services.settings.sweep_interval
        self.lease_seconds = lease_seconds
        self.poll_seconds = min(poll_seconds, self.interval) if self.interval > 0 else poll_seconds
        self._sleep = sleep
        self._now = now
        # This replica holds the lock between sweeps too: it must not take its own hold for a
        # sign that a sweep is due, so it remembers when the next one is.
        self._next_due: datetime | None = None

    async def run_forever(self) -> None:
        """Poll until cancelled (when the server stops); MOKO_SWEEP_INTERVAL=0 turns it off."""
        if self.interval <= 0:
            log.info("scheduled_sweeps_off")
            return
        # The first sweep is one interval after the first replica starts, not at every start:
        # webhooks keep repositories in line meanwhile, and restarts cost no sweep.
        if await self.services.store.try_lock(LOCK_NAME, self.services.owner, self.interval):
            self._next_due = self._now() + timedelta(seconds=self.interval)
            log.info("scheduled_sweep_first", in_seconds=self.interval)
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # e.g. the store did not answer: try again at the next poll
                log.error("scheduled_sweep_poll_failed", error=f"{type(exc).__name__}: {exc}")
            await self._sleep(self.poll_seconds)

    async def run_once(self) -> bool:
        """Sweep if the sweep is due and no other replica is at it; True when this one swept."""
        store, owner = self.services.store, self.services.owner
        if self._next_due is not None and self._now() < self._next_due:
            return False
        if not await store.try_lock(LOCK_NAME, owner, self.lease_seconds):
            return False
        self._next_due = None
        log.info("scheduled_sweep_started", replica=owner)
        renewal = asyncio.create_task(self._renew())
        completed = False
        try:
            await self.sweep_all(self.services)
            completed = True
            await self._prune_audit()
        except Exception as exc:  # a background loop must outlive one bad round; logged, retried
            log.error("scheduled_sweep_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            renewal.cancel()
            await asyncio.gather(renewal, return_exceptions=True)
            if completed:
                await store.try_lock(LOCK_NAME, owner, self.interval)
                self._next_due = self._now() + timedelta(seconds=self.interval)
                log.info("scheduled_sweep_finished", next_in_seconds=self.interval)
            else:
                await store.unlock(LOCK_NAME, owner)
        return True

    async def _renew(self) -> None:
        while True:
            await self._sleep(self.lease_seconds / 3)
            if not await self.services.store.try_lock(LOCK_NAME, self.services.owner, self.lease_seconds):
                log.warning("scheduled_sweep_lock_lost", replica=self.services.owner)

    async def _prune_audit(self) -> None:
        """Records older than MOKO_AUDIT_RETENTION_DAYS go, from the start of the chain."""
        cutoff = self._now() - timedelta(days=self.services.settings.audit_retention_days)
        pruned = await self.services.store.prune_audit(cutoff)
        if pruned:
            log.info("audit_pruned", records=pruned, before=cutoff.isoformat())
