"""A crash costs seconds, not a lease: what a SIGKILLed `moko serve` had claimed is taken up
within 10 s (by the next start, or by a surviving replica), and a live process keeps its own
claims, with the default 120-second lease."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import aiohttp
import asyncpg

from tests.support.harness import moko_environ, post_webhook, start_moko_process
from tests.support.org import DEFAULT_PROTECTION, INSTALLATION, ORG
from tests.support.waiting import wait_until

TAKEN_UP_WITHIN = 10.0
OTHER = "umbrella"


def drifted_org(fake, slow: dict[str, float]) -> None:
    """Protected repositories with the wiki on; a PATCH of each name takes that many seconds once.
    The slow one lives in another installation (OTHER), whose writes never wait for ORG's."""
    fake.add_installation(INSTALLATION, ORG)
    fake.add_installation(INSTALLATION + 1, OTHER)
    for name, delay in slow.items():
        owner = OTHER if name == "steady" else ORG
        fake.add_repo(owner, name, has_wiki=True, has_issues=True, has_projects=False)
        fake.set_protection(owner, name, "main", DEFAULT_PROTECTION)
        fake.fail("PATCH", f"^/repos/{owner}/{name}$", delay=delay)



async def at_github(fake) -> bool:
    """Both slow PATCHes have reached GitHub (and are held there): both deliveries are claimed."""
    return (fake.arrived("PATCH", f"^/repos/{ORG}/crashy$") == 1
            and fake.arrived("PATCH", f"^/repos/{OTHER}/steady$") == 1)


async def post_edit(fake, url: str, name: str, delivery: str) -> None:
    owner = OTHER if name == "steady" else ORG
    event = fake.event("repository", "edited", owner=owner, repo=name, changes={"description": {"from": None}})
    async with aiohttp.ClientSession() as session:
        assert (await post_webhook(session, url, "repository", event, delivery=delivery)).status == 202


async def test_sqlite_a_killed_process_s_claim_is_taken_up_by_the_next_start_and_a_live_one_s_is_not(
    fake_github, tmp_path
):
    drifted_org(fake_github, {"crashy": 60.0, "steady": 10.0})
    db = tmp_path / "moko.db"
    # The default 120-second lease; requests may take long enough for the live claim to last.
    env = moko_environ(fake_github, f"sqlite:///{db}", MOKO_REQUEST_TIMEOUT="30")

    def rows() -> dict[str, tuple[str, int]]:
        with sqlite3.connect(db, timeout=30) as conn:
            return {i: (s, a) for i, s, a in conn.execute("SELECT id, state, attempts FROM deliveries")}

    async def states(*wanted: tuple[str, str]) -> bool:
        found = await asyncio.to_thread(rows)
        return all(found.get(delivery, ("", 0))[0] == state for delivery, state in wanted)

    async def taken_again(delivery: str) -> bool:
        return (await asyncio.to_thread(rows)).get(delivery, ("", 0))[1] >= 2

    doomed = await start_moko_process(env, tmp_path / "doomed.log")
    live = await start_moko_process(env, tmp_path / "live.log")
    try:
        await post_edit(fake_github, doomed.url, "crashy", "crash-1")
        await post_edit(fake_github, live.url, "steady", "steady-1")
        await wait_until(lambda: at_github(fake_github))
        doomed.kill()
        following = await start_moko_process(env, tmp_path / "following.log")
        try:
            started = time.monotonic()
            await wait_until(lambda: taken_again("crash-1"), timeout=30)
            taken_up = time.monotonic() - started
            # Done once the PATCH the dead process sent can no longer land (its timeout).
            await wait_until(lambda: states(("crash-1", "done")), timeout=60)
            await wait_until(lambda: states(("steady-1", "done")))
        finally:
            assert await following.stop() == 0, following.log()
    finally:
        assert await live.stop() == 0, live.log()
    assert taken_up < TAKEN_UP_WITHIN
    # The dead process's delivery ran once more; the live process's ran once, by its own hand.
    assert rows() == {"crash-1": ("done", 2), "steady-1": ("done", 1)}
    assert fake_github.count("PATCH", f"^/repos/{OTHER}/steady$") == 1
    assert fake_github.repo(ORG, "crashy")["has_wiki"] is False
    with sqlite3.connect(db) as conn:
        applied = dict(conn.execute(
            "SELECT repo, count(*) FROM audit WHERE field = 'has_wiki' AND outcome = 'applied' GROUP BY repo"
        ).fetchall())
    assert applied == {f"{ORG}/crashy": 1, f"{OTHER}/steady": 1}


async def test_postgres_a_surviving_replica_takes_up_a_killed_one_s_claim_and_keeps_its_own(
    fake_github, postgres_url, tmp_path
):
    drifted_org(fake_github, {"crashy": 60.0, "steady": 10.0})
    # The default 120-second lease; requests may take long enough for the live claim to last.
    env = moko_environ(fake_github, postgres_url, MOKO_REQUEST_TIMEOUT="30")

    async def rows() -> dict[str, tuple[str, int]]:
        conn = await asyncpg.connect(postgres_url)
        try:
            return {r["id"]: (r["state"], r["attempts"]) for r in await conn.fetch(
                "SELECT id, state, attempts FROM deliveries")}
        finally:
            await conn.close()

    async def states(*wanted: tuple[str, str]) -> bool:
        found = await rows()
        return all(found.get(delivery, ("", 0))[0] == state for delivery, state in wanted)

    async def taken_again(delivery: str) -> bool:
        return (await rows()).get(delivery, ("", 0))[1] >= 2

    doomed = await start_moko_process(env, tmp_path / "doomed.log")
    survivor = await start_moko_process(env, tmp_path / "survivor.log")
    try:
        await post_edit(fake_github, doomed.url, "crashy", "crash-1")
        await post_edit(fake_github, survivor.url, "steady", "steady-1")
        await wait_until(lambda: at_github(fake_github))
        doomed.kill()
        killed = time.monotonic()
        await wait_until(lambda: taken_again("crash-1"), timeout=30)
        taken_up = time.monotonic() - killed
        # Done once the PATCH the dead process sent can no longer land (its timeout).
        await wait_until(lambda: states(("crash-1", "done")), timeout=60)
        await wait_until(lambda: states(("steady-1", "done")))
    finally:
        assert await survivor.stop() == 0, survivor.log()
    assert taken_up < TAKEN_UP_WITHIN
    assert await rows() == {"crash-1": ("done", 2), "steady-1": ("done", 1)}
    assert fake_github.count("PATCH", f"^/repos/{OTHER}/steady$") == 1
    assert fake_github.repo(ORG, "crashy")["has_wiki"] is False
