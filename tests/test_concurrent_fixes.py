"""Two fixers of one repository at once make its fix once: two deliveries about the same
drifted repository in flight together (on one process, or on two replicas), and a delivery
racing a policy push's reconcile or a `moko sweep`. Each planned from what it knew before the repository's lock
(a payload, a batched read); the second to get the lock must see that the first changed the
repository since, and plan again from GitHub instead of writing the same change again.

The fake GitHub makes the race happen every time: it holds the first fixer's request until
the second has planned from the drifted state."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg

from tests.support.harness import moko_environ, post_webhook, start_moko_process
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG
from tests.support.waiting import wait_until

SETTINGS = rf"^/repos/{ORG}/racer$"
PROTECTION = rf"^/repos/{ORG}/racer/branches/main/protection$"


def hold_first(fake, method: str, path_regex: str, until: Callable[[], Awaitable[bool]],
               graphql_name: str | None = None) -> list[str]:
    """Hold the answer to the first such request (carried out already) until ``until()``;
    returns a list that gets one item once that request is held."""
    pattern = re.compile(path_regex)
    held: list[str] = []

    async def hook(call) -> None:
        if held or call.method != method or not pattern.search(call.path):
            return
        if graphql_name is not None and graphql_name not in (call.graphql_query or ""):
            return
        held.append(call.path)
        await wait_until(until, timeout=30)

    fake.on_request(hook)
    return held


class SqliteRows:
    """Reads `moko serve`'s SQLite file from outside, as an operator would."""

    def __init__(self, db: Path) -> None:
        self.db = db

    def _query(self, sql: str, *args: object) -> list[tuple]:
        with sqlite3.connect(self.db, timeout=30) as conn:
            return conn.execute(sql, args).fetchall()

    async def state(self, delivery: str) -> str | None:
        rows = await asyncio.to_thread(self._query, "SELECT state FROM deliveries WHERE id = ?", delivery)
        return rows[0][0] if rows else None

    async def wiki_records(self) -> list[tuple[str, str]]:
        return [tuple(row) for row in await asyncio.to_thread(
            self._query, "SELECT run_id, outcome FROM audit WHERE repo = ? AND field = 'has_wiki' ORDER BY seq",
            f"{ORG}/racer")]


class PostgresRows:
    def __init__(self, url: str) -> None:
        self.url = url

    async def _query(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def state(self, delivery: str) -> str | None:
        rows = await self._query("SELECT state FROM deliveries WHERE id = $1", delivery)
        return rows[0]["state"] if rows else None

    async def wiki_records(self) -> list[tuple[str, str]]:
        return [(r["run_id"], r["outcome"]) for r in await self._query(
            "SELECT run_id, outcome FROM audit_log WHERE repo = $1 AND field = 'has_wiki' ORDER BY seq",
            f"{ORG}/racer")]


async def claimed(rows, *deliveries: str) -> bool:
    return all([await rows.state(d) in ("processing", "done", "failed") for d in deliveries])


async def done(rows, *deliveries: str) -> bool:
    return all([await rows.state(d) == "done" for d in deliveries])


async def post(url: str, event: str, payload: dict, delivery: str) -> None:
    async with aiohttp.ClientSession() as session:
        assert (await post_webhook(session, url, event, payload, delivery=delivery)).status == 202


def new_drifted_repository(fake) -> tuple[dict, dict]:
    """A repository just created with the wiki on, and its two events, built before any fix:
    `repository.created`, and `repository.edited` (its description) a moment later."""
    fake.add_installation(INSTALLATION, ORG)
    fake.add_repo(ORG, "racer", **{**COMPLIANT, "has_wiki": True})
    created = fake.event("repository", "created", owner=ORG, repo="racer")
    edited = fake.event("repository", "edited", owner=ORG, repo="racer", changes={"description": {"from": None}})
    return created, edited


def assert_fixed_once(fake, records: list[tuple[str, str]], protection_puts: int) -> None:
    assert fake.count("PATCH", SETTINGS) == 1, [c.body for c in fake.calls_to("PATCH", SETTINGS)]
    assert fake.count("PUT", PROTECTION) == protection_puts
    assert fake.repo(ORG, "racer")["has_wiki"] is False
    # One intended change: its intent and its outcome, by one run.
    assert [outcome for _run, outcome in records] == ["pending", "applied"], records
    assert len({run for run, _outcome in records}) == 1, records


async def test_two_deliveries_about_one_drifted_repository_fix_it_once(fake_github, tmp_path):
    created, edited = new_drifted_repository(fake_github)
    db = tmp_path / "moko.db"
    rows = SqliteRows(db)
    # Whichever delivery gets the lock first, its PATCH is answered only once the other is at work.
    hold_first(fake_github, "PATCH", SETTINGS, lambda: claimed(rows, "created-1", "edited-1"))
    moko = await start_moko_process(moko_environ(fake_github, f"sqlite:///{db}"), tmp_path / "moko.log")
    try:
        await asyncio.gather(post(moko.url, "repository", created, "created-1"),
                             post(moko.url, "repository", edited, "edited-1"))
        await wait_until(lambda: done(rows, "created-1", "edited-1"), timeout=60)
    finally:
        assert await moko.stop() == 0, moko.log()
    # The new repository's protection is made by repository.created alone.
    assert_fixed_once(fake_github, await rows.wiki_records(), protection_puts=1)


async def test_two_replicas_given_one_repository_s_deliveries_fix_it_once(fake_github, postgres_url, tmp_path):
    created, edited = new_drifted_repository(fake_github)
    rows = PostgresRows(postgres_url)
    hold_first(fake_github, "PATCH", SETTINGS, lambda: claimed(rows, "created-2", "edited-2"))
    env = moko_environ(fake_github, postgres_url)
    first = await start_moko_process(env, tmp_path / "first.log")
    second = await start_moko_process(env, tmp_path / "second.log")
    try:
        await asyncio.gather(post(first.url, "repository", created, "created-2"),
                             post(second.url, "repository", edited, "edited-2"))
        await wait_until(lambda: done(rows, "created-2", "edited-2"), timeout=60)
    finally:
        assert await first.stop() == 0, first.log()
        assert await second.stop() == 0, second.log()
    assert_fixed_once(fake_github, await rows.wiki_records(), protection_puts=1)


async def test_a_delivery_racing_a_policy_push_s_reconcile_fixes_the_repository_once(fake_github, tmp_path):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, ".github", **COMPLIANT)
    fake_github.set_protection(ORG, ".github", "main", DEFAULT_PROTECTION)
    fake_github.put_file(ORG, ".github", ".github/moko.yml", "version: 1\n")
    fake_github.add_repo(ORG, "racer", **{**COMPLIANT, "has_wiki": True})
    fake_github.set_protection(ORG, "racer", "main", DEFAULT_PROTECTION)
    push = fake_github.event("push", owner=ORG, repo=".github", ref="refs/heads/main",
                             modified=[".github/moko.yml"])
    edited = fake_github.event("repository", "edited", owner=ORG, repo="racer",
                               changes={"description": {"from": None}})
    db = tmp_path / "moko.db"
    rows = SqliteRows(db)
    # The reconcile's batched read sees the wiki on; its answer is held until the delivery,
    # sent meanwhile, has fixed the repository and finished.
    read = hold_first(fake_github, "POST", r"^/graphql$", lambda: done(rows, "edited-3"),
                      graphql_name="MokoOwnerRepositories")
    moko = await start_moko_process(moko_environ(fake_github, f"sqlite:///{db}"), tmp_path / "moko.log")
    try:
        await post(moko.url, "push", push, "push-3")
        await wait_until(lambda: bool(read), timeout=30)
        await post(moko.url, "repository", edited, "edited-3")
        await wait_until(lambda: done(rows, "push-3", "edited-3"), timeout=60)
    finally:
        assert await moko.stop() == 0, moko.log()
    assert_fixed_once(fake_github, await rows.wiki_records(), protection_puts=0)


async def test_a_delivery_racing_a_sweep_in_another_process_fixes_the_repository_once(fake_github, tmp_path):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, "racer", **{**COMPLIANT, "has_wiki": True})
    fake_github.set_protection(ORG, "racer", "main", DEFAULT_PROTECTION)
    edited = fake_github.event("repository", "edited", owner=ORG, repo="racer",
                               changes={"description": {"from": None}})
    db = tmp_path / "moko.db"
    rows = SqliteRows(db)
    env = moko_environ(fake_github, f"sqlite:///{db}")
    # `moko sweep`'s batched read sees the wiki on; its answer is held until the delivery,
    # sent to `moko serve` on the same database meanwhile, has fixed the repository.
    read = hold_first(fake_github, "POST", r"^/graphql$", lambda: done(rows, "edited-5"),
                      graphql_name="MokoOwnerRepositories")
    moko = await start_moko_process(env, tmp_path / "moko.log")
    try:
        sweep = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "handlers.wiring.cli", "sweep", "--org", ORG, "--json",
            env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        await wait_until(lambda: bool(read), timeout=30)
        await post(moko.url, "repository", edited, "edited-5")
        out, err = await asyncio.wait_for(sweep.communicate(), 60)
    finally:
        assert await moko.stop() == 0, moko.log()
    assert sweep.returncode == 0, err.decode()[-3000:]
    outcomes = {r["repo"]: r["outcome"] for r in json.loads(out)["results"]}
    assert outcomes == {f"{ORG}/racer": "compliant"}
    assert_fixed_once(fake_github, await rows.wiki_records(), protection_puts=0)


async def test_a_fixer_after_one_that_died_mid_write_waits_for_that_write_before_reading(fake_github, tmp_path):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, "racer", **{**COMPLIANT, "has_wiki": True})
    fake_github.set_protection(ORG, "racer", "main", DEFAULT_PROTECTION)
    first = fake_github.event("repository", "edited", owner=ORG, repo="racer", changes={"description": {"from": None}})
    second = fake_github.event("repository", "edited", owner=ORG, repo="racer", changes={"homepage": {"from": None}})
    # GitHub carries the first PATCH out 5 s after it arrived: after the process that sent it
    # died, and the other process, whose delivery waited for the repository, took the lock.
    fake_github.fail("PATCH", SETTINGS, delay=5)
    db = tmp_path / "moko.db"
    rows = SqliteRows(db)
    # The request timeout is how long a write sent by a process that died may still land.
    env = moko_environ(fake_github, f"sqlite:///{db}", MOKO_REQUEST_TIMEOUT="6")
    doomed = await start_moko_process(env, tmp_path / "doomed.log")
    live = await start_moko_process(env, tmp_path / "live.log")
    try:
        await post(doomed.url, "repository", first, "edited-6")
        await wait_until(lambda: fake_github.arrived("PATCH", SETTINGS) == 1, timeout=30)
        await post(live.url, "repository", second, "edited-7")
        await wait_until(lambda: claimed(rows, "edited-7"), timeout=30)
        doomed.kill()
        await wait_until(lambda: done(rows, "edited-6", "edited-7"), timeout=60)
    finally:
        doomed.kill()
        assert await live.stop() == 0, live.log()
    assert fake_github.arrived("PATCH", SETTINGS) == 1
    # The dead process's intent, given its outcome when its delivery was taken again.
    assert_fixed_once(fake_github, await rows.wiki_records(), protection_puts=0)
