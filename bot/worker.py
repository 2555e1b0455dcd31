"""The bounded worker pool that processes stored deliveries in the background.

Deliveries reach it two ways: the intake hands over the ID it just stored, and a
recovery loop claims what the store holds unfinished (left by a restart, by a process
that died, which the store knows at once, or by one whose lease expired). The store's atomic claim makes sure only one
worker of one replica processes a delivery. The pool also deletes finished deliveries
once they are older than MOKO_DELIVERY_RETENTION_DAYS.

Turns are fair across installations: a delivery about to wait on its installation (writes go
one at a time per installation) gives its worker back (bot.turns), and a new worker takes
the next delivery, so one installation's queue of writes never holds every worker. The
delivery carries on in its own task once its turn comes. At most a few deliveries of one
installation wait so at once; the installation's later ones are held back, unstarted, until one
of those finishes: a burst of thousands for one installation would otherwise hold thousands of
parsed payloads, repository locks and leases while they queue for one write at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from bot.logs import get_logger
from bot.metrics import DELIVERIES_FINISHED, QUEUE_DEPTH, WORKERS_BUSY, labelled
from bot.redact import REDACTOR
from bot.store.base import DONE, FAILED, Deliveries, Delivery
from bot.turns import Turn, hold_turn

log = get_logger("moko.worker")

# Finished deliveries past the retention are deleted this often, this many per statement.
_PRUNE_FIRST = 60.0
_PRUNE_EVERY = 3600.0
_PRUNE_CHUNK = 2000
_RECOVER_EVERY = 4.0

# Processing a delivery (with its payload when the intake already parsed it) returns None
# when it is done, else the failure message.
Processor = Callable[[Delivery, Any], Awaitable[str | None]]


class PoolTime(Protocol):
    """The clocks and the sleep the pool's loops run on: the system's in production
    (SYSTEM_TIME), a hand-driven one in tests, which then run hours of leases and pruning
    rounds in no time."""

    def monotonic(self) -> float: ...  # leases, queue waits, the loops' periods

    def wall(self) -> float: ...  # epoch seconds: the retention's cutoff

    async def sleep(self, seconds: float) -> None: ...


class _SystemTime:
    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_TIME: PoolTime = _SystemTime()


@dataclass(frozen=True)
class _Item:
    """A delivery waiting for a worker: its claim (if this replica holds one already), its
    parsed payload (if the intake parsed it), and when it was queued."""

    delivery_id: str
    claimed: Delivery | None
    payload: Any
    queued_at: float


class WorkerPool:
    """N workers over an in-memory queue of delivery IDs, backed by the store's leases."""

    def __init__(
        self,
        store: Deliveries,
        process: Processor,
        *,
        owner: str,
        workers: int,
        queue_max: int,
        lease_seconds: float,
        retention_seconds: float = 7 * 86400.0,
        timing: PoolTime = SYSTEM_TIME,
    ) -> None:
        self._time = timing
        self._store = store
        self._retention = retention_seconds
        self._process = process
        self._owner = owner
        self._workers = workers
        self._queue_max = queue_max
        self._lease = lease_seconds
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: set[str] = set()
        self._waiting: set[str] = set()  # deliveries in the queue that this replica has claimed
        self._settled = asyncio.Condition()
        self._watchers = 0  # callers waiting on _settled
        self._holding: dict[str, float] = {}  # delivery id -> when its lease was last renewed
        self._accepting = False
        self._wakeup = asyncio.Event()
        self._waiting_turn: dict[int, int] = {}  # installation -> its deliveries given back
        self._held_back: dict[int, deque[_Item]] = {}  # installation -> deliveries not started
        self._held_count = 0
        self._busy = 0  # workers with a delivery in hand that has not given its worker back

    # --- intake side ---------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self._accepting

    def has_room(self) -> bool:
        return self._accepting and self._queued() + len(self._in_flight) < self._queue_max

    def _queued(self) -> int:
        return self._queue.qsize() + self._held_count

    def keeps_payloads(self) -> bool:
        """Whether a delivery queued now should carry its parsed payload. Only when a worker
        takes it soon: a long queue of parsed payloads is millions of objects for the garbage
        collector to walk (pauses of 100 ms were measured); a queued body is one bytes object,
        parsed again when its turn comes."""
        return self._queue.qsize() < self._workers

    def submit(self, delivery_id: str, payload: Any = None, claimed: Delivery | None = None) -> None:
        """Hand over a delivery the intake has just stored (with its parsed payload, and the
        claim the intake took for this replica, if any)."""
        self._enqueue(_Item(delivery_id, claimed, payload, self._time.monotonic()))

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Start the workers and the recovery loop (which first takes what a crash left)."""
        self._accepting = True
        # Read when /metrics is scraped, not set on every queue change.
        QUEUE_DEPTH.set_function(self._queued)
        WORKERS_BUSY.set_function(lambda: self._busy)
        for _ in range(self._workers):
            self._start_worker()
        self._tasks.add(asyncio.create_task(self._recover_forever(), name="moko-recovery"))
        self._tasks.add(asyncio.create_task(self._keep_leases(), name="moko-leases"))
        self._tasks.add(asyncio.create_task(self._prune_forever(), name="moko-prune"))

    def _start_worker(self) -> None:
        task = asyncio.create_task(self._work(), name="moko-worker")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _worker_given_back(self, installation: int | None) -> None:
        """A delivery waits on its installation: a new worker takes its place in the pool."""
        self._busy -= 1
        if installation is not None:
            self._waiting_turn[installation] = self._waiting_turn.get(installation, 0) + 1
        if self._accepting:
            self._start_worker()

    def _hold_back(self, item: _Item, installation: int | None) -> bool:
        """Keep the item unstarted while its installation has enough deliveries waiting."""
        # As many as there are workers: the writes queued behind the current one are ready
        # (read, locked, their intent on disk), and their store writes share commits.
        if installation is None or self._waiting_turn.get(installation, 0) < self._workers:
            return False
        # Without its parsed payload: parsed again from the stored body when its turn comes.
        self._held_back.setdefault(installation, deque()).append(replace(item, payload=None))
        self._held_count += 1
        return True

    def _ended(self, installation: int | None, waited: bool) -> None:
        """A delivery of the installation is finished (waited: it had given its worker back):
        one held back goes to the queue. Every end releases one, so what is held back always
        has a delivery in flight that will let it go."""
        if installation is None:
            return
        if waited:
            left = self._waiting_turn.get(installation, 0) - 1
            if left > 0:
                self._waiting_turn[installation] = left
            else:
                self._waiting_turn.pop(installation, None)
        held = self._held_back.get(installation)
        if held:
            self._held_count -= 1
            self._queue.put_nowait(held.popleft())
            if not held:
                del self._held_back[installation]

    def _enqueue(self, item: _Item) -> None:
        if item.claimed is not None:
            self._waiting.add(item.delivery_id)
        self._queue.put_nowait(item)

    async def recover_once(self) -> int:
        """Claim unfinished deliveries from the store while there is room; return how many."""
        taken = 0
        while True:
            room = self._queue_max - self._queued() - len(self._in_flight)
            if room <= 0:
                return taken
            claimed = await self._store.claim_pending(self._owner, self._lease, min(room, 100))
            for delivery in claimed:
                if delivery.id in self._waiting or delivery.id in self._in_flight:
                    continue  # ours already, its lease expired while queued: the claim renewed it
                self._enqueue(_Item(delivery.id, delivery, None, self._time.monotonic()))
            taken += len(claimed)
            if len(claimed) < min(room, 100):
                return taken

    async def _recover_forever(self) -> None:
        # Often enough that a dead process's claims (the store tells them apart at once) are
        # taken up within 10 s; a claim costs one statement when there is nothing to take.
        interval = max(0.5, min(self._lease / 2, _RECOVER_EVERY))
        while self._accepting:
            try:
                taken = await self.recover_once()
                if taken:
                    log.info("deliveries_recovered", count=taken)
            except Exception as exc:  # the store may be briefly away; try again next round
                log.warning("recovery_failed", error=REDACTOR.text(str(exc)))
            await self._pause(interval)
            self._wakeup.clear()

    async def _pause(self, seconds: float) -> None:
        """Sleep on the pool's clock, or less if a drain wakes the pool."""
        woken = asyncio.ensure_future(self._wakeup.wait())
        slept = asyncio.ensure_future(self._time.sleep(seconds))
        try:
            await asyncio.wait((woken, slept), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            slept.cancel()

    async def drain(self, grace: float) -> None:
        """Stop taking work, let in-flight deliveries finish (up to grace), give back the rest."""
        self._accepting = False
        self._wakeup.set()
        pending: list[_Item] = [item for held in self._held_back.values() for item in held]
        self._held_back.clear()
        self._held_count = 0
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        self._waiting.clear()
        # All at once: the store writes them in one transaction, not one commit each.
        await asyncio.gather(
            *(self._store.release_delivery(item.delivery_id, self._owner) for item in pending if item.claimed is not None)
        )
        if self._in_flight:
            log.info("draining", in_flight=len(self._in_flight))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_in_flight(), grace)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def _wait_in_flight(self) -> None:
        await self._wait_until(lambda: not self._in_flight)

    async def wait_idle(self) -> None:
        """Wait until the queue is empty and nothing is in flight (tests and benchmarks)."""
        await self._wait_until(lambda: not self._queued() and not self._in_flight)

    async def _wait_until(self, settled: Callable[[], bool]) -> None:
        self._watchers += 1
        try:
            async with self._settled:
                await self._settled.wait_for(settled)
        finally:
            self._watchers -= 1

    # --- the workers ---------------------------------------------------------

    async def _work(self) -> None:
        current: list[int | None] = [None]  # the installation of the delivery in hand
        turn = Turn(lambda: self._worker_given_back(current[0]))
        hold_turn(turn)  # this task's own context
        while not turn.given_back:
            item = await self._queue.get()
            delivery_id, claimed, payload = item.delivery_id, item.claimed, item.payload
            current[0] = claimed.installation_id if claimed is not None else None
            if self._accepting and self._hold_back(item, current[0]):
                continue
            self._waiting.discard(delivery_id)
            if not self._accepting and claimed is None:
                await self._notify_settled()
                continue
            self._in_flight.add(delivery_id)
            self._busy += 1
            try:
                if claimed is not None and self._time.monotonic() - item.queued_at > self._lease / 2:
                    # It waited long in the queue: make sure the claim still holds before acting.
                    if not await self._store.renew_lease(delivery_id, self._owner, self._lease):
                        continue
                delivery = claimed or await self._store.claim_delivery(delivery_id, self._owner, self._lease)
                if delivery is not None:
                    await self._run(delivery, payload)
            except Exception as exc:
                log.error("worker_error", delivery=delivery_id, error=REDACTOR.text(str(exc)), exc_info=True)
            finally:
                self._in_flight.discard(delivery_id)
                if not turn.given_back:
                    self._busy -= 1
                self._ended(current[0], turn.given_back)
                await self._notify_settled()

    async def _notify_settled(self) -> None:
        if self._watchers:  # nobody waits, most of the time
            async with self._settled:
                self._settled.notify_all()

    async def _run(self, delivery: Delivery, payload: Any) -> None:
        self._holding[delivery.id] = self._time.monotonic()
        try:
            error = await self._process(delivery, payload)
        except asyncio.CancelledError:
            # Shutdown outlasted the grace period: give the delivery back for the next start.
            await asyncio.shield(self._store.release_delivery(delivery.id, self._owner))
            raise
        except Exception as exc:
            error = REDACTOR.text(f"{type(exc).__name__}: {exc}")
            log.error("delivery_crashed", delivery=delivery.id, error=error, exc_info=True)
        finally:
            self._holding.pop(delivery.id, None)
        state = DONE if error is None else FAILED
        await self._store.finish_delivery(delivery.id, self._owner, state, error)
        labelled(DELIVERIES_FINISHED, state).inc()

    async def prune_once(self, now: float | None = None) -> int:
        """Delete finished deliveries older than the retention, a chunk at a time (the SQLite
        store runs on the event loop: one huge DELETE would hold it); return how many went."""
        cutoff = datetime.fromtimestamp((self._time.wall() if now is None else now) - self._retention, UTC)
        pruned = 0
        while True:
            deleted = await self._store.prune_deliveries(cutoff, _PRUNE_CHUNK)
            pruned += deleted
            if deleted < _PRUNE_CHUNK:
                return pruned
            await self._time.sleep(0)  # let the intake in between chunks

    async def _prune_forever(self) -> None:
        # Soon after start (a process may not live an hour), then every _PRUNE_EVERY.
        delay = _PRUNE_FIRST
        while True:
            await self._time.sleep(delay)
            delay = _PRUNE_EVERY
            try:
                pruned = await self.prune_once()
                if pruned:
                    log.info("deliveries_pruned", count=pruned, retention_days=round(self._retention / 86400, 2))
            except Exception as exc:  # the store may be briefly away; the next round tries again
                log.warning("delivery_pruning_failed", error=REDACTOR.text(str(exc)))

    async def _keep_leases(self) -> None:
        """One task renews the lease of every delivery held longer than a third of it
        (most finish well before, and cost no renewal)."""
        period = self._lease / 3
        while True:
            await self._time.sleep(period / 2)
            now = self._time.monotonic()
            for delivery_id, renewed in list(self._holding.items()):
                if now - renewed < period or delivery_id not in self._holding:
                    continue
                self._holding[delivery_id] = now
                try:
                    held = await self._store.renew_lease(delivery_id, self._owner, self._lease)
                except Exception as exc:  # the store may be briefly away; the next round tries again
                    log.warning("lease_renewal_failed", delivery=delivery_id, error=REDACTOR.text(str(exc)))
                    continue
                if not held:
                    log.warning("lease_lost", delivery=delivery_id)
