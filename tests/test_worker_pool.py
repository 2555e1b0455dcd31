"""The worker pool from outside: what recovery, pruning and a burst for one installation do to
stored deliveries, GitHub's calls and Moko's log."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest
from gidgethub.routing import Router

from bot.store import open_store
from bot.store.base import DONE, FAILED, PROCESSING, QUEUED, NewDelivery
from tests.fakegithub.webhooks import load_example
from tests.support.harness import moko_environ, post_webhook, run_moko, start_moko_process
from tests.support.waiting import wait_until

PING = load_example("ping")
PING_BODY = json.dumps(PING).encode()


def ping(delivery_id: str) -> NewDelivery:
    return NewDelivery(delivery_id, "ping", None, {}, PING_BODY)


async def state_of(store, delivery_id: str) -> str | None:
    stored = await store.get_delivery(delivery_id)
    return stored.state if stored is not None else None


async def is_done(store, delivery_id: str) -> bool:
    return await state_of(store, delivery_id) == DONE


async def is_state(store, delivery_id: str, state: str) -> bool:
    return await state_of(store, delivery_id) == state


async def gauges(moko) -> tuple[str, ...]:
    """The queue's depth and the busy workers, as /metrics shows them."""
    async with moko.session.get(moko.url + "/metrics") as metrics:
        lines = (await metrics.text()).splitlines()
    return tuple(sorted(line for line in lines if line.startswith(("moko_queue_depth ", "moko_workers_busy "))))


def repository_locks_held(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM locks WHERE name LIKE 'repo:%'").fetchone()[0]


async def test_pruning_goes_on_past_one_statements_chunk_until_every_old_delivery_is_gone(env):
    async with run_moko({**env, "MOKO_DELIVERY_RETENTION_DAYS": "3"}) as moko:
        store = moko.services.store
        finished = [ping(f"old{i:04}") for i in range(2100)]
        await asyncio.gather(*(store.add_and_claim(d, "another-replica", 60) for d in finished))
        await asyncio.gather(*(store.finish_delivery(d.id, "another-replica", DONE if i % 2 else FAILED)
                               for i, d in enumerate(finished)))
        assert await store.add_delivery(ping("unfinished"))
        # More than one DELETE's worth (2000): the rest go too, in the same round.
        assert await moko.workers.prune_once(now=time.time() + 3 * 86400 + 60) == 2100
        assert await store.count_deliveries(DONE) + await store.count_deliveries(FAILED) == 0
        assert await state_of(store, "unfinished") is not None


async def test_recovery_fills_the_queue_up_to_its_bound_and_no_further(env):
    gate = asyncio.Event()
    router = Router()
    seen: list[str] = []

    @router.register("ping")
    async def record(event, ctx):
        seen.append(event.delivery_id)
        await gate.wait()

    # One worker, a queue of 2: the delivery in flight takes one place.
    env = {**env, "MOKO_WORKERS": "1", "MOKO_QUEUE_MAX": "2", "MOKO_LEASE_SECONDS": "2"}
    async with run_moko(env, router=router) as moko:
        assert (await moko.send("ping", PING, delivery="busy")).status == 202
        await wait_until(lambda: seen == ["busy"])
        store = moko.services.store
        for name in ("left-1", "left-2"):  # as another process left them
            assert await store.add_delivery(ping(name))
        # A recovery round (this one, or the pool's own) takes the one place left.
        await asyncio.wait_for(moko.workers.recover_once(), 10)
        assert sorted([await state_of(store, "left-1"), await state_of(store, "left-2")]) == [PROCESSING, QUEUED]
        # Full: a round takes nothing, and the intake answers 503.
        assert await asyncio.wait_for(moko.workers.recover_once(), 10) == 0
        refused = await moko.send("ping", PING, delivery="refused")
        assert (refused.status, refused.headers.get("Retry-After")) == (503, "5")
        gate.set()
        # The other is taken by a later round, once there is room.
        await wait_until(lambda: sorted(seen) == ["busy", "left-1", "left-2"], timeout=30)
        await moko.settle()
        states = [await state_of(store, n) for n in ("busy", "left-1", "left-2", "refused")]
    assert states == [DONE, DONE, DONE, None]


async def test_a_start_takes_every_delivery_left_unfinished_in_its_first_recovery_round(fake_github, tmp_path):
    url = f"sqlite:///{tmp_path}/moko.db"
    store = open_store(url)
    await store.open()
    try:
        # Left by a process that stopped: more than one claim's worth (100).
        await asyncio.gather(*(store.add_delivery(ping(f"left{i:03}")) for i in range(250)))
    finally:
        await store.close()
    server = await start_moko_process(moko_environ(fake_github, url, LOG_LEVEL="info"), tmp_path / "serve.log")
    try:
        def recovered() -> list[int]:
            lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
            return [line["count"] for line in lines if line.get("message") == "deliveries_recovered"]

        await wait_until(lambda: recovered() != [])
    finally:
        assert await server.stop() == 0, server.log()
    assert recovered()[0] == 250


@pytest.mark.parametrize("workers", [1, 2])
async def test_each_burst_for_one_installation_starts_one_writer_and_a_workers_worth_of_waiters(
    fake_github, tmp_path, workers
):
    # Writes of one installation go one at a time; beyond one waiting delivery per worker, the
    # installation's later deliveries wait unstarted (no lock, no lease, no payload held). A
    # second burst, once the first is done, is held back the same way.
    fake_github.add_installation(1, "acme")
    bursts = [[f"burst{i}-{j}" for j in range(8)] for i in range(2)]
    for name in (name for names in bursts for name in names):
        fake_github.add_repo("acme", name, has_wiki=True, has_issues=True, has_projects=False)
    writes_open = asyncio.Event()

    async def hold_writes(call) -> None:
        if call.method == "PATCH":
            await writes_open.wait()

    fake_github.on_request(hold_writes)
    db = tmp_path / "moko.db"
    seen: list[tuple[int, str]] = []  # (repository locks held, queue depth) once each burst has left the queue
    async with run_moko(moko_environ(fake_github, f"sqlite:///{db}", MOKO_WORKERS=str(workers))) as moko:
        for number, names in enumerate(bursts):
            writes_open.clear()
            for name in names:
                created = fake_github.event("repository", "created", owner="acme", repo=name)
                assert (await moko.send("repository", created)).status == 202
            # Queued behind the burst, for no installation: once it is done, every delivery of
            # the burst has left the queue, started or held back.
            assert (await moko.send("ping", PING, delivery=f"behind{number}")).status == 202
            await wait_until(lambda: is_done(moko.services.store, f"behind{number}"))  # noqa: B023
            # The ones held back count in the queue's depth.
            seen.append((repository_locks_held(db), *await gauges(moko)))
            writes_open.set()
            await moko.settle()
            seen.append(await gauges(moko))
    # The one writing, and one waiting for its turn per worker; the others held back. A writer
    # whose answer is a second late gives its worker back too, and counts as one waiting: with
    # one worker, the delivery queued behind the burst gets a worker only then, so the writer
    # is all that started; with two, the second waiter may have come before or after that.
    # Once the burst is done, nothing is queued and no worker is busy.
    for during, done in zip(seen[0::2], seen[1::2], strict=True):
        started, depth = during[0], during[1]
        assert (started == 1) if workers == 1 else (2 <= started <= 3)
        assert depth == f"moko_queue_depth {8 - started}.0"
        assert done == ("moko_queue_depth 0.0", "moko_workers_busy 0.0")
    assert fake_github.count("PATCH", r"^/repos/acme/") == 16
    assert all(fake_github.repo("acme", name)["has_wiki"] is False for names in bursts for name in names)


async def test_a_queued_delivery_whose_claim_another_replica_took_meanwhile_is_left_to_it(env):
    gate = asyncio.Event()
    router = Router()
    seen: list[str] = []

    @router.register("ping")
    async def record(event, ctx):
        seen.append(event.delivery_id)
        await gate.wait()

    env = {**env, "MOKO_WORKERS": "1", "MOKO_LEASE_SECONDS": "1"}
    async with run_moko(env, router=router) as moko:
        assert (await moko.send("ping", PING, delivery="blocking")).status == 202
        await wait_until(lambda: seen == ["blocking"])
        store = moko.services.store
        assert await store.add_delivery(ping("left"))
        assert await moko.workers.recover_once() == 1  # claimed here; it waits behind "blocking"

        # Its lease runs out while it waits; another replica claims it (for a minute).
        async def taken_by_another() -> bool:
            return [d.id for d in await store.claim_pending("another-replica", 60, 10)] == ["left"]

        await wait_until(taken_by_another, timeout=30)
        gate.set()
        await moko.settle()
        stored = await store.get_delivery("left")
        # The worker that let it go takes the next delivery as usual.
        assert (await moko.deliver("ping", PING, delivery="after")).status == 202
    # This replica checks its claim before acting on a delivery that waited long: it is not processed here.
    assert seen == ["blocking", "after"]
    assert stored.state == PROCESSING  # in the other replica's hands


def log_lines(server) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


async def test_a_lease_another_replica_took_during_a_long_delivery_is_logged_lost(fake_github, tmp_path):
    fake_github.add_installation(1, "acme")
    fake_github.add_repo("acme", "slow", has_wiki=True, has_issues=True, has_projects=False)
    writes_open = asyncio.Event()

    async def hold_writes(call) -> None:
        if call.method == "PATCH":
            await writes_open.wait()

    fake_github.on_request(hold_writes)
    db = tmp_path / "moko.db"
    env = moko_environ(fake_github, f"sqlite:///{db}", MOKO_LEASE_SECONDS="1")
    server = await start_moko_process(env, tmp_path / "serve.log")
    try:
        async with aiohttp.ClientSession() as session:
            created = fake_github.event("repository", "created", owner="acme", repo="slow")
            assert (await post_webhook(session, server.url, "repository", created, delivery="slow")).status == 202
        await wait_until(lambda: fake_github.arrived("PATCH") == 1)
        # Renewed while it is held: past a whole lease, it is still this process's.
        with sqlite3.connect(db) as conn:
            first_lease = conn.execute("SELECT lease_until FROM deliveries WHERE id = 'slow'").fetchone()[0]

        def renewed() -> bool:
            with sqlite3.connect(db) as conn:
                return conn.execute("SELECT lease_until FROM deliveries WHERE id = 'slow'").fetchone()[0] > first_lease

        await wait_until(renewed, timeout=10)
        assert [line for line in log_lines(server) if line.get("message") == "lease_lost"] == []
        # Another replica takes it (as after a pause longer than the lease): the next renewal fails.
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE deliveries SET owner = 'another-replica', lease_until = lease_until + 600 WHERE id = 'slow'")
        await wait_until(lambda: [line.get("delivery") for line in log_lines(server)
                                  if line.get("message") == "lease_lost"] == ["slow"], timeout=10)
        writes_open.set()
    finally:
        writes_open.set()
        assert await server.stop() == 0, server.log()


async def shutting_down_refusals(moko) -> float:
    """Pings refused as shutting down, as /metrics counts them (0 before the first)."""
    name = 'moko_webhooks_received_total{event="ping",outcome="shutting_down"} '
    async with moko.session.get(moko.url + "/metrics") as metrics:
        lines = [line for line in (await metrics.text()).splitlines() if line.startswith(name)]
    return float(lines[0].removeprefix(name)) if lines else 0.0


async def test_a_delivery_sent_while_the_pool_drains_is_refused_as_shutting_down(env):
    gate = asyncio.Event()
    router = Router()
    seen: list[str] = []

    @router.register("ping")
    async def record(event, ctx):
        seen.append(event.delivery_id)
        await gate.wait()

    async with run_moko(env, router=router) as moko:
        assert (await moko.send("ping", PING, delivery="in-flight")).status == 202
        await wait_until(lambda: seen == ["in-flight"])
        refused_before = await shutting_down_refusals(moko)
        draining = asyncio.create_task(moko.workers.drain(30))
        await wait_until(lambda: moko.workers.accepting is False, timeout=10)
        late = await moko.send("ping", PING, delivery="late")
        gate.set()
        await draining
        # Stopped: nothing queued, nothing held back, no worker busy.
        assert await gauges(moko) == ("moko_queue_depth 0.0", "moko_workers_busy 0.0")
        states = [await state_of(moko.services.store, n) for n in ("in-flight", "late")]
        refused = await shutting_down_refusals(moko) - refused_before
    assert (late.status, late.body, late.headers.get("Retry-After")) == (503, {"error": "shutting down"}, "5")
    assert refused == 1
    # The one in flight was let finish; the late one was never stored.
    assert states == [DONE, None]


async def test_a_delivery_whose_processing_crashes_ends_failed_logged_with_its_traceback(fake_github, tmp_path):
    # A body the intake would refuse (not an object), stored by something else: processing it
    # raises. The delivery ends failed with the error named, the log has the traceback, and
    # the worker goes on with the next delivery.
    url = f"sqlite:///{tmp_path}/moko.db"
    store = open_store(url)
    await store.open()
    try:
        assert await store.add_delivery(NewDelivery("crashing", "ping", None, {}, b"[]"))
    finally:
        await store.close()
    server = await start_moko_process(moko_environ(fake_github, url), tmp_path / "serve.log")
    try:
        def crashed() -> list[dict]:
            return [line for line in log_lines(server) if line.get("message") == "delivery_crashed"]

        await wait_until(lambda: crashed() != [], timeout=30)
        async with aiohttp.ClientSession() as session:
            assert (await post_webhook(session, server.url, "ping", PING, delivery="next")).status == 202
        await wait_until(lambda: delivery_row(tmp_path / "moko.db", "next")[0] == DONE, timeout=30)
    finally:
        assert await server.stop() == 0, server.log()
    [line] = crashed()
    assert line["delivery"] == "crashing" and line["error"].startswith("AttributeError: ")
    assert "Traceback" in line["exception"] and "AttributeError" in line["exception"]
    assert delivery_row(tmp_path / "moko.db", "crashing") == (FAILED, line["error"])


def delivery_row(db: Path, delivery_id: str) -> tuple[str | None, str | None]:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT state, error FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
    return (row[0], row[1]) if row else (None, None)


async def test_recovery_goes_on_after_the_store_was_briefly_away(fake_github, tmp_path):
    db = tmp_path / "moko.db"
    url = f"sqlite:///{db}"
    # A lease of 1 s: recovery looks every half second.
    server = await start_moko_process(moko_environ(fake_github, url, MOKO_LEASE_SECONDS="1"), tmp_path / "serve.log")
    try:
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock: a round fails
        try:
            await wait_until(lambda: any(line.get("message") == "recovery_failed" for line in log_lines(server)),
                             timeout=30)
        finally:
            other.execute("ROLLBACK")
            other.close()
        store = open_store(url)
        await store.open()
        try:
            assert await store.add_delivery(ping("left"))  # as a process that stopped left it
        finally:
            await store.close()
        await wait_until(lambda: delivery_row(db, "left")[0] == DONE, timeout=30)
    finally:
        assert await server.stop() == 0, server.log()
