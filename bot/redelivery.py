"""Recovery of missed webhook deliveries inside `moko serve`: GitHub does not retry a delivery
that failed (Moko down, unreachable, too slow), so at start and every few minutes one replica
lists the App's recent deliveries and asks GitHub to redeliver, once, each that failed and that
Moko never stored. The redelivery keeps its delivery ID and comes through the normal intake,
so it is applied at most once like any other delivery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from gidgethub import GitHubException

from bot.context import Services
from bot.logs import get_logger
from bot.metrics import REDELIVERIES_REQUESTED
from bot.redact import REDACTOR

log = get_logger("moko.redelivery")

# One replica at a time looks, and keeps the lock until its next look is due.
RECOVER_LOCK = "recover-deliveries"
RECOVER_EVERY = 300.0
# How often a replica that does not hold the lock looks whether it is free (e.g. its holder stopped).
POLL_SECONDS = 5.0
# GitHub lists at most 100 deliveries a page.
DELIVERIES_URL = "/app/hook/deliveries?per_page=100"
# A redelivery asked for is remembered a day longer than the window: its own attempt, which
# GitHub lists a moment after it was asked for, must not look like a new failure.
REMEMBER_BEYOND_WINDOW = timedelta(days=1)


@dataclass(frozen=True)
class Attempt:
    """One attempt GitHub made to deliver an event (GitHub's "simple webhook delivery")."""

    id: int
    guid: str
    event: str
    delivered_at: datetime
    status: str
    status_code: int

    @property
    def succeeded(self) -> bool:
        # GitHub's own rule: "a failed delivery will have a status value that is not OK".
        return self.status == "OK"

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Attempt:
        return cls(
            id=int(item["id"]),
            guid=str(item["guid"]),
            event=str(item.get("event") or ""),
            delivered_at=datetime.fromisoformat(str(item["delivered_at"]).replace("Z", "+00:00")),
            status=str(item.get("status") or ""),
            status_code=int(item.get("status_code") or 0),
        )


def failed_deliveries(attempts: Iterable[Attempt]) -> dict[str, Attempt]:
    """The deliveries (by guid) of which no attempt succeeded, each with its newest attempt.

    Attempts come newest first, as GitHub lists them; all attempts of one event share its guid.
    """
    newest: dict[str, Attempt] = {}
    succeeded: set[str] = set()
    for attempt in attempts:
        newest.setdefault(attempt.guid, attempt)
        if attempt.succeeded:
            succeeded.add(attempt.guid)
    return {guid: attempt for guid, attempt in newest.items() if guid not in succeeded}


def _error(exc: BaseException) -> str:
    return REDACTOR.text(f"{type(exc).__name__}: {exc}")


class DeliveryRecovery:
    """One replica's side of the recovery of missed deliveries."""

    def __init__(
        self,
        services: Services,
        *,
        every: float = RECOVER_EVERY,
        poll_seconds: float = POLL_SECONDS,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.services = services
        settings = services.settings
        # Never further back than Moko keeps delivery IDs: a delivery it processed and then
        # pruned must not look like one it never had.
        self.window = min(settings.recover_window, settings.delivery_retention_days * 86400.0)
        self.every = every
        self.poll_seconds = poll_seconds
        self._sleep = sleep
        self._clock = clock
        self._now = now
        # The lock is renewed by taking it again, so the replica remembers when its next look
        # is due rather than read its own lock as a sign.
        self._next_look = -float("inf")
        self._holds_lock = False

    async def run_forever(self) -> None:
        """Look at start and every `every` seconds until cancelled; MOKO_RECOVER_WINDOW=0 turns it off."""
        if self.window <= 0:
            log.info("delivery_recovery_off")
            return
        try:
            while True:
                try:
                    await self.recover_if_due()
                except Exception as exc:  # e.g. the store did not answer: again at the next poll
                    log.error("delivery_recovery_failed", error=_error(exc))
                await self._sleep(self.poll_seconds)
        finally:
            if self._holds_lock:  # stopping: another replica, or the next start, looks at once
                try:
                    await asyncio.shield(self.services.store.unlock(RECOVER_LOCK, self.services.owner))
                except Exception as exc:
                    log.warning("delivery_recovery_unlock_failed", error=_error(exc))

    async def recover_if_due(self) -> bool:
        """Recover when this replica's look is due and no other replica holds the lock; True when it did."""
        store, owner = self.services.store, self.services.owner
        if self._clock() < self._next_look:
            return False
        if not await store.try_lock(RECOVER_LOCK, owner, self.every):
            self._holds_lock = False
            return False
        self._holds_lock = True
        self._next_look = self._clock() + self.every
        await self.recover()
        return True

    async def recover(self) -> int:
        """Ask GitHub to redeliver each delivery of the window that failed and that Moko never
        stored, unless it was asked for before; how many were asked for now."""
        store = self.services.store
        now = self._now()
        since = now - timedelta(seconds=self.window)
        client = self.services.github.app_client()
        attempts: list[Attempt] = []
        try:
            async for item in client.getiter(DELIVERIES_URL):
                attempt = Attempt.from_item(item)
                if attempt.delivered_at < since:
                    break  # newest first: the rest are older still
                attempts.append(attempt)
        except (GitHubException, aiohttp.ClientError, TimeoutError) as exc:
            # A GitHub Enterprise Server without the endpoint answers 404; a 5xx passes. Next time.
            log.warning("delivery_recovery_unavailable", error=_error(exc))
            return 0
        failed = failed_deliveries(attempts)
        stored = await store.stored_delivery_ids(list(failed))
        missed = [attempt for guid, attempt in failed.items() if guid not in stored]
        asked = 0
        for attempt in missed:
            if not await store.note_redelivery(attempt.guid):
                continue  # asked for before, by this replica or another
            bound = log.bind(delivery=attempt.guid, attempt=attempt.id, event=attempt.event,
                             status=attempt.status, status_code=attempt.status_code)
            try:
                await client.post(f"/app/hook/deliveries/{attempt.id}/attempts", data=b"")
            except (GitHubException, aiohttp.ClientError, TimeoutError) as exc:
                await store.forget_redelivery(attempt.guid)  # asked again next time
                bound.warning("redelivery_not_requested", error=_error(exc))
                continue
            REDELIVERIES_REQUESTED.inc()
            asked += 1
            bound.info("redelivery_requested")
        await store.prune_redeliveries(since - REMEMBER_BEYOND_WINDOW)
        log.info("delivery_recovery_done", listed=len(attempts), failed=len(failed),
                 missed=len(missed), requested=asked, window_seconds=self.window)
        return asked


async def recover_deliveries_forever(services: Services) -> None:
    await DeliveryRecovery(services).run_forever()
