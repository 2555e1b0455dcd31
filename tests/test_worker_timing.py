"""The worker pool's clock-driven work, on a clock the test moves: when a delivery left in the
store is taken up, when a lease is renewed (and so never taken by another replica while it is
processed), when old deliveries are pruned, and what a store error at one of those steps does.

The pool and the store share one VirtualTime, so a lease the store writes runs out on the
clock the pool renews it by; another replica is a second store on the same file. Store
errors are real ones: a trigger, created by another connection as a database administrator
would, makes one kind of write to one delivery fail inside SQLite.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import structlog
from structlog.processors import format_exc_info
from structlog.testing import LogCapture, capture_logs

from bot.store.base import DONE, FAILED, QUEUED, Delivery, NewDelivery
from bot.store.sqlite import SQLiteStore
from bot.turns import give_back_turn
from bot.worker import WorkerPool
from tests.support.virtual_time import VirtualTime
from tests.support.waiting import wait_until

# The pool's loops that sleep: recovery, lease renewal, pruning.
LOOPS = 3


def ping(delivery_id: str) -> NewDelivery:
    return NewDelivery(delivery_id, "ping", None, {}, b'{"zen": "Keep it logically awesome."}')


class Processing:
    """The pool's processing step: records what it started; a held delivery waits for its gate."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    def hold(self, *delivery_ids: str) -> None:
        for delivery_id in delivery_ids:
            self.gates[delivery_id] = asyncio.Event()

    def release(self, delivery_id: str) -> None:
        self.gates[delivery_id].set()

    async def __call__(self, delivery: Delivery, payload: object) -> str | None:
        self.started.append(delivery.id)
        gate = self.gates.get(delivery.id)
        if gate is not None:
            await gate.wait()
        return None


class Pool:
    """A started pool on a SQLite file, its store, its clock and its processing."""

    def __init__(self, pool: WorkerPool, store: SQLiteStore, clock: VirtualTime, processing: Processing,
                 db: Path, lease: float) -> None:
        self.pool, self.store, self.clock, self.processing, self.db, self.lease = (
            pool, store, clock, processing, db, lease)

    async def submit_claimed(self, delivery_id: str) -> None:
        """As the intake does: stored and claimed by this replica in one write, then queued."""
        queued, claimed = await self.store.add_and_claim(ping(delivery_id), self.store.owner, self.lease)
        assert queued and claimed is not None
        self.pool.submit(delivery_id, None, claimed)

    async def started(self, *delivery_ids: str) -> None:
        await wait_until(lambda: self.processing.started == list(delivery_ids), timeout=10)

    def lease_ends(self, delivery_id: str) -> float:
        """When the delivery's lease runs out, in seconds of the test's clock."""
        with sqlite3.connect(self.db) as conn:
            until = conn.execute("SELECT lease_until FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()[0]
        return round(until - self.clock.wall() + self.clock.now, 3)

    async def state(self, delivery_id: str) -> str | None:
        stored = await self.store.get_delivery(delivery_id)
        return stored.state if stored is not None else None

    def sql(self, statement: str) -> None:
        """Another connection to the file, as a database administrator's."""
        with sqlite3.connect(self.db) as conn:
            conn.execute(statement)

    @asynccontextmanager
    async def another_replica(self) -> AsyncIterator[SQLiteStore]:
        other = SQLiteStore(f"sqlite:///{self.db}", clock=self.clock.wall, owner="another-replica")
        await other.open()
        try:
            yield other
        finally:
            await other.close()


@asynccontextmanager
async def running_pool(tmp_path: Path, *, lease: float, workers: int = 1,
                       retention_days: int = 7, processing: Processing | None = None) -> AsyncIterator[Pool]:
    clock = VirtualTime()
    db = tmp_path / "moko.db"
    store = SQLiteStore(f"sqlite:///{db}", clock=clock.wall)
    await store.open()
    processing = processing or Processing()
    pool = WorkerPool(store, processing, owner=store.owner, workers=workers, queue_max=100,
                      lease_seconds=lease, retention_seconds=retention_days * 86400.0, timing=clock)
    try:
        await pool.start()
        await clock.parked(LOOPS)
        yield Pool(pool, store, clock, processing, db, lease)
    finally:
        for gate in processing.gates.values():
            gate.set()
        await pool.drain(5)
        await store.close()


# How often recovery looks for deliveries left in the store: every 4 s, or every half lease
# when that is shorter, but not more often than every half second (a lease is at least 1 s).
@pytest.mark.parametrize(("lease", "every"), [(30.0, 4.0), (2.0, 1.0), (1.0, 0.5)])
async def test_a_delivery_left_in_the_store_is_taken_up_at_the_next_recovery_round(tmp_path, lease, every):
    async with running_pool(tmp_path, lease=lease) as moko:
        assert await moko.store.add_delivery(ping("left"))  # as a process that stopped left it
        await moko.clock.advance(every - 0.01)
        assert await moko.state("left") == QUEUED
        await moko.clock.advance(0.01)
        await moko.started("left")
        await wait_until(lambda: state_is(moko, "left", DONE), timeout=10)


async def state_is(moko: Pool, delivery_id: str, state: str) -> bool:
    return await moko.state(delivery_id) == state


async def test_a_long_delivery_s_lease_is_renewed_every_third_of_a_lease_so_no_other_replica_takes_it(tmp_path):
    # A lease of 30 s, checked every 5 s: a delivery held 10 s or more is renewed at the check.
    async with running_pool(tmp_path, lease=30.0, workers=2) as moko:
        moko.processing.hold("first", "second")
        await moko.submit_claimed("first")
        await moko.started("first")
        await moko.clock.advance(2)
        await moko.submit_claimed("second")
        await moko.started("first", "second")
        renewed: dict[str, list[tuple[float, float]]] = {"first": [], "second": []}
        ends = {name: moko.lease_ends(name) for name in renewed}
        assert ends == {"first": 30.0, "second": 32.0}
        for _ in range(45):
            await moko.clock.advance(1)
            for name in renewed:
                if (end := moko.lease_ends(name)) != ends[name]:
                    renewed[name].append((moko.clock.now, end))
                    ends[name] = end
        # Past both claims' first lease: the other replica finds nothing to take.
        async with moko.another_replica() as other:
            assert await other.claim_pending("another-replica", 60, 10) == []
        for name in renewed:
            moko.processing.release(name)
        await wait_until(lambda: all_done(moko, "first", "second"), timeout=10)
    # Each renewed at the first check once it was held a third of a lease (exactly 10 s for the
    # first one), for a whole lease from then; when one was renewed recently and the other not,
    # the other is renewed all the same.
    assert renewed == {
        "first": [(10.0, 40.0), (20.0, 50.0), (30.0, 60.0), (40.0, 70.0)],
        "second": [(15.0, 45.0), (25.0, 55.0), (35.0, 65.0), (45.0, 75.0)],
    }
    assert moko.processing.started == ["first", "second"]


async def all_done(moko: Pool, *delivery_ids: str) -> bool:
    return all([await moko.state(d) == DONE for d in delivery_ids])


async def test_a_claim_that_waited_over_half_its_lease_in_the_queue_is_renewed_before_its_processing(tmp_path):
    async with running_pool(tmp_path, lease=30.0) as moko:
        moko.processing.hold("first", "second", "third")
        for name in ("first", "second", "third"):  # one worker: the second and third wait
            await moko.submit_claimed(name)
        await moko.started("first")
        await moko.clock.advance(15)
        moko.processing.release("first")
        await moko.started("first", "second")
        # It waited exactly half its lease: taken as it is, with no write to renew it.
        assert moko.lease_ends("second") == 30.0
        await moko.clock.advance(10)  # renewed meanwhile, held a third of a lease
        assert moko.lease_ends("second") == 55.0
        moko.processing.release("second")
        await moko.started("first", "second", "third")
        # This one waited 25 s, its lease had 5 s left: renewed for a whole lease first.
        assert moko.lease_ends("third") == 55.0
        await moko.clock.advance(6)
        async with moko.another_replica() as other:
            assert await other.claim_pending("another-replica", 60, 10) == []
        moko.processing.release("third")
        await wait_until(lambda: all_done(moko, "first", "second", "third"), timeout=10)
    assert moko.processing.started == ["first", "second", "third"]


def messages(logs: list[dict], name: str) -> list[dict]:
    return [line for line in logs if line.get("event") == name]


async def finished_and_old(moko: Pool, *delivery_ids: str) -> None:
    """Finished deliveries received 1,001 days ago (done and failed alike)."""
    for number, delivery_id in enumerate(delivery_ids):
        await moko.store.add_and_claim(ping(delivery_id), "another-replica", 60)
        await moko.store.finish_delivery(delivery_id, "another-replica", DONE if number % 2 else FAILED)
    names = ", ".join(f"'{d}'" for d in delivery_ids)
    moko.sql(f"UPDATE deliveries SET received_at = received_at - 1001 * 86400 WHERE id IN ({names})")


async def stored(moko: Pool, *delivery_ids: str) -> list[str]:
    return [d for d in delivery_ids if await moko.state(d) is not None]


async def test_old_deliveries_are_pruned_a_minute_after_start_and_a_failed_round_is_tried_again_an_hour_later(
    tmp_path,
):
    # A retention of 1,000 days (the log says so, in days); the recovery loop's rounds every
    # 4 s go on meanwhile.
    async with running_pool(tmp_path, lease=3600.0, retention_days=1000) as moko:
        with capture_logs() as logs:
            await finished_and_old(moko, "old-1", "old-2")
            await moko.store.add_and_claim(ping("recent"), "another-replica", 60)
            await moko.store.finish_delivery("recent", "another-replica", DONE)
            # The database refuses deletions for now (a trigger raising, as a full disk would).
            moko.sql("CREATE TRIGGER refuse BEFORE DELETE ON deliveries BEGIN SELECT RAISE(ABORT, 'disk full'); END")
            await moko.clock.advance(59.9)
            assert messages(logs, "delivery_pruning_failed") == []
            await moko.clock.advance(0.1)
            [failed] = messages(logs, "delivery_pruning_failed")
            assert "disk full" in failed["error"]
            assert await stored(moko, "old-1", "old-2") == ["old-1", "old-2"]
            moko.sql("DROP TRIGGER refuse")
            # The next round, an hour later, prunes them.
            await moko.clock.advance(3599.9)
            assert await stored(moko, "old-1", "old-2") == ["old-1", "old-2"]
            await moko.clock.advance(0.1)
            assert await stored(moko, "old-1", "old-2", "recent") == ["recent"]
        assert [(line["count"], line["retention_days"]) for line in messages(logs, "deliveries_pruned")] == [(2, 1000.0)]


async def test_a_pruning_round_of_several_statements_needs_no_time_to_pass(tmp_path):
    # Past one DELETE's 2,000 rows: between statements it only lets the event loop's other work in.
    async with running_pool(tmp_path, lease=30.0, retention_days=1000) as moko:
        names = [f"old{i:04}" for i in range(2001)]
        await asyncio.gather(*(moko.store.add_delivery(ping(name)) for name in names))
        moko.sql("UPDATE deliveries SET state = 'done', received_at = received_at - 1001 * 86400")
        assert await asyncio.wait_for(moko.pool.prune_once(), 10) == 2001


@contextmanager
def logs_with_tracebacks() -> Iterator[list[dict]]:
    """capture_logs with each exc_info rendered as its traceback text (capture_logs takes
    processors only from structlog 25.5 on). The processors list is changed in place, as
    capture_logs does, so loggers already made see it."""
    capture = LogCapture()
    processors = structlog.get_config()["processors"]
    before = list(processors)
    processors[:] = [format_exc_info, capture]
    structlog.configure(processors=processors)
    try:
        yield capture.entries
    finally:
        processors[:] = before
        structlog.configure(processors=processors)


async def test_a_worker_whose_claim_check_fails_logs_it_and_takes_the_next_delivery(tmp_path):
    async with running_pool(tmp_path, lease=30.0) as moko:
        moko.processing.hold("first")
        for name in ("first", "waited"):
            await moko.submit_claimed(name)
        await moko.started("first")
        # Renewing the waiting delivery's claim fails in the database.
        moko.sql("CREATE TRIGGER refuse BEFORE UPDATE OF lease_until ON deliveries "
                 "WHEN NEW.id = 'waited' AND OLD.state = 'processing' AND NEW.state = 'processing' "
                 "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
        with logs_with_tracebacks() as logs:
            await moko.clock.advance(20)
            moko.processing.release("first")
            await wait_until(lambda: messages(logs, "worker_error") != [], timeout=10)
            # The worker goes on with the next delivery.
            await moko.submit_claimed("next")
            await wait_until(lambda: all_done(moko, "first", "next"), timeout=10)
    [error] = messages(logs, "worker_error")
    assert error["delivery"] == "waited" and "disk I/O error" in error["error"]
    assert "Traceback" in error["exception"] and "IntegrityError" in error["exception"]
    assert moko.processing.started == ["first", "next"]  # not acted on without its claim


async def test_a_renewal_that_fails_is_logged_and_the_other_leases_are_renewed_all_the_same(tmp_path):
    async with running_pool(tmp_path, lease=30.0, workers=2) as moko:
        moko.processing.hold("refused", "renewed")
        for name in ("refused", "renewed"):
            await moko.submit_claimed(name)
        await moko.started("refused", "renewed")
        moko.sql("CREATE TRIGGER refuse BEFORE UPDATE OF lease_until ON deliveries "
                 "WHEN NEW.id = 'refused' AND NEW.state = 'processing' "
                 "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
        with capture_logs() as logs:
            await moko.clock.advance(10)  # both held a third of a lease: the first one's renewal fails
            assert [line["delivery"] for line in messages(logs, "lease_renewal_failed")] == ["refused"]
            assert (moko.lease_ends("refused"), moko.lease_ends("renewed")) == (30.0, 40.0)
            moko.sql("DROP TRIGGER refuse")
            await moko.clock.advance(10)  # tried again a third of a lease later
            assert (moko.lease_ends("refused"), moko.lease_ends("renewed")) == (50.0, 50.0)


async def test_a_delivery_claimed_by_a_recovery_round_under_way_when_a_drain_starts_is_processed_in_the_grace(tmp_path):
    async with running_pool(tmp_path, lease=30.0, workers=2) as moko:
        moko.processing.hold("in-flight")
        await moko.submit_claimed("in-flight")
        await moko.started("in-flight")
        assert await moko.store.add_delivery(ping("left"))  # as a process that stopped left it
        # Another process holds the write lock: the round's claim waits for it.
        other = sqlite3.connect(moko.db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            recovering = asyncio.create_task(moko.pool.recover_once())
            await asyncio.sleep(0)  # the round is waiting for its claim
            draining = asyncio.create_task(moko.pool.drain(30))
            await asyncio.sleep(0)
            assert moko.pool.accepting is False
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await recovering == 1  # claimed after the drain emptied the queue
        await moko.started("in-flight", "left")
        moko.processing.release("in-flight")
        await draining
        # Processed within the grace, not left claimed until its lease runs out.
        assert [await moko.state(d) for d in ("in-flight", "left")] == [DONE, DONE]


async def test_a_recovery_round_that_retakes_a_claim_queued_here_queues_the_rest_it_claimed(tmp_path):
    async with running_pool(tmp_path, lease=30.0) as moko:
        moko.processing.hold("in-flight")
        for name in ("in-flight", "queued"):  # one worker: "queued" waits, claimed here
            await moko.submit_claimed(name)
        await moko.started("in-flight")
        await moko.clock.advance(29)
        assert await moko.store.add_delivery(ping("left"))  # as a process that stopped left it
        # "queued"'s lease runs out at 30 s: the round at 32 s claims it again, and "left".
        await moko.clock.advance(3)
        assert moko.lease_ends("left") == 62.0
        moko.processing.release("in-flight")
        # Each processed once; "left" without waiting for its lease to run out.
        await wait_until(lambda: all_done(moko, "in-flight", "queued", "left"), timeout=10)
    assert moko.processing.started == ["in-flight", "queued", "left"]


class WaitingOnInstallation(Processing):
    """Processing that, like a write waiting for its installation's turn, gives its worker back."""

    async def __call__(self, delivery: Delivery, payload: object) -> str | None:
        if delivery.installation_id is not None:
            give_back_turn()
        return await super().__call__(delivery, payload)


async def test_an_installation_s_deliveries_wait_unstarted_while_a_workers_worth_of_its_others_wait(tmp_path):
    # Two workers: at most two deliveries of one installation wait for their turn; the
    # installation's others are held back, unstarted, until one of those ends.
    waiting = WaitingOnInstallation()
    async with running_pool(tmp_path, lease=30.0, workers=2, processing=waiting) as moko:
        names = [f"write-{i}" for i in range(1, 7)]
        waiting.hold(*names)

        async def submit(name: str) -> None:
            queued, claimed = await moko.store.add_and_claim(
                NewDelivery(name, "ping", 1, {}, b"{}"), moko.store.owner, moko.lease)
            assert queued and claimed is not None
            moko.pool.submit(name, None, claimed)

        async def decided(after: str) -> None:
            """A delivery for no installation queued behind: once it is done, every delivery
            queued before it was started or held back."""
            await moko.submit_claimed(after)
            await wait_until(lambda: state_is(moko, after, DONE), timeout=10)

        for name in names[:5]:
            await submit(name)
        await decided("behind-1")
        assert waiting.started == ["write-1", "write-2", "behind-1"]
        waiting.release("write-1")  # one ends: one held back starts in its place
        await wait_until(lambda: waiting.started[-1] == "write-3", timeout=10)
        await submit("write-6")  # two wait again: held back
        await decided("behind-2")
        assert waiting.started == ["write-1", "write-2", "behind-1", "write-3", "behind-2"]
