"""The scheduled reconciliation: one replica sweeps at a time (a lock in the store), no replica
sweeps again before the interval is over, a failed round is taken up again at once, the audit
trail is pruned, and `moko serve` runs it over every installation with the sweep's own code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.audit import AuditWriter, settled
from bot.config import load_settings
from bot.context import Services
from bot.scheduler import LOCK_NAME, ScheduledSweeps
from bot.store.base import AuditEntry
from bot.store.sqlite import SQLiteStore
from tests.support.harness import run_moko

ORG = "acme"
PROTECTION = {
    "required_status_checks": None,
    "enforce_admins": False,
    "required_pull_request_reviews": {"required_approving_review_count": 1},
    "restrictions": None,
}


class Clock:
    """The store's clock (lock expiry), moved by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path, clock) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(f"sqlite:///{tmp_path}/moko.db", clock=clock)
    await store.open()
    yield store
    await store.close()


def replica(store: SQLiteStore, env: dict[str, str], owner: str, **settings: Any) -> Services:
    base = load_settings({**env, "MOKO_SWEEP_INTERVAL": "6h"})
    return Services(settings=replace(base, **settings), store=store, github=None,  # type: ignore[arg-type]
                    audit=AuditWriter(store), owner=owner)


class Sweeps:
    """A sweep_all that records who swept, and can be held open or made to fail."""

    def __init__(self) -> None:
        self.by: list[str] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail = False

    async def __call__(self, services: Services) -> None:
        self.by.append(services.owner)
        await self.release.wait()
        if self.fail:
            raise RuntimeError("GitHub is down")


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


async def test_only_one_replica_sweeps_at_a_time(store, env):
    sweeps = Sweeps()
    sweeps.release.clear()
    one = ScheduledSweeps(replica(store, env, "replica-1"), sweeps, sleep=no_sleep)
    two = ScheduledSweeps(replica(store, env, "replica-2"), sweeps, sleep=no_sleep)
    first = asyncio.create_task(one.run_once())
    while not sweeps.by:
        await asyncio.sleep(0.01)
    assert await two.run_once() is False  # replica-1 is sweeping
    sweeps.release.set()
    assert await first is True
    assert sweeps.by == ["replica-1"]


async def test_no_replica_sweeps_again_before_the_interval_is_over(store, env, clock):
    sweeps = Sweeps()
    one = ScheduledSweeps(replica(store, env, "replica-1"), sweeps, sleep=no_sleep)
    two = ScheduledSweeps(replica(store, env, "replica-2"), sweeps, sleep=no_sleep)
    restarted = ScheduledSweeps(replica(store, env, "replica-1-restarted"), sweeps, sleep=no_sleep)
    assert await one.run_once() is True
    clock.now += 6 * 3600 - 60
    assert await two.run_once() is False and await restarted.run_once() is False
    clock.now += 61
    assert await two.run_once() is True
    assert sweeps.by == ["replica-1", "replica-2"]


async def test_the_replica_that_swept_does_not_sweep_again_before_the_interval_is_over(store, env, clock):
    sweeps = Sweeps()
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def wall() -> datetime:
        return now + timedelta(seconds=clock.now)

    one = ScheduledSweeps(replica(store, env, "replica-1"), sweeps, sleep=no_sleep, now=wall)
    assert await one.run_once() is True
    clock.now += 60  # the next poll
    assert await one.run_once() is False
    clock.now += 6 * 3600
    assert await one.run_once() is True
    assert sweeps.by == ["replica-1", "replica-1"]


async def test_the_first_sweep_is_one_interval_after_the_first_start(store, env, clock):
    sweeps = Sweeps()
    start = clock.now
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def wall() -> datetime:
        return now + timedelta(seconds=clock.now)

    seen: list[tuple[float, int]] = []  # (seconds since start, sweeps so far) at every poll
    other_replica_swept: list[bool] = []
    restarted = ScheduledSweeps(replica(store, env, "replica-2"), sweeps, sleep=no_sleep, now=wall)

    async def sleep(seconds: float) -> None:
        if not other_replica_swept:
            other_replica_swept.append(await restarted.run_once())
        seen.append((clock.now - start, len(sweeps.by)))
        if len(seen) > 6 * 60 + 5:
            raise asyncio.CancelledError
        clock.now += seconds

    first = ScheduledSweeps(replica(store, env, "replica-1"), sweeps, sleep=sleep, now=wall)
    with pytest.raises(asyncio.CancelledError):
        await first.run_forever()
    assert other_replica_swept == [False]
    assert all(count == 0 for elapsed, count in seen if elapsed < 6 * 3600)
    assert sweeps.by == ["replica-1"]  # once, when the interval was over


async def test_a_failed_round_gives_the_lock_back_at_once(store, env):
    sweeps = Sweeps()
    sweeps.fail = True
    one = ScheduledSweeps(replica(store, env, "replica-1"), sweeps, sleep=no_sleep)
    two = ScheduledSweeps(replica(store, env, "replica-2"), sweeps, sleep=no_sleep)
    assert await one.run_once() is True
    sweeps.fail = False
    assert await two.run_once() is True  # the sweep resumes from its checkpoints elsewhere
    assert sweeps.by == ["replica-1", "replica-2"]


async def test_a_stopped_server_gives_the_lock_back(store, env):
    sweeps = Sweeps()
    sweeps.release.clear()
    one = ScheduledSweeps(replica(store, env, "replica-1"), sweeps, sleep=no_sleep)
    task = asyncio.create_task(one.run_once())
    while not sweeps.by:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await store.try_lock(LOCK_NAME, "replica-2", 60) is True


async def test_the_lock_is_renewed_while_a_long_sweep_runs(store, env, clock):
    sweeps = Sweeps()
    sweeps.release.clear()
    renewals = asyncio.Event()

    async def sleep(seconds: float) -> None:
        clock.now += seconds  # the sweep goes on for longer than the lease
        renewals.set()
        await asyncio.sleep(0.01)

    one = ScheduledSweeps(replica(store, env, "replica-1"), sweeps, sleep=sleep, lease_seconds=30)
    task = asyncio.create_task(one.run_once())
    for _ in range(5):
        renewals.clear()
        await renewals.wait()
    await asyncio.sleep(0.05)
    assert await store.try_lock(LOCK_NAME, "replica-2", 30) is False
    sweeps.release.set()
    assert await task is True


async def test_interval_zero_turns_it_off(store, env):
    sweeps = Sweeps()
    off = ScheduledSweeps(replica(store, env, "replica-1", sweep_interval=0.0), sweeps, sleep=no_sleep)
    await asyncio.wait_for(off.run_forever(), 1)
    assert sweeps.by == []


async def test_a_round_prunes_the_audit_trail_past_retention(store, env):
    now = datetime.now(UTC)
    writer = AuditWriter(store)
    for moment in (now - timedelta(days=120), now - timedelta(days=1)):
        await writer.write([AuditEntry(time=moment, run_id="r", trigger="t", installation=1, repo=f"{ORG}/x",
                                       actor="octocat", policy="repository", field="has_wiki",
                                       before=True, after=False, outcome="applied")])
    one = ScheduledSweeps(replica(store, env, "replica-1"), Sweeps(), sleep=no_sleep, now=lambda: now)
    assert await one.run_once() is True
    assert [r.time for r in await store.audit_records()] == [now - timedelta(days=1)]


async def test_serve_sweeps_every_installation_on_schedule(fake_github, env):
    fake = fake_github
    fake.add_installation(1, ORG)
    fake.add_installation(2, "globex")
    fake.add_repo(ORG, "drifted", has_wiki=True, has_issues=True, has_projects=False)
    fake.set_protection(ORG, "drifted", "main", PROTECTION)
    fake.add_repo("globex", "unprotected", has_wiki=False, has_issues=True, has_projects=False)
    # The first sweep comes one interval after start: a short interval keeps the test short.
    async with run_moko({**env, "MOKO_SWEEP_INTERVAL": "1s"}) as moko:
        store = moko.services.store
        expected = {(f"{ORG}/drifted", "has_wiki", "applied"), ("globex/unprotected", "main", "applied")}
        deadline = asyncio.get_running_loop().time() + 60  # returns once done; CI is loaded
        # The change reaches the fake before its audit record reaches the store: wait for both.
        while True:
            records = settled(await store.audit_records())
            if {(r.repo, r.field, r.outcome) for r in records} == expected:
                break
            assert asyncio.get_running_loop().time() < deadline, "the scheduled sweep did not fix both in 60 s"
            await asyncio.sleep(0.05)
        assert fake.repo(ORG, "drifted")["has_wiki"] is False and fake.protection("globex", "unprotected", "main")
        assert {(r.trigger, r.actor) for r in records} == {("schedule", fake.bot_login)}
        assert {r.installation for r in records} == {1, 2}
    pages = [c for c in fake.calls_to("POST", "^/graphql$") if "MokoSchema" not in (c.graphql_query or "")]
    assert len(pages) % 2 == 0  # one page per installation and round
