"""installation events from outside: a new installation's repositories are fixed (read by name when
the event lists them, by listing the account when it does not), its writes spaced as bulk work,
and it joins the continuous reconciliation until it is deleted."""

from __future__ import annotations

import re
import time

from bot.store.base import DONE
from tests.support.harness import run_moko
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION
from tests.support.waiting import wait_until

ACCOUNT = "newco"
NAMES = ("alpha", "beta")


def drifted_account(fake) -> list[float]:
    """A new installation whose two repositories drift; returns the times its PATCHes arrive."""
    fake.add_installation(5, ACCOUNT)
    for name in NAMES:
        fake.add_repo(ACCOUNT, name, **{**COMPLIANT, "has_wiki": True})
        fake.set_protection(ACCOUNT, name, "main", DEFAULT_PROTECTION)
    written: list[float] = []
    fake.on_request(lambda call: written.append(time.monotonic()) if call.method == "PATCH" else None)
    return written


def created_event(fake, *, listed: bool) -> dict:
    event = fake.event("installation", "created", owner=ACCOUNT, repo=NAMES[0])
    if listed:
        event["repositories"] += fake.event("installation", "created", owner=ACCOUNT, repo=NAMES[1])["repositories"]
    else:
        del event["repositories"]
    return event


def queries(fake) -> list[str]:
    return [re.search(r"query (\w+)", c.graphql_query).group(1) for c in fake.calls if c.graphql_query]


def fixed(fake) -> bool:
    return all(fake.repo(ACCOUNT, name)["has_wiki"] is False for name in NAMES)


async def test_the_repositories_a_new_installation_lists_are_fixed_without_listing_the_account(fake_github, moko):
    written = drifted_account(fake_github)
    await moko.deliver("installation", created_event(fake_github, listed=True), delivery="installed")
    assert fixed(fake_github)
    assert "MokoOwnerRepositories" not in queries(fake_github)
    assert (await moko.services.store.get_delivery("installed")).state == DONE
    # Bulk work: GitHub asks for writes a second apart when many repositories are touched.
    assert len(written) == 2 and written[1] - written[0] >= 0.9


async def test_a_new_installation_that_lists_no_repositories_has_its_account_listed_and_fixed(fake_github, moko):
    drifted_account(fake_github)
    await moko.deliver("installation", created_event(fake_github, listed=False), delivery="installed")
    assert fixed(fake_github)
    assert queries(fake_github).count("MokoOwnerRepositories") == 1
    assert (await moko.services.store.get_delivery("installed")).state == DONE


async def interval_shown(moko) -> bool:
    async with moko.session.get(moko.url + "/metrics") as metrics:
        return 'moko_reconcile_interval_seconds{installation="5"}' in await metrics.text()


async def test_a_deleted_installation_leaves_the_reconciliation_and_keeps_its_audit_trail(fake_github, env):
    drifted_account(fake_github)
    # A turn every two seconds, with the whole of the installation's limits for it.
    async with run_moko({**env, "MOKO_SWEEP_INTERVAL": "2s", "MOKO_SWEEP_BUDGET": "1"}) as moko:
        store = moko.services.store
        await moko.deliver("installation", created_event(fake_github, listed=True))
        assert [t.installation_id for t in await store.reconcile_turns()] == [5]
        await wait_until(lambda: interval_shown(moko), timeout=30)  # its first turn came
        await moko.deliver("installation", fake_github.event("installation", "deleted", owner=ACCOUNT),
                           delivery="uninstalled")
        fake_github.remove_installation(5)
        assert await store.reconcile_turns() == []
        assert not await interval_shown(moko)
        assert (await store.get_delivery("uninstalled")).state == DONE
        assert {r.repo for r in await store.audit_records()} == {f"{ACCOUNT}/{name}" for name in NAMES}


async def test_the_audit_trail_names_the_person_whose_event_started_the_fix(fake_github, moko):
    drifted_account(fake_github)
    event = created_event(fake_github, listed=True)
    event["sender"] = {**event["sender"], "login": "rita"}
    await moko.deliver("installation", event)
    assert {r.actor for r in await moko.services.store.audit_records()} == {"rita"}
