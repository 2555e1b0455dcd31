"""Continuous reconciliation inside `moko serve`: each installation is reconciled on its own
cycle (MOKO_SWEEP_INTERVAL, stretched when its budget asks), its turns spread over the
interval and taken by whichever replica is free, under a per-installation lease in the store;
plus the housekeeping one replica does at a time (the App's installations, audit pruning)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.context import Services
from bot.logs import get_logger
from bot.metrics import RECONCILE_INTERVAL
from bot.reconcile_budget import TurnCost, interval_for
from bot.store.base import ReconcileTurn

log = get_logger("moko.scheduler")

# One replica at a time lists the App's installations (once per interval), and prunes the
# audit trail (once per PRUNE_EVERY): each keeps its lock for that long.
INSTALLATIONS_LOCK = "reconcile-installations"
PRUNE_LOCK = "audit-prune"
PRUNE_EVERY = 3600.0
# How long a due turn may wait for a replica to look (at most a tenth of the interval).
POLL_SECONDS = 5.0
# Turns one replica runs at once; more due turns wait for it or go to another replica.
MAX_TURNS = 4
# A turn that failed (GitHub or the store did not answer) is tried again this soon.
RETRY_SECONDS = 60.0
# Golden-ratio spacing: installation ids, however they are numbered, fall evenly over the interval.
_SPREAD = 0.6180339887498949

ReconcileOne = Callable[[Services, int, str], Awaitable[TurnCost]]
ListInstallations = Callable[[Services], Awaitable[list[tuple[int, str]]]]


def first_turn_in(installation_id: int, interval: float) -> float:
    """When an installation found by the listing has its first turn: a stable place in the
    interval, so installations are spread over it instead of all due at once."""
    return (installation_id * _SPREAD) % 1.0 * interval


async def app_installations(services: Services) -> list[tuple[int, str]]:
    """Every installation of the App that has an account (an enterprise's has no repositories)."""
    client = services.github.app_client()
    found = []
    async for item in client.getiter("/app/installations?per_page=100"):
        if not (item.get("account") or {}).get("login"):
            continue
        found.append((int(item["id"]), str(item["account"]["login"])))
        if isinstance(item.get("permissions"), dict):  # what each installation was granted
            services.github.remember_permissions(int(item["id"]), item["permissions"])
    return found


class ReconcileCycle:
    """One replica's side of the continuous reconciliation."""

    def __init__(
        self,
        services: Services,
        reconcile_one: ReconcileOne,
        *,
        list_installations: ListInstallations = app_installations,
        poll_seconds: float = POLL_SECONDS,
        max_turns: int = MAX_TURNS,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        random: Callable[[], float] = random.random,
    ) -> None:
        settings = services.settings
        self.services = services
        self.reconcile_one = reconcile_one
        self.list_installations = list_installations
        self.interval = settings.sweep_interval
        self.lease_seconds = settings.lease_seconds
        self.poll_seconds = min(poll_seconds, self.interval / 10) if self.interval > 0 else poll_seconds
        self.max_turns = max_turns
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._now = now
        self._random = random
        self._running: set[asyncio.Task[None]] = set()
        # A lock this replica holds is renewed by taking it again, so the replica remembers
        # when its own housekeeping is due rather than read its own lock as a sign.
        self._next_sync = -float("inf")
        self._next_prune = -float("inf")

    async def run_forever(self) -> None:
        """Take turns until cancelled (when the server stops); MOKO_SWEEP_INTERVAL=0 turns it off."""
        if self.interval <= 0:
            log.info("reconciliation_off")
            return
        try:
            while True:
                for job in (self.sync_installations, self.prune_audit, self.take_turns):
                    try:
                        await job()
                    except Exception as exc:  # e.g. the store did not answer: again at the next poll
                        log.error("reconcile_poll_failed", job=job.__name__, error=f"{type(exc).__name__}: {exc}")
                # Jittered, so that replicas do not look at the same moments: the turns due
                # go to whichever looks first, and so are spread over the replicas.
                await self._sleep(self.poll_seconds * (0.5 + 0.5 * self._random()))
        finally:
            # Stopping: the turns in flight give their installations back at once.
            for task in self._running:
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)

    async def take_turns(self) -> int:
        """Start the due turns no replica holds, up to max_turns at once; how many started."""
        started = 0
        while len(self._running) < self.max_turns:
            turn = await self.services.store.claim_reconcile_turn(self.services.owner, self.lease_seconds)
            if turn is None:
                break
            task = asyncio.create_task(self.run_turn(turn))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            started += 1
        return started

    async def wait_turns(self) -> None:
        """Wait for the turns this replica is running (tests)."""
        await asyncio.gather(*self._running, return_exceptions=True)

    async def run_turn(self, turn: ReconcileTurn) -> None:
        """Reconcile one installation, then set its next turn from what this one cost."""
        store, owner = self.services.store, self.services.owner
        installation = turn.installation_id
        bound = log.bind(installation=installation, account=turn.account, replica=owner)
        bound.info("reconcile_turn_started")
        started = self._clock()
        renewal = asyncio.create_task(self._keep_lease(turn, asyncio.current_task()))
        try:
            cost = await self.reconcile_one(self.services, installation, turn.account)
        except asyncio.CancelledError:
            # Stopped, or the lease was lost: whoever holds it next takes the turn at once.
            await asyncio.shield(store.finish_reconcile_turn(installation, owner, next_in=0, interval=None))
            raise
        except Exception as exc:  # one installation's failure must not stop the cycle
            bound.error("reconcile_turn_failed", error=f"{type(exc).__name__}: {exc}")
            await store.finish_reconcile_turn(
                installation, owner, next_in=min(RETRY_SECONDS, self.interval), interval=None
            )
            return
        finally:
            renewal.cancel()
            await asyncio.gather(renewal, return_exceptions=True)
        elapsed = self._clock() - started
        settings = self.services.settings
        interval = interval_for(
            cost,
            configured=self.interval,
            budget=settings.sweep_budget,
            reserve=settings.rate_limit_reserve,
            elapsed=elapsed,
            now=self._wall_clock(),
        )
        await store.finish_reconcile_turn(
            installation, owner, next_in=interval.seconds - elapsed, interval=interval.seconds
        )
        RECONCILE_INTERVAL.labels(str(installation)).set(interval.seconds)
        bound.info("reconcile_turn_finished", seconds=round(elapsed, 3), rest_requests=cost.rest_requests,
                   graphql_points=cost.graphql_points, next_in_seconds=round(interval.seconds - elapsed, 3))
        if interval.stretched:
            bound.warning(
                "reconcile_interval_stretched",
                reason=interval.reason,
                configured_seconds=self.interval,
                interval_seconds=round(interval.seconds, 1),
                budget=settings.sweep_budget,
                rest_requests=cost.rest_requests,
                graphql_points=cost.graphql_points,
            )

    async def _keep_lease(self, turn: ReconcileTurn, task: asyncio.Task[Any] | None) -> None:
        while True:
            await self._sleep(self.lease_seconds / 3)
            if not await self.services.store.renew_reconcile_turn(
                turn.installation_id, self.services.owner, self.lease_seconds
            ):
                # Another replica may hold it now: two reconciliations of one installation
                # must not run at once, so this one stops.
                log.warning("reconcile_turn_lost", installation=turn.installation_id, replica=self.services.owner)
                if task is not None:
                    task.cancel()
                return

    async def sync_installations(self) -> bool:
        """Once per interval, on one replica: installations the App gained join the cycle
        (spread over the interval), those it lost leave it. True when this replica did it."""
        store, owner = self.services.store, self.services.owner
        if self._clock() < self._next_sync or not await store.try_lock(INSTALLATIONS_LOCK, owner, self.interval):
            return False
        try:
            listed = dict(await self.list_installations(self.services))
        except BaseException:
            await store.unlock(INSTALLATIONS_LOCK, owner)  # the next poll anywhere tries again
            raise
        known = {turn.installation_id for turn in await store.reconcile_turns()}
        joined = [i for i, account in listed.items()
                  if await store.join_reconciliation(i, account, first_turn_in(i, self.interval))]
        left = [i for i in known - listed.keys() if await store.leave_reconciliation(i)]
        for installation in left:
            forget_interval(installation)
        self._next_sync = self._clock() + self.interval
        log.info("reconcile_installations_listed", installations=len(listed), joined=len(joined), left=len(left))
        return True

    async def prune_audit(self) -> bool:
        """Once per PRUNE_EVERY, on one replica: audit records older than
        MOKO_AUDIT_RETENTION_DAYS go, from the start of the chain."""
        store = self.services.store
        if self._clock() < self._next_prune or not await store.try_lock(PRUNE_LOCK, self.services.owner, PRUNE_EVERY):
            return False
        self._next_prune = self._clock() + PRUNE_EVERY
        cutoff = self._now() - timedelta(days=self.services.settings.audit_retention_days)
        pruned = await store.prune_audit(cutoff)
        if pruned:
            log.info("audit_pruned", records=pruned, before=cutoff.isoformat())
        return True


def forget_interval(installation: int) -> None:
    """An installation that left the cycle has no interval any more."""
    try:
        RECONCILE_INTERVAL.remove(str(installation))
    except KeyError:
        pass
