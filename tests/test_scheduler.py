"""The continuous reconciliation's cycle: turns spread over the interval, one replica per
installation at a time, a failed turn tried again soon, a stopped replica giving its turn
back, a lost lease stopping the turn, the App's installations joining and leaving, audit
pruning on one replica per hour, and the budget stretching the interval."""

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
from bot.github_limits import RateLimitSnapshot
from bot.metrics import RECONCILE_INTERVAL
from bot.reconcile_budget import BUDGET, LIMIT_NEARLY_SPENT, TurnCost, interval_for
from bot.scheduler import RETRY_SECONDS, ReconcileCycle, first_turn_in
from bot.store.base import AuditEntry
from bot.store.sqlite import SQLiteStore
from tests.support.harness import run_moko
from tests.support.waiting import wait_until

INTERVAL = 600.0
PROTECTION = {
    "required_status_checks": None,
    "enforce_admins": False,
    "required_pull_request_reviews": {"required_approving_review_count": 1},
    "restrictions": None,
}
CHEAP = TurnCost(rest_requests=1, graphql_points=1)


class Clock:
    """The store's clock (due times, leases) and the cycle's, moved by hand."""

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
    base = load_settings({**env, "MOKO_SWEEP_INTERVAL": "10m"})
    return Services(settings=replace(base, **settings), store=store, github=None,  # type: ignore[arg-type]
                    audit=AuditWriter(store), owner=owner)


class Work:
    """A reconcile_one that records whose turn it was, and can be held open or made to fail."""

    def __init__(self, cost: TurnCost = CHEAP) -> None:
        self.turns: list[tuple[str, int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail = False
        self.cost = cost

    async def __call__(self, services: Services, installation: int, account: str) -> TurnCost:
        self.turns.append((services.owner, installation))
        await self.release.wait()
        if self.fail:
            raise RuntimeError("GitHub is down")
        return self.cost


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def cycle(services: Services, work: Work, clock: Clock, **kwargs: Any) -> ReconcileCycle:
    kwargs.setdefault("sleep", no_sleep)
    return ReconcileCycle(services, work, clock=clock, **kwargs)


async def turn_once(one: ReconcileCycle) -> int:
    started = await one.take_turns()
    await one.wait_turns()
    return started


def test_installations_are_spread_over_the_interval():
    phases = sorted(first_turn_in(i, INTERVAL) for i in range(1, 101))
    assert 0 <= phases[0] and phases[-1] < INTERVAL
    # 100 installations: no tenth of the interval holds more than a fifth of them.
    assert max(sum(1 for p in phases if k * 60 <= p < (k + 1) * 60) for k in range(10)) <= 20


async def test_each_installation_s_turn_comes_once_per_interval(store, env, clock):
    work = Work()
    one = cycle(replica(store, env, "replica-1"), work, clock)
    for installation in (1, 2, 3):
        await store.join_reconciliation(installation, f"org{installation}", 0)
    assert await turn_once(one) == 3
    clock.now += INTERVAL - 1
    assert await turn_once(one) == 0
    clock.now += 1
    assert await turn_once(one) == 3
    assert sorted(work.turns) == [("replica-1", i) for i in (1, 1, 2, 2, 3, 3)]
    assert {t.interval for t in await store.reconcile_turns()} == {INTERVAL}
    assert RECONCILE_INTERVAL.labels("2")._value.get() == INTERVAL


async def test_an_installation_held_by_one_replica_is_not_taken_by_another(store, env, clock):
    work = Work()
    work.release.clear()
    one = cycle(replica(store, env, "replica-1"), work, clock)
    two = cycle(replica(store, env, "replica-2"), work, clock)
    await store.join_reconciliation(1, "acme", 0)
    await store.join_reconciliation(2, "globex", 0)
    assert await one.take_turns() == 2
    assert await two.take_turns() == 0
    work.release.set()
    await one.wait_turns()
    assert sorted(work.turns) == [("replica-1", 1), ("replica-1", 2)]


async def test_a_replica_runs_at_most_max_turns_and_leaves_the_rest_to_others(store, env, clock):
    work = Work()
    work.release.clear()
    one = cycle(replica(store, env, "replica-1"), work, clock, max_turns=2)
    two = cycle(replica(store, env, "replica-2"), work, clock, max_turns=2)
    for installation in (1, 2, 3):
        await store.join_reconciliation(installation, f"org{installation}", 0)
    assert await one.take_turns() == 2
    assert await two.take_turns() == 1
    work.release.set()
    await one.wait_turns()
    await two.wait_turns()
    assert sorted(owner for owner, _ in work.turns) == ["replica-1", "replica-1", "replica-2"]


async def test_a_failed_turn_is_tried_again_soon_not_after_the_interval(store, env, clock):
    work = Work()
    work.fail = True
    one = cycle(replica(store, env, "replica-1"), work, clock)
    await store.join_reconciliation(1, "acme", 0)
    assert await turn_once(one) == 1
    work.fail = False
    clock.now += RETRY_SECONDS - 1
    assert await turn_once(one) == 0
    clock.now += 1
    assert await turn_once(one) == 1


async def test_a_stopped_replica_gives_its_turn_back_at_once(store, env, clock):
    work = Work()
    work.release.clear()
    one = cycle(replica(store, env, "replica-1"), work, clock)
    await store.join_reconciliation(1, "acme", 0)
    running = asyncio.create_task(one.run_forever())
    await wait_until(lambda: bool(work.turns))
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    two = cycle(replica(store, env, "replica-2"), Work(), clock)
    assert await turn_once(two) == 1


async def test_a_dead_replica_s_turn_is_taken_once_its_lease_lapses(store, env, clock):
    await store.join_reconciliation(1, "acme", 0)
    assert await store.claim_reconcile_turn("dead-replica", 120) is not None
    work = Work()
    two = cycle(replica(store, env, "replica-2", lease_seconds=120.0), work, clock)
    assert await turn_once(two) == 0
    clock.now += 121
    assert await turn_once(two) == 1
    assert work.turns == [("replica-2", 1)]


async def test_the_lease_is_renewed_while_a_long_turn_runs_and_a_lost_one_stops_it(store, env, clock):
    work = Work()
    work.release.clear()
    renewals = asyncio.Event()

    async def sleep(seconds: float) -> None:
        clock.now += seconds  # the turn goes on for longer than the lease
        renewals.set()
        await asyncio.sleep(0.01)

    one = cycle(replica(store, env, "replica-1", lease_seconds=30.0), work, clock, sleep=sleep)
    await store.join_reconciliation(1, "acme", 0)
    assert await one.take_turns() == 1
    for _ in range(5):
        renewals.clear()
        await renewals.wait()
    await asyncio.sleep(0.05)
    assert await store.claim_reconcile_turn("replica-2", 30) is None  # still held
    # The store gives the turn to another replica behind its back (its renewals were lost).
    await store.finish_reconcile_turn(1, "replica-1", next_in=0, interval=None)
    assert await store.claim_reconcile_turn("replica-2", 300) is not None
    await asyncio.wait_for(one.wait_turns(), 5)  # it noticed and stopped
    assert [t.owner for t in await store.reconcile_turns()] == ["replica-2"]


async def test_interval_zero_turns_it_off(store, env, clock):
    work = Work()
    await store.join_reconciliation(1, "acme", 0)
    off = cycle(replica(store, env, "replica-1", sweep_interval=0.0), work, clock)
    await asyncio.wait_for(off.run_forever(), 1)
    assert work.turns == []


async def test_the_app_s_installations_join_spread_and_the_gone_ones_leave(store, env, clock):
    listed = [(1, "acme"), (2, "globex")]

    async def installations(services: Services) -> list[tuple[int, str]]:
        return list(listed)

    one = cycle(replica(store, env, "replica-1"), Work(), clock, list_installations=installations)
    two = cycle(replica(store, env, "replica-2"), Work(), clock, list_installations=installations)
    assert await one.sync_installations() is True
    assert await two.sync_installations() is False  # one replica per interval
    turns = {t.installation_id: t for t in await store.reconcile_turns()}
    assert {i: t.account for i, t in turns.items()} == {1: "acme", 2: "globex"}
    for installation, turn in turns.items():
        due_in = turn.due_at.timestamp() - clock.now
        assert due_in == pytest.approx(first_turn_in(installation, INTERVAL), abs=0.01)
    listed[:] = [(2, "globex"), (3, "initech")]
    assert await one.sync_installations() is False  # not before the interval is over
    clock.now += INTERVAL + 1
    assert await two.sync_installations() is True
    assert [t.installation_id for t in await store.reconcile_turns()] == [2, 3]


async def test_the_audit_trail_is_pruned_by_one_replica_once_an_hour(store, env, clock):
    now = datetime.now(UTC)
    writer = AuditWriter(store)

    async def record(moment: datetime) -> None:
        await writer.write([AuditEntry(time=moment, run_id="r", trigger="t", installation=1, repo="acme/x",
                                       actor="octocat", policy="repository", field="has_wiki",
                                       before=True, after=False, outcome="applied")])

    for moment in (now - timedelta(days=120), now - timedelta(days=1)):
        await record(moment)
    one = cycle(replica(store, env, "replica-1"), Work(), clock, now=lambda: now)
    two = cycle(replica(store, env, "replica-2"), Work(), clock, now=lambda: now)
    assert await one.prune_audit() is True
    assert [r.time for r in await store.audit_records()] == [now - timedelta(days=1)]
    assert await two.prune_audit() is False and await one.prune_audit() is False
    clock.now += 3601
    assert await two.prune_audit() is True


async def test_a_costly_turn_stretches_the_interval(store, env, clock):
    # 100 points a turn with 10 % of 5,000 points an hour: one turn every 12 minutes at best.
    costly = TurnCost(rest_requests=2, graphql_points=100,
                      graphql=RateLimitSnapshot("graphql", 5000, 4000, clock.now + 3600))
    one = cycle(replica(store, env, "replica-1"), Work(costly), clock)
    await store.join_reconciliation(7, "bigcorp", 0)
    assert await turn_once(one) == 1
    [turn] = await store.reconcile_turns()
    assert turn.interval == pytest.approx(720)
    assert turn.due_at.timestamp() - clock.now == pytest.approx(720, abs=0.5)
    assert RECONCILE_INTERVAL.labels("7")._value.get() == pytest.approx(720)


def test_the_budget_counts_both_limits_and_waits_for_a_reset_when_nearly_spent():
    core = RateLimitSnapshot("core", 15000, 14000, 10_000.0)
    cheap = interval_for(TurnCost(5, 10, core=core), configured=600, budget=0.1, reserve=0.1, elapsed=3, now=9_000)
    assert (cheap.seconds, cheap.stretched) == (600, False)
    rest = interval_for(TurnCost(300, 10, core=core), configured=600, budget=0.1, reserve=0.1, elapsed=3, now=9_000)
    assert (rest.seconds, rest.reason) == (pytest.approx(720), BUDGET)  # 300 of 1,500 an hour
    spent = RateLimitSnapshot("core", 5000, 450, 10_000.0)
    low = interval_for(TurnCost(5, 10, core=spent), configured=600, budget=0.1, reserve=0.1, elapsed=3, now=9_000)
    assert (low.seconds, low.reason) == (1003, LIMIT_NEARLY_SPENT)  # until the reset, from the turn's start


async def test_serve_sweeps_every_installation_on_schedule(fake_github, env):
    fake = fake_github
    fake.add_installation(1, "acme")
    fake.add_installation(2, "globex")
    fake.add_repo("acme", "drifted", has_wiki=True, has_issues=True, has_projects=False)
    fake.set_protection("acme", "drifted", "main", PROTECTION)
    fake.add_repo("globex", "unprotected", has_wiki=False, has_issues=True, has_projects=False)
    # Each installation's first turn falls within the first interval: a short one keeps the
    # test short (and the whole budget lets a turn a second keep to it).
    async with run_moko({**env, "MOKO_SWEEP_INTERVAL": "1s", "MOKO_SWEEP_BUDGET": "1"}) as moko:
        store = moko.services.store
        expected = {("acme/drifted", "has_wiki", "applied"), ("globex/unprotected", "main", "applied")}
        deadline = asyncio.get_running_loop().time() + 60  # returns once done; CI is loaded
        # The change reaches the fake before its audit record reaches the store: wait for both.
        while True:
            records = settled(await store.audit_records())
            if {(r.repo, r.field, r.outcome) for r in records} == expected:
                break
            assert asyncio.get_running_loop().time() < deadline, "the scheduled sweep did not fix both in 60 s"
            await asyncio.sleep(0.05)
        assert fake.repo("acme", "drifted")["has_wiki"] is False and fake.protection("globex", "unprotected", "main")
        assert {(r.trigger, r.actor) for r in records} == {("schedule", fake.bot_login)}
        assert {r.installation for r in records} == {1, 2}
    # Each turn reads its own installation's repositories, one page each.
    pages = [c for c in fake.calls_to("POST", "^/graphql$") if "MokoOwnerRepositories" in (c.graphql_query or "")]
    assert {c.installation_id for c in pages} == {1, 2}
