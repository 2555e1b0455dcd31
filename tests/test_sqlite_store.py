"""The SQLite store's group commit and repository locks: what it promises beyond the Store contract."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bot.store.base import DONE, SCHEMA_VERSION, NewDelivery
from bot.store.group_commit import GroupCommit
from bot.store.sqlite import SQLiteStore


def delivery(delivery_id: str) -> NewDelivery:
    return NewDelivery(delivery_id, "ping", None, {"x-github-event": "ping"}, b'{"zen": "ok"}')


def stored_ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT id FROM deliveries")}


@pytest.fixture
async def store(tmp_path: Path):
    opened = SQLiteStore(f"sqlite:///{tmp_path}/moko.db")
    await opened.open()
    yield opened
    await opened.close()


async def test_fifty_concurrent_writes_share_one_commit_and_all_are_on_disk(store: SQLiteStore, tmp_path: Path):
    before = store.commits
    results = await asyncio.gather(*(store.add_and_claim(delivery(f"d{i}"), "me", 60) for i in range(50)))
    assert all(queued for queued, _ in results)
    assert store.commits - before <= 2  # one batch, or two if a commit was already under way
    # Another connection (another process) sees every acknowledged write.
    assert stored_ids(tmp_path / "moko.db") == {f"d{i}" for i in range(50)}


async def test_a_write_waits_for_another_process_holding_the_lock_and_the_loop_keeps_running(
    store: SQLiteStore, tmp_path: Path
):
    other = sqlite3.connect(tmp_path / "moko.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process is writing
    try:
        write = asyncio.create_task(store.add_and_claim(delivery("late"), "me", 60))
        ticks = 0
        started = time.monotonic()
        while time.monotonic() - started < 0.3:
            await asyncio.sleep(0.01)
            ticks += 1
        assert not write.done()
        assert ticks >= 15  # the loop was not blocked while the write waited
    finally:
        other.execute("COMMIT")
        other.close()
    queued, claimed = await asyncio.wait_for(write, 5)
    assert queued and claimed is not None
    assert stored_ids(tmp_path / "moko.db") == {"late"}


@pytest.fixture
async def slow_when_loaded(tmp_path: Path):
    """A store whose loaded interval is a minute, so that what waits it out cannot be mistaken
    for a slow disk: a commit of eight writes or more makes it loaded."""
    opened = SQLiteStore(f"sqlite:///{tmp_path}/moko.db", group_commit=GroupCommit(loaded_batch=8, loaded_interval=60))
    await opened.open()
    yield opened
    await opened.close()


async def test_under_load_a_deliverys_end_waits_for_a_fuller_commit_but_an_acknowledgement_does_not(
    slow_when_loaded: SQLiteStore,
):
    store = slow_when_loaded
    # A commit of eight writes: the store is under load.
    await asyncio.gather(*(store.add_and_claim(delivery(f"d{i}"), "me", 60) for i in range(8)))
    commits = store.commits
    end = asyncio.ensure_future(store.finish_delivery("d0", "me", DONE))
    await asyncio.sleep(0.5)
    assert not end.done() and store.commits == commits  # it waits for more company
    # An acknowledgement's write (GitHub waits for it) commits at once, and the end with it.
    queued, _ = await asyncio.wait_for(store.add_and_claim(delivery("urgent"), "me", 60), 10)
    await asyncio.wait_for(end, 1)
    assert queued and store.commits == commits + 1
    assert (await store.get_delivery("d0")).state == DONE
    # That commit carried two writes: no longer under load, a lone write commits at once.
    await asyncio.wait_for(store.finish_delivery("d1", "me", DONE), 10)
    assert store.commits == commits + 2


async def test_a_sweeps_checkpoints_are_not_held_back_by_load(slow_when_loaded: SQLiteStore):
    # A sweep's eight workers each wait for their checkpoint before their next repository.
    store = slow_when_loaded
    await store.start_sweep("acme", sweep_id="s1")
    await asyncio.gather(*(store.checkpoint("s1", f"acme/r{i}", "compliant") for i in range(8)))
    await asyncio.wait_for(store.checkpoint("s1", "acme/r8", "fixed"), 10)
    assert (await store.sweep_outcomes("s1"))["acme/r8"] == "fixed"


async def test_seven_writes_at_once_are_not_load(slow_when_loaded: SQLiteStore):
    store = slow_when_loaded
    await asyncio.gather(*(store.add_and_claim(delivery(f"d{i}"), "me", 60) for i in range(7)))
    await asyncio.wait_for(store.finish_delivery("d0", "me", DONE), 10)
    assert (await store.get_delivery("d0")).state == DONE


async def test_closing_writes_what_callers_still_wait_for(tmp_path: Path):
    store = SQLiteStore(f"sqlite:///{tmp_path}/moko.db")
    await store.open()
    writes = [asyncio.create_task(store.add_and_claim(delivery(f"c{i}"), "me", 60)) for i in range(20)]
    await asyncio.sleep(0)  # queued, not yet committed
    await store.close()
    assert all(queued for queued, _ in [await write for write in writes])
    assert stored_ids(tmp_path / "moko.db") == {f"c{i}" for i in range(20)}


async def test_the_store_refuses_a_second_event_loop(store: SQLiteStore):
    failures: list[BaseException] = []

    def elsewhere() -> None:
        try:
            asyncio.run(store.ping())
        except RuntimeError as exc:
            failures.append(exc)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert failures and "event loop that opened it" in str(failures[0])
    await store.ping()  # still fine where it was opened


async def test_a_database_of_schema_version_1_is_migrated(tmp_path: Path):
    store = SQLiteStore(f"sqlite:///{tmp_path}/moko.db")
    await store.open()
    await store.add_and_claim(delivery("old"), "me", 60)
    await store.close()
    with sqlite3.connect(tmp_path / "moko.db") as db:  # as the previous Moko left it
        db.execute("DROP INDEX deliveries_finished")
        db.execute("DROP TABLE reconcile_turns")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    store = SQLiteStore(f"sqlite:///{tmp_path}/moko.db")
    await store.open()
    try:
        assert await store.schema_version() == SCHEMA_VERSION
        assert (await store.get_delivery("old")) is not None
        assert await store.join_reconciliation(1, "acme", 0)  # version 3's table
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "moko.db") as db:
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "deliveries_finished" in indexes


async def test_reads_neither_wait_for_nor_hold_the_write_lock(store: SQLiteStore, tmp_path: Path):
    await store.add_and_claim(delivery("seen"), "me", 60)
    other = sqlite3.connect(tmp_path / "moko.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # e.g. another process in the middle of a long write
    try:
        found = await asyncio.wait_for(store.get_delivery("seen"), 0.5)
        assert found is not None and found.id == "seen"
        assert await asyncio.wait_for(store.audit_records(), 0.5) == []
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_an_in_memory_store_reads_what_it_wrote_through_its_one_connection():
    store = SQLiteStore("sqlite:///:memory:")
    await store.open()
    try:
        writes = [store.add_and_claim(delivery(f"m{i}"), "me", 60) for i in range(20)]
        # In memory a read shares the writer's connection: it joins the batch after the writes
        # (never runs beside a commit in flight) and sees them.
        reads = [store.get_delivery("m0") for _ in range(5)]
        results = await asyncio.gather(*writes, *reads)
        assert all(queued for queued, _ in results[:20])
        assert all(found is not None and found.id == "m0" for found in results[20:])
        assert (await store.get_delivery("m19")) is not None
        assert await store.audit_chain() == (await store.audit_anchor(), [])
    finally:
        await store.close()


async def test_a_write_gives_up_after_two_seconds_of_another_process_holding_the_lock(
    store: SQLiteStore, tmp_path: Path
):
    other = sqlite3.connect(tmp_path / "moko.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process keeps the write lock
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await asyncio.wait_for(store.add_and_claim(delivery("stuck"), "me", 60), 10)
        assert 1.9 <= time.monotonic() - started < 4
    finally:
        other.execute("ROLLBACK")
        other.close()
    queued, _ = await store.add_and_claim(delivery("stuck"), "me", 60)  # free again: it is written
    assert queued and stored_ids(tmp_path / "moko.db") == {"stuck"}


async def test_throttle_hits_of_keys_nobody_counts_any_more_are_pruned(store: SQLiteStore, tmp_path: Path):
    day = 86400.0
    for i in range(10):
        await store.count_hit(f"old-user-{i}", 60, 1_000_000.0)
    # Two days later, other users comment: every 256th hit also deletes hits older than a day.
    for i in range(300):
        await store.count_hit(f"new-user-{i % 7}", 60, 1_000_000.0 + 2 * day + i)
    with sqlite3.connect(tmp_path / "moko.db") as db:
        keys = {row[0] for row in db.execute("SELECT DISTINCT key FROM hits")}
    assert keys == {f"new-user-{i}" for i in range(7)}


HOLD_A_LOCK_AND_DIE = """
import asyncio, os, sys
from bot.store.sqlite import SQLiteStore

async def main():
    store = SQLiteStore(sys.argv[1], lock_ttl=3600)
    await store.open()
    async with store.repository_lock("acme/widgets"):
        print("held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_repository_lock_held_by_a_process_that_died_is_taken_at_once(tmp_path: Path):
    # Its lease still runs for an hour, but the process is gone: waiting for the lease would
    # stall the repository for that hour.
    url = f"sqlite:///{tmp_path}/moko.db"
    store = SQLiteStore(url, lock_ttl=3600)
    await store.open()  # the other process dies while this one runs, as in a crash
    try:
        holder = subprocess.Popen([sys.executable, "-c", HOLD_A_LOCK_AND_DIE, url], stdout=subprocess.PIPE)
        try:
            line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 30)
            assert line == b"held\n"
            with sqlite3.connect(tmp_path / "moko.db") as db:
                held_by = db.execute("SELECT owner FROM locks WHERE name = 'repo:acme/widgets'").fetchall()
            assert len(held_by) == 1 and not held_by[0][0].startswith(store.owner)
        finally:
            holder.kill()
            holder.wait()
        async with asyncio.timeout(10):
            async with store.repository_lock("acme/widgets") as held:
                await held.ensure()
                await store.add_and_claim(delivery("meanwhile"), "me", 60)  # commits what came before
                with sqlite3.connect(tmp_path / "moko.db") as db:
                    rows = db.execute("SELECT owner, expires FROM locks WHERE name = 'repo:acme/widgets'").fetchall()
        # Taken with a lease of its own, so a third process cannot take it in turn.
        assert len(rows) == 1
        owner, expires = rows[0]
        assert owner.startswith(store.owner + "/")
        assert expires > time.time() + 3000
    finally:
        await store.close()


HOLD_LOCKS_AND_DIE = """
import asyncio, contextlib, sys
from bot.store.sqlite import SQLiteStore

async def main():
    store = SQLiteStore(sys.argv[1], lock_ttl=3600)
    await store.open()
    async with contextlib.AsyncExitStack() as stack:
        for repo in sys.argv[2:]:
            await stack.enter_async_context(store.repository_lock(repo))
        print("held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_of_processes_racing_for_a_dead_processs_locks_one_at_a_time_holds_each(tmp_path: Path):
    # Each waiting process finds the holder dead and takes its row; all but one find the row
    # taken by then and must go on waiting, or two would change one repository at once. Who
    # reads before whose take commits is up to the machine: several rounds, each its own race.
    url = f"sqlite:///{tmp_path}/moko.db"
    rounds = [[f"acme/round{r}-repo{i}" for i in range(4)] for r in range(6)]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCKS_AND_DIE, url, *(repo for repos in rounds for repo in repos)],
        stdout=subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 30)
        assert line == b"held\n"
    finally:
        holder.kill()
        holder.wait()
    stores = [SQLiteStore(url, lock_ttl=3600) for _ in range(3)]
    for store in stores:
        await store.open()
    inside: dict[str, list[str]] = {}
    at_once: dict[str, int] = {}

    async def change(store: SQLiteStore, repo: str) -> None:
        async with store.repository_lock(repo) as held:
            await held.ensure()
            inside.setdefault(repo, []).append(store.owner)
            at_once[repo] = max(at_once.get(repo, 0), len(inside[repo]))
            await asyncio.sleep(0.15)
            inside[repo].remove(store.owner)
        await store.add_and_claim(delivery(f"{repo} by {store.owner}"), "me", 60)  # the release commits with it

    try:
        for repos in rounds:
            async with asyncio.timeout(10):
                await asyncio.gather(*(change(store, repo) for repo in repos for store in stores))
    finally:
        for store in stores:
            await store.close()
    assert at_once == {repo: 1 for repos in rounds for repo in repos}


async def test_a_repository_lock_given_back_logs_no_warning(store: SQLiteStore, tmp_path: Path):
    with capture_logs() as logs:
        async with store.repository_lock("acme/widgets") as held:
            await held.ensure()
        await store.add_and_claim(delivery("after"), "me", 60)  # the release commits with it
        await store.add_and_claim(delivery("later"), "me", 60)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == []
    assert await store.try_lock("repo:acme/widgets", "another-process", 60)


async def test_a_repository_lock_that_cannot_be_given_back_is_logged(store: SQLiteStore, tmp_path: Path):
    # The row then stays until its lease runs out: an operator should hear why the
    # repository waits.
    with sqlite3.connect(tmp_path / "moko.db") as db:
        db.execute("CREATE TRIGGER refuse BEFORE DELETE ON locks BEGIN SELECT RAISE(ABORT, 'disk is failing'); END")
    with capture_logs() as logs:
        async with store.repository_lock("acme/widgets") as held:
            await held.ensure()
        await store.add_and_claim(delivery("after"), "me", 60)  # the release commits with it
        await store.add_and_claim(delivery("later"), "me", 60)
    assert [(e["event"], e["repo"], e["error"]) for e in logs if e["log_level"] == "warning"] == [
        ("repository_lock_not_released", "acme/widgets", "disk is failing")]


async def test_a_repository_lock_held_by_a_live_process_is_waited_for(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/moko.db"
    first, second = SQLiteStore(url, lock_ttl=3600), SQLiteStore(url, lock_ttl=3600)
    await first.open()
    await second.open()
    try:
        order: list[str] = []
        async with first.repository_lock("acme/widgets"):
            await first.add_and_claim(delivery("d1"), "me", 60)  # the lock's row is on disk

            async def take_second() -> None:
                async with second.repository_lock("acme/widgets"):
                    order.append("second has it")

            waiting = asyncio.create_task(take_second())
            await asyncio.sleep(1.0)  # several polls of the row
            order.append("first gives it back")
        await first.add_and_claim(delivery("d2"), "me", 60)  # the release commits with it
        await asyncio.wait_for(waiting, 10)
        assert order == ["first gives it back", "second has it"]
    finally:
        await first.close()
        await second.close()
