"""Running `/moko` commands, from outside: Moko with its real handlers against the fake GitHub.
`/moko status` says that the checks were stretched only when the installation's own interval
is longer than MOKO_SWEEP_INTERVAL (not another installation's, not an equal one, not while
the reconciliation is off)."""

from __future__ import annotations

import re

import pytest

from bot.store import open_store
from tests.support.harness import moko_environ, run_moko
from tests.support.org import INSTALLATION, ORG

REPO = "widgets"
STRETCHED = re.compile(r"⏱ Moko checks this organization's repositories every (.+?), not every (.+?):")


@pytest.fixture
def org(fake_github):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, REPO, has_wiki=True, has_issues=True, has_projects=False)
    fake_github.set_permission(ORG, REPO, "alice", "triage")
    return fake_github


async def settle_turns(database_url: str, intervals: dict[int, float]) -> None:
    """Each installation in the reconciliation cycle, its last turn having settled on an
    interval, its next due in an hour."""
    store = open_store(database_url)
    await store.open()
    try:
        for installation, interval in intervals.items():
            await store.join_reconciliation(installation, f"org-{installation}", 0)
            turn = await store.claim_reconcile_turn("earlier", 60)
            assert turn is not None and turn.installation_id == installation
            assert await store.finish_reconcile_turn(installation, "earlier", next_in=3600, interval=interval)
    finally:
        await store.close()


async def status_stretched(fake, environ: dict[str, str], delivery: str) -> list[tuple[str, str]]:
    """What Moko's answer to `/moko status` says of the stretched interval."""
    async with run_moko(environ) as moko:
        payload = fake.event("issue_comment", "created", owner=ORG, repo=REPO, body="/moko status", sender="alice")
        assert (await moko.deliver("issue_comment", payload, delivery=delivery)).status == 202
    answer = [c["body"] for c in fake.comments(ORG, REPO, 1) if c["user"]["login"] == fake.bot_login][-1]
    assert "| repository | has\\_wiki | false | true | no |" in answer
    return STRETCHED.findall(answer)


async def test_status_tells_the_stretched_interval_only_of_its_own_installation_and_when_longer(org, tmp_path):
    # Its own installation checked every 10 min as configured; another one's stretched to 3 h.
    equal = f"sqlite:///{tmp_path}/equal.db"
    await settle_turns(equal, {INSTALLATION: 600, 7: 10800})
    assert await status_stretched(org, moko_environ(org, equal, MOKO_SWEEP_INTERVAL="600s"), "equal") == []

    longer = f"sqlite:///{tmp_path}/longer.db"
    await settle_turns(longer, {INSTALLATION: 7200})
    assert await status_stretched(org, moko_environ(org, longer, MOKO_SWEEP_INTERVAL="600s"), "longer") == [
        ("2 h", "10 min")]
    # The reconciliation off (no MOKO_SWEEP_INTERVAL): what an earlier run settled on is not told.
    assert await status_stretched(org, moko_environ(org, longer), "off") == []
