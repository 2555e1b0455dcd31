"""Workers take turns across installations: one installation's queue of writes does not hold them all."""

from __future__ import annotations

import asyncio
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
