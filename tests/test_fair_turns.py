"""Workers take turns across installations: one installation's queue of writes does not hold them all."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import aiohttp

from tests.support.harness import moko_environ, post_webhook, start_moko_process

INSTALLATIONS = 10
REPOSITORIES = 30
PATCH_SECONDS = 1.0


def fixed(fake, org: str, name: str) -> bool:
    return fake.repo(org, name)["has_wiki"] is False and fake.protection(org, name, "main") is not None


async def test_ten_busy_installations_progress_together(fake_github, tmp_path):
    orgs = [f"org{i}" for i in range(INSTALLATIONS)]
    names = [f"new{j}" for j in range(REPOSITORIES)]
    for number, org in enumerate(orgs, start=1):
        fake_github.add_installation(number, org)
        for name in names:
            fake_github.add_repo(org, name, has_wiki=True, has_issues=True, has_projects=False)
    # Every settings write takes a second at GitHub; writes of one installation go one at a time.
    fake_github.fail("PATCH", r"^/repos/[^/]+/[^/]+$", delay=PATCH_SECONDS, times=INSTALLATIONS * REPOSITORIES)
    events = [fake_github.event("repository", "created", owner=org, repo=name) for org in orgs for name in names]
    server = await start_moko_process(
        moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db"), tmp_path / "serve.log"
    )
    try:
        async with aiohttp.ClientSession() as session:
            # In order, one installation's deliveries after another's (the order that let the
            # first installations take every worker), a few connections at a time.
            async def send_in_order() -> None:
                while events:
                    reply = await post_webhook(session, server.url, "repository", events.pop(0))
                    assert reply.status == 202

            await asyncio.gather(*(send_in_order() for _ in range(4)))
        sent = time.monotonic()
        # Each installation's own serial time is 30 PATCHes of a second; ten of them side by
        # side take about as long. Taking turns badly (two installations at a time) takes 150 s.
        # (Measured from the last acknowledgement: on a loaded machine the burst itself takes seconds.)
        deadline = sent + 45.0
        while not all(fixed(fake_github, org, name) for org in orgs for name in names):
            assert time.monotonic() < deadline, "repositories not fixed in time"
            await asyncio.sleep(0.2)
    finally:
        assert await server.stop() == 0, server.log()
    # Each delivery applied once: one PATCH and one PUT per repository.
    assert fake_github.count("PATCH") == INSTALLATIONS * REPOSITORIES
    assert fake_github.count("PUT", r"/protection$") == INSTALLATIONS * REPOSITORIES


def repository_locks_held(db) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM locks WHERE name LIKE 'repo:%'").fetchone()[0]


async def test_a_burst_for_one_installation_waits_unstarted_beyond_the_workers(fake_github, tmp_path):
    # Writes of one installation go one at a time. A burst of new repositories for it must not
    # start every delivery at once (each holding its parsed payload, its repository's lock and
    # its lease while it queues for the write): beyond the workers, they wait unstarted.
    fake_github.add_installation(1, "acme")
    names = [f"burst{j}" for j in range(16)]
    for name in names:
        fake_github.add_repo("acme", name, has_wiki=True, has_issues=True, has_projects=False)
    fake_github.fail("PATCH", r"^/repos/acme/[^/]+$", delay=0.3, times=len(names))
    db = tmp_path / "moko.db"
    env = moko_environ(fake_github, f"sqlite:///{db}", MOKO_WORKERS="2")
    server = await start_moko_process(env, tmp_path / "serve.log")
    most = 0
    try:
        async with aiohttp.ClientSession() as session:
            for name in names:
                created = fake_github.event("repository", "created", owner="acme", repo=name)
                assert (await post_webhook(session, server.url, "repository", created)).status == 202
            deadline = time.monotonic() + 60
            while not all(fixed(fake_github, "acme", name) for name in names):
                assert time.monotonic() < deadline, "repositories not fixed in time"
                most = max(most, repository_locks_held(db))
                await asyncio.sleep(0.02)
    finally:
        assert await server.stop() == 0, server.log()
    # One writing, the workers' worth waiting for their turn, the workers busy with the next.
    assert 1 <= most <= 1 + 2 * 2
    assert fake_github.count("PATCH") == len(names)


async def test_late_answers_do_not_hold_the_workers_from_other_installations(fake_github, tmp_path):
    # Two workers, and the first two installations' one write answered 8 s late (GitHub's
    # answer held up, not refused): the other installations' edits are reverted meanwhile.
    orgs = [f"org{i}" for i in range(6)]
    for number, org in enumerate(orgs, start=1):
        fake_github.add_installation(number, org)
        fake_github.add_repo(org, "edited", has_wiki=True, has_issues=True, has_projects=False)
    fake_github.fail("PATCH", r"^/repos/org[01]/edited$", delay=8.0, times=2)
    env = moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db", MOKO_WORKERS="2")
    server = await start_moko_process(env, tmp_path / "serve.log")

    def reverted(org: str) -> bool:
        return fake_github.repo(org, "edited")["has_wiki"] is False

    try:
        async with aiohttp.ClientSession() as session:
            for org in orgs:  # the late ones first: they take both workers
                edited = fake_github.event("repository", "edited", owner=org, repo="edited",
                                           changes={"description": {"from": None}})
                assert (await post_webhook(session, server.url, "repository", edited)).status == 202
            deadline = time.monotonic() + 30
            while not all(reverted(org) for org in orgs[2:]):
                assert time.monotonic() < deadline, "the other installations' edits not reverted in time"
                await asyncio.sleep(0.05)
            assert not any(reverted(org) for org in orgs[:2])
            while not all(reverted(org) for org in orgs[:2]):
                assert time.monotonic() < deadline, "the late installations' edits not reverted in time"
                await asyncio.sleep(0.05)
    finally:
        assert await server.stop() == 0, server.log()
    assert fake_github.count("PATCH") == len(orgs)


async def test_deliveries_waiting_on_a_busy_repository_do_not_hold_the_workers(fake_github, tmp_path):
    # Two workers; three edits of one repository whose fix is answered 8 s late: the two
    # behind it wait for the repository, and the other installations' edits go on meanwhile.
    orgs = [f"org{i}" for i in range(5)]
    for number, org in enumerate(orgs, start=1):
        fake_github.add_installation(number, org)
        fake_github.add_repo(org, "edited", has_wiki=True, has_issues=True, has_projects=False)
    fake_github.fail("PATCH", r"^/repos/org0/edited$", delay=8.0)
    env = moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db", MOKO_WORKERS="2")
    server = await start_moko_process(env, tmp_path / "serve.log")

    def reverted(org: str) -> bool:
        return fake_github.repo(org, "edited")["has_wiki"] is False

    try:
        async with aiohttp.ClientSession() as session:
            for org in ["org0", "org0", *orgs]:
                edited = fake_github.event("repository", "edited", owner=org, repo="edited",
                                           changes={"description": {"from": None}})
                assert (await post_webhook(session, server.url, "repository", edited)).status == 202
            deadline = time.monotonic() + 30
            while not all(reverted(org) for org in orgs[1:]):
                assert time.monotonic() < deadline, "the other installations' edits not reverted in time"
                await asyncio.sleep(0.05)
            assert not reverted("org0")
            while not reverted("org0"):
                assert time.monotonic() < deadline, "the busy repository's edit not reverted in time"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1)
    finally:
        assert await server.stop() == 0, server.log()
    assert fake_github.count("PATCH", r"^/repos/org0/edited$") == 1


async def test_deliveries_waiting_for_their_installations_token_do_not_hold_the_workers(fake_github, tmp_path):
    # Two workers. The other installations' tokens are in hand; a new installation's token is
    # answered 8 s late, and its three deliveries wait for it: the others' edits go on meanwhile.
    orgs = [f"org{i}" for i in range(5)]
    for number, org in enumerate(orgs, start=1):
        fake_github.add_installation(number, org)
        fake_github.add_repo(org, "edited", has_wiki=True, has_issues=True, has_projects=False)
    env = moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db", MOKO_WORKERS="2")
    server = await start_moko_process(env, tmp_path / "serve.log")

    def reverted(org: str) -> bool:
        return fake_github.repo(org, "edited")["has_wiki"] is False

    async def edit(session: aiohttp.ClientSession, org: str) -> None:
        fake_github.repo(org, "edited")["has_wiki"] = True
        edited = fake_github.event("repository", "edited", owner=org, repo="edited",
                                   changes={"description": {"from": None}})
        assert (await post_webhook(session, server.url, "repository", edited)).status == 202

    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 40
            for org in orgs[1:]:
                await edit(session, org)
            while not all(reverted(org) for org in orgs[1:]):
                assert time.monotonic() < deadline, "the first edits not reverted in time"
                await asyncio.sleep(0.05)
            fake_github.fail("POST", r"^/app/installations/1/access_tokens$", delay=8.0)
            for org in ["org0", "org0", "org0", *orgs[1:]]:
                await edit(session, org)
            while not all(reverted(org) for org in orgs[1:]):
                assert time.monotonic() < deadline, "the other installations' edits not reverted in time"
                await asyncio.sleep(0.05)
            assert not reverted("org0")
            while not reverted("org0"):
                assert time.monotonic() < deadline, "the new installation's edit not reverted in time"
                await asyncio.sleep(0.05)
    finally:
        assert await server.stop() == 0, server.log()
    assert fake_github.count("POST", r"/access_tokens$") == len(orgs)
