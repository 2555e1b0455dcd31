"""Replicas from outside: two `moko serve` processes sharing one PostgreSQL database."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys

import aiohttp
import asyncpg

from tests.support.harness import moko_environ, post_webhook, start_moko_process
from tests.support.org import COMPLIANT, ORG
from tests.support.org import DEFAULT_PROTECTION as PROTECTION
from tests.support.waiting import wait_until


def protected_org(fake, names):
    fake.add_installation(1, ORG)
    for name in names:
        fake.add_repo(ORG, name, **COMPLIANT)
        fake.set_protection(ORG, name, "main", PROTECTION)



async def delivery_rows(url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch("SELECT id, state, attempts FROM deliveries ORDER BY id")
    finally:
        await conn.close()


async def all_done(url: str, count: int) -> bool:
    rows = await delivery_rows(url)
    return len(rows) == count and all(r["state"] == "done" for r in rows)


async def post_each_to_both(fake, first_url: str, second_url: str, count: int, prefix: str) -> list[list[int]]:
    """Post count deliveries about acme/core, each to both replicas at the same moment;
    return the two statuses of each, sorted."""
    event = fake.event("branch_protection_rule", "edited", owner=ORG, repo="core", branch="main",
                       protection=PROTECTION)
    statuses = []
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            replies = await asyncio.gather(
                post_webhook(session, first_url, "branch_protection_rule", event, delivery=f"{prefix}-{i}"),
                post_webhook(session, second_url, "branch_protection_rule", event, delivery=f"{prefix}-{i}"),
            )
            statuses.append(sorted(r.status for r in replies))
    return statuses


async def test_the_same_delivery_posted_to_two_replicas_is_applied_once(fake_github, postgres_url, tmp_path):
    protected_org(fake_github, ["core"])
    env = moko_environ(fake_github, postgres_url)
    first = await start_moko_process(env, tmp_path / "a.log")
    second = await start_moko_process(env, tmp_path / "b.log")
    try:
        statuses = await post_each_to_both(fake_github, first.url, second.url, 100, "same")
        await wait_until(lambda: all_done(postgres_url, 100))
    finally:
        assert await first.stop() == 0, first.log()
        assert await second.stop() == 0, second.log()
    assert statuses == [[200, 202]] * 100
    rows = await delivery_rows(postgres_url)
    assert {r["attempts"] for r in rows} == {1}
    # Each delivery was processed once: one protection read each, and nothing to write.
    assert fake_github.count("GET", r"^/repos/acme/core/branches/main/protection$") == 100
    assert fake_github.count("PUT") == 0


async def test_two_processes_on_one_sqlite_file_apply_a_delivery_posted_to_both_once(fake_github, tmp_path):
    # SQLite's write lock is taken without waiting inside SQLite (that would block the event
    # loop): the loser of each race retries from its loop. Both must answer, never fail.
    protected_org(fake_github, ["core"])
    url = f"sqlite:///{tmp_path}/shared.db"
    env = moko_environ(fake_github, url)
    first = await start_moko_process(env, tmp_path / "a.log")
    second = await start_moko_process(env, tmp_path / "b.log")
    try:
        statuses = await post_each_to_both(fake_github, first.url, second.url, 50, "lite")

        def states() -> list[tuple[str, int]]:
            with sqlite3.connect(tmp_path / "shared.db", timeout=30) as db:
                return db.execute("SELECT state, attempts FROM deliveries").fetchall()

        async def settled() -> bool:
            rows = await asyncio.to_thread(states)
            return len(rows) == 50 and all(state == "done" for state, _ in rows)

        await wait_until(settled)
    finally:
        assert await first.stop() == 0, first.log()
        assert await second.stop() == 0, second.log()
    assert statuses == [[200, 202]] * 50
    assert {attempts for _, attempts in states()} == {1}
    assert fake_github.count("GET", r"^/repos/acme/core/branches/main/protection$") == 50


async def test_a_killed_replica_s_deliveries_are_finished_by_the_other(fake_github, postgres_url, tmp_path):
    names = [f"r{i}" for i in range(5)]
    protected_org(fake_github, names)
    for name in names:
        fake_github.repo(ORG, name)["has_wiki"] = True
    # The doomed replica hangs on its first writes, holding every delivery it took.
    fake_github.fail("PATCH", r"^/repos/acme/r\d$", delay=60, times=5)
    env = moko_environ(fake_github, postgres_url, MOKO_LEASE_SECONDS="2")
    doomed = await start_moko_process(env, tmp_path / "doomed.log")
    survivor = await start_moko_process(env, tmp_path / "survivor.log")
    try:
        async with aiohttp.ClientSession() as session:
            for name in names:
                # A description edit; its payload shows the wiki someone turned on quietly.
                event = fake_github.event("repository", "edited", owner=ORG, repo=name,
                                          changes={"description": {"from": None}})
                reply = await post_webhook(session, doomed.url, "repository", event, delivery=f"kill-{name}")
                assert reply.status == 202

        async def all_in_flight() -> bool:
            rows = await delivery_rows(postgres_url)
            return len(rows) == 5 and all(r["state"] == "processing" for r in rows)

        await wait_until(all_in_flight)
        doomed.kill()
        fake_github._faults.clear()
        await wait_until(lambda: all_done(postgres_url, 5))
    finally:
        assert await survivor.stop() == 0, survivor.log()
    assert all(fake_github.repo(ORG, name)["has_wiki"] is False for name in names)
    assert {r["attempts"] for r in await delivery_rows(postgres_url)} == {2}


async def test_concurrent_audit_writers_on_two_replicas_keep_one_verifiable_chain(fake_github, postgres_url, tmp_path):
    names = [f"new{i}" for i in range(30)]
    fake_github.add_installation(1, ORG)
    for name in names:
        fake_github.add_repo(ORG, name, has_wiki=True, has_issues=True, has_projects=True)
    env = moko_environ(fake_github, postgres_url)
    replicas = [await start_moko_process(env, tmp_path / f"r{i}.log") for i in range(2)]
    try:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*[
                post_webhook(session, replicas[i % 2].url, "repository",
                             fake_github.event("repository", "created", owner=ORG, repo=name))
                for i, name in enumerate(names)
            ])
        await wait_until(lambda: all_done(postgres_url, len(names)))
    finally:
        for replica in replicas:
            assert await replica.stop() == 0, replica.log()
    conn = await asyncpg.connect(postgres_url)
    try:
        applied = await conn.fetchval("SELECT count(*) FROM audit_log WHERE outcome = 'applied'")
    finally:
        await conn.close()
    assert applied == len(names) * 3  # has_wiki, has_projects, and the protection of each
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "MOKO_"))}
    verify = subprocess.run(
        [sys.executable, "-m", "handlers.wiring.cli", "audit", "--verify"],
        env={**clean, "MOKO_DATABASE_URL": postgres_url}, capture_output=True, text=True, timeout=60,
    )
    assert verify.returncode == 0, verify.stderr
    assert f"{2 * applied} records" in verify.stdout  # each change's intent (pending), then its outcome
