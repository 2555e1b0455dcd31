"""Continuous reconciliation from outside, through real `moko serve` processes: drift that sends
no webhook is fixed within one interval whatever another installation does, two replicas on one
database never reconcile one installation at once and together keep every installation's
interval, a killed replica's installations are taken over, installations join and leave the
cycle with their events, and a tiny budget stretches the interval and says so."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time

import aiohttp
import asyncpg
import pytest

from tests.support.harness import MokoProcess, moko_environ, post_webhook, start_moko_process
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION
from tests.support.waiting import wait_until

INTERVAL = 2.0
# What "within one interval" may add: a poll (a tenth of the interval), the turn's own reads
# and write, and a loaded machine's scheduling.
SLACK = 2.0
# A short interval, and the whole of each installation's limits for it: a turn every two
# seconds costs 1,800 points an hour, more than the default budget's 500 allow.
SHORT = {"MOKO_SWEEP_INTERVAL": f"{INTERVAL:g}s", "MOKO_SWEEP_BUDGET": "1"}


def compliant_org(fake, installation: int, account: str, names: list[str]) -> None:
    fake.add_installation(installation, account)
    for name in names:
        fake.add_repo(account, name, **COMPLIANT)
        fake.set_protection(account, name, "main", DEFAULT_PROTECTION)



def record_reads(fake) -> list[tuple[float, int]]:
    """(when, installation) of every batched read of an account's repositories."""
    reads: list[tuple[float, int]] = []

    def hook(call) -> None:
        if call.graphql_query and "MokoOwnerRepositories" in call.graphql_query and call.installation_id:
            reads.append((time.monotonic(), call.installation_id))

    fake.on_request(hook)
    return reads


async def time_to_fix(fake, account: str, name: str) -> float:
    """Turn the wiki on behind Moko's back (no webhook); seconds until it is off again."""
    fake.repo(account, name)["has_wiki"] = True
    started = time.monotonic()
    await wait_until(lambda: fake.repo(account, name)["has_wiki"] is False, timeout=30)
    return time.monotonic() - started


def sqlite_turns(path) -> dict[int, tuple[str | None, float | None]]:
    with sqlite3.connect(path, timeout=30) as db:
        rows = db.execute("SELECT installation_id, owner, interval FROM reconcile_turns").fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


async def test_drift_without_a_webhook_is_fixed_within_one_interval_whatever_another_org_does(
    fake_github, tmp_path
):
    fake = fake_github
    compliant_org(fake, 1, "slowcorp", ["big"])
    compliant_org(fake, 2, "acme", ["x"])

    async def slow_org(call) -> None:
        # GitHub answers slowcorp's reads slowly: that must not hold up acme's turns.
        if call.installation_id == 1 and call.graphql_query:
            await asyncio.sleep(6)

    fake.on_request(slow_org)
    reads = record_reads(fake)
    env = moko_environ(fake, f"sqlite:///{tmp_path}/moko.db", **SHORT)
    moko = await start_moko_process(env, tmp_path / "moko.log")
    try:
        await wait_until(lambda: any(i == 2 for _, i in reads))
        fixes = []
        for pause in (0.3, 1.1, 0.7):
            await asyncio.sleep(pause)  # drift at different moments of the interval
            fixes.append(await time_to_fix(fake, "acme", "x"))
    finally:
        assert await moko.stop() == 0, moko.log()
    assert max(fixes) <= INTERVAL + SLACK, fixes
    assert fake.count("PATCH", "^/repos/acme/x$") == 3


async def _two_replicas_share_the_installations(fake, database_url: str, tmp_path) -> None:
    accounts = [(i, f"org{i}") for i in range(1, 5)]
    for installation, account in accounts:
        compliant_org(fake, installation, account, ["repo"])
    fake.graphql_latency = 0.3  # long enough for two reads of one installation to overlap
    reads = record_reads(fake)
    env = moko_environ(fake, database_url, **SHORT, LOG_LEVEL="info")
    first = await start_moko_process(env, tmp_path / "a.log")
    second = await start_moko_process(env, tmp_path / "b.log")
    try:
        await wait_until(lambda: {i for _, i in reads} == {i for i, _ in accounts})
        watched_from = time.monotonic()
        await asyncio.sleep(4 * INTERVAL)
        watched_until = time.monotonic()
        # Taken while both run: a replica that stops gives its turn back at once, and the
        # other may take it while the fake still answers the read the first one dropped.
        overlap = {i: fake.graphql_overlap[i] for i, _ in accounts}
    finally:
        assert await first.stop() == 0, first.log()
        assert await second.stop() == 0, second.log()
    assert overlap == {i: 1 for i, _ in accounts}, (first.log(), second.log())
    for installation, _ in accounts:
        moments = [watched_from] + [t for t, i in reads if i == installation and t >= watched_from] + [watched_until]
        gaps = [later - earlier for earlier, later in zip(moments, moments[1:], strict=False)]
        assert max(gaps) <= INTERVAL + SLACK, (installation, gaps)
    turns = [len(re.findall(r"reconcile_turn_finished", p.log())) for p in (first, second)]
    assert all(count > 0 for count in turns), turns  # both replicas took turns


async def test_two_replicas_on_postgresql_never_reconcile_one_installation_at_once(
    fake_github, postgres_url, tmp_path
):
    await _two_replicas_share_the_installations(fake_github, postgres_url, tmp_path)


async def test_two_replicas_on_one_sqlite_file_never_reconcile_one_installation_at_once(fake_github, tmp_path):
    await _two_replicas_share_the_installations(fake_github, f"sqlite:///{tmp_path}/shared.db", tmp_path)


async def test_a_killed_replica_s_installation_is_taken_over_once_its_lease_lapses(
    fake_github, postgres_url, tmp_path
):
    fake = fake_github
    compliant_org(fake, 1, "acme", ["x"])
    fake.repo("acme", "x")["has_wiki"] = True
    stuck = asyncio.Event()
    unstuck = asyncio.Event()

    async def hang(call) -> None:
        # The first replica's read hangs, so it is killed in the middle of its turn.
        if call.graphql_query and not unstuck.is_set():
            stuck.set()
            await unstuck.wait()

    fake.on_request(hang)
    env = moko_environ(fake, postgres_url, **SHORT, MOKO_LEASE_SECONDS="2")
    doomed = await start_moko_process(env, tmp_path / "doomed.log")
    survivor: MokoProcess | None = None
    try:
        await asyncio.wait_for(stuck.wait(), 30)
        doomed.kill()
        unstuck.set()
        conn = await asyncpg.connect(postgres_url)
        try:
            held_by = await conn.fetchval("SELECT owner FROM reconcile_turns WHERE installation_id = 1")
        finally:
            await conn.close()
        assert held_by is not None  # the dead replica still holds the turn
        survivor = await start_moko_process(env, tmp_path / "survivor.log")
        started = time.monotonic()
        await wait_until(lambda: fake.repo("acme", "x")["has_wiki"] is False)
        taken_after = time.monotonic() - started
    finally:
        if survivor is not None:
            assert await survivor.stop() == 0, survivor.log()
    assert taken_after <= 2 + INTERVAL + SLACK


async def test_a_new_installation_is_reconciled_joins_the_cycle_and_leaves_it_when_deleted(
    fake_github, tmp_path
):
    fake = fake_github
    compliant_org(fake, 1, "acme", ["x"])
    db = tmp_path / "moko.db"
    env = moko_environ(fake, f"sqlite:///{db}", **SHORT)
    moko = await start_moko_process(env, tmp_path / "moko.log")
    try:
        await wait_until(lambda: fake.count("GET", "^/app/installations$") >= 1 and 1 in sqlite_turns(db))
        # Installed after Moko listed the installations: only the event can tell it.
        fake.add_installation(5, "newco")
        fake.add_repo("newco", "drifted", has_wiki=True, has_issues=True, has_projects=False)
        async with aiohttp.ClientSession() as session:
            reply = await post_webhook(session, moko.url, "installation",
                                       fake.event("installation", "created", owner="newco", repo="drifted"))
            assert reply.status == 202
            await wait_until(lambda: fake.repo("newco", "drifted")["has_wiki"] is False)
            assert 5 in sqlite_turns(db)  # it joined the cycle with the event
            # Drift with no webhook: the cycle fixes it.
            fix = await time_to_fix(fake, "newco", "drifted")
            fake.remove_installation(5)
            reply = await post_webhook(session, moko.url, "installation",
                                       fake.event("installation", "deleted", owner="newco"))
            assert reply.status == 202
            await wait_until(lambda: 5 not in sqlite_turns(db))
            fake.reset_calls()
            await asyncio.sleep(2 * INTERVAL)
    finally:
        assert await moko.stop() == 0, moko.log()
    assert fix <= INTERVAL + SLACK
    assert not [c for c in fake.calls if c.installation_id == 5 or "/installations/5/" in c.path]
    assert 1 in sqlite_turns(db)  # the other installation stays in the cycle
    with sqlite3.connect(db) as conn:
        triggers = {row[0] for row in conn.execute("SELECT trigger FROM audit WHERE repo = 'newco/drifted'")}
    assert triggers == {"installation.created", "schedule"}  # its audit trail stays


async def test_a_tiny_budget_stretches_the_interval_and_moko_says_so(fake_github, tmp_path):
    fake = fake_github
    compliant_org(fake, 1, "acme", ["x"])
    db = tmp_path / "moko.db"
    reads = record_reads(fake)
    # 0.01 % of 5,000 an hour: half a point, so one turn's few requests allow one turn in hours.
    env = moko_environ(fake, f"sqlite:///{db}", MOKO_SWEEP_INTERVAL=f"{INTERVAL:g}s", MOKO_SWEEP_BUDGET="0.0001")
    moko = await start_moko_process(env, tmp_path / "moko.log")
    try:
        await wait_until(lambda: "reconcile_interval_stretched" in moko.log())
        async with aiohttp.ClientSession() as session:
            async with session.get(moko.url + "/metrics") as response:
                metrics = await response.text()
            event = fake.event("issue_comment", "created", owner="acme", repo="x", body="/moko status",
                               sender="octocat")
            reply = await post_webhook(session, moko.url, "issue_comment", event)
            assert reply.status == 202
            await wait_until(lambda: any(c["user"]["login"] == fake.bot_login for c in fake.comments("acme", "x", 1)))
        await asyncio.sleep(2 * INTERVAL)
    finally:
        assert await moko.stop() == 0, moko.log()
    [gauge] = re.findall(r'^moko_reconcile_interval_seconds\{installation="1"\} (\S+)$', metrics, re.M)
    interval = float(gauge)
    assert interval >= 3600  # hours, not seconds
    assert sqlite_turns(db)[1][1] == pytest.approx(interval)
    assert len(reads) == 1  # no second turn two intervals later
    line = next(line for line in moko.log().splitlines() if "reconcile_interval_stretched" in line)
    assert '"reason": "budget"' in line and '"installation": 1' in line
    [answer] = [c for c in fake.comments("acme", "x", 1) if c["user"]["login"] == fake.bot_login]
    assert "not every 2 s" in answer["body"] and " h" in answer["body"] and "MOKO_SWEEP_BUDGET" in answer["body"]


async def test_an_invalid_policy_file_is_audited_once_however_many_turns_find_it_and_again_when_it_changes(
    fake_github, tmp_path
):
    fake = fake_github
    compliant_org(fake, 1, "acme", ["x"])
    fake.add_repo("acme", ".github", **COMPLIANT)
    fake.put_file("acme", ".github", ".github/moko.yml", "version: 1\nrepository:\n  has_wikki: false\n")
    db = tmp_path / "moko.db"
    env = moko_environ(fake, f"sqlite:///{db}", **SHORT, LOG_LEVEL="info")

    def config_records() -> list[tuple[str, str]]:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT field, error FROM audit WHERE policy = 'config' ORDER BY seq").fetchall()

    async def turns(log_name: str, count: int) -> None:
        moko = await start_moko_process(env, tmp_path / log_name)
        try:
            await wait_until(lambda: moko.log().count("reconcile_not_possible") >= count)
        finally:
            assert await moko.stop() == 0, moko.log()

    await turns("first.log", 3)  # three turns find the file, and a restarted process a fourth
    await turns("second.log", 1)
    [(field, error)] = config_records()
    assert field == "acme/.github/.github/moko.yml" and "has_wikki" in error
    # Another invalid file (no webhook seen): audited once more, by the next process's turns.
    fake.put_file("acme", ".github", ".github/moko.yml", "version: 1\nrepository:\n  has_projeks: false\n")
    await turns("third.log", 2)
    records = config_records()
    assert len(records) == 2 and records[0][1] == error and "has_projeks" in records[1][1], records
    assert fake.repo("acme", "x")["has_wiki"] is False  # an invalid file changes nothing
