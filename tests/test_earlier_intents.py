"""What a remediation reads in the audit trail before it writes, from outside: another run's
intents shortly before its payload was current (the repository may have changed since: it is
read again), and a retaken delivery's own intents, left without an outcome by the try that
died (each gets the outcome GitHub shows). The trail and the delivery are put in the store
as those runs left them; then Moko starts and takes the delivery up, as after a restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from bot.audit import settled
from bot.store import open_store
from bot.store.base import DONE, AuditEntry, NewDelivery
from policies.apply import NOT_MADE
from policies.permissions import APP_PERMISSIONS
from tests.fakegithub.webhooks import webhook_headers
from tests.support.harness import WEBHOOK_SECRET, run_moko
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG, repo_calls
from tests.support.waiting import wait_until

REPO = f"{ORG}/app"
SETTINGS = f"/repos/{ORG}/app"
PROTECTION = f"{SETTINGS}/branches/main/protection"
# How long a request Moko sent may still be carried out: the window before a payload was
# current in which another run's intent means the repository may have changed since is a
# minute more than that.
TIMEOUT = 30.0
WINDOW = timedelta(seconds=60 + TIMEOUT)

Trail = Callable[[datetime], list[AuditEntry]]


@pytest.fixture
def org(fake_github):
    fake_github.add_installation(INSTALLATION, ORG)
    return fake_github


def drifted_payload(fake) -> dict[str, Any]:
    """A protected repository whose `repository.edited` payload shows the wiki on; GitHub
    shows it off now (another run turned it off after the payload was made)."""
    fake.add_repo(ORG, "app", **{**COMPLIANT, "has_wiki": True})
    fake.set_protection(ORG, "app", "main", DEFAULT_PROTECTION)
    payload = fake.event("repository", "edited", owner=ORG, repo="app", changes={"description": {"from": None}})
    fake.repo(ORG, "app")["has_wiki"] = False
    return payload


def entry(at: datetime, run: str, outcome: str, *, policy: str = "repository", field: str = "has_wiki",
          before: Any = True, after: Any = False, error: str | None = None) -> AuditEntry:
    return AuditEntry(time=at, run_id=run, trigger="repository.edited", installation=INSTALLATION, repo=REPO,
                      actor="octocat", policy=policy, field=field, before=before, after=after, outcome=outcome,
                      error=error)


def change(at: datetime, run: str, outcome: str, **fields: Any) -> list[AuditEntry]:
    """A change's intent, and then its outcome (a second later, with its error if any)."""
    error = fields.pop("error", None)
    return [entry(at, run, "pending", **fields), entry(at + timedelta(seconds=1), run, outcome, error=error, **fields)]


async def remediated(env: dict[str, str], payload: dict[str, Any], trail: Trail, *, retaken: bool = False,
                     delivery: str = "edited-1", event: str = "repository",
                     timeout: float = TIMEOUT, meanwhile: Callable[[], None] | None = None) -> list[Any]:
    """Store the delivery (claimed by a process that died when ``retaken``) and the records
    ``trail`` makes of the time it was received; start Moko and wait (10 s at most) until the
    delivery is done. The repository's records, each change's outcome after its intent."""
    environ = {**env, "MOKO_REQUEST_TIMEOUT": str(timeout)}
    store = open_store(environ["MOKO_DATABASE_URL"])
    await store.open()
    try:
        body = json.dumps(payload).encode()
        stored = NewDelivery(delivery, event, INSTALLATION, webhook_headers(event, delivery, body, WEBHOOK_SECRET), body)
        if retaken:
            await store.add_and_claim(stored, "a-process-that-died", 0.0)
        else:
            await store.add_delivery(stored)
        received = (await store.get_delivery(delivery)).received_at
        await store.append_audit(trail(received))
    finally:
        await store.close()
    async with run_moko(environ) as moko:
        if meanwhile is not None:
            meanwhile()
        store = moko.services.store
        await wait_until(lambda: _done(store, delivery), timeout=10)
        return await store.audit_records(repo=REPO)


async def _done(store, delivery: str) -> bool:
    found = await store.get_delivery(delivery)
    assert found.state != "failed", found.error
    return found.state == DONE


def outcomes(records, field: str = "has_wiki") -> list[tuple[str, str, str | None]]:
    return [(r.run_id, r.outcome, r.error) for r in records if r.field == field]


# --- another run's intents --------------------------------------------------------------------


async def test_another_runs_change_shortly_before_the_payload_makes_moko_read_the_repository_again(org, env):
    payload = drifted_payload(org)

    def trail(received: datetime) -> list[AuditEntry]:
        # An hour of older records, then a sweep's change, then a branch rule that waits for
        # its branch (no change made): the sweep's change still counts.
        old = [e for n in range(4) for e in change(received - timedelta(hours=1, minutes=n), f"old-{n}", "applied",
                                                   field="has_projects")]
        return [*old, *change(received - timedelta(seconds=30), "sweep-1", "applied"),
                *change(received - timedelta(seconds=10), "sweep-2", "deferred", policy="branch_protection",
                        field="release", before=None, after={})]

    records = await remediated(env, payload, trail)

    # The payload's wiki is stale: GitHub is read, shows it off, and nothing is written.
    assert repo_calls(org, "app") == [("GET", SETTINGS)]
    assert outcomes(records) == [("sweep-1", "pending", None), ("sweep-1", "applied", None)]


async def test_another_runs_change_at_the_edge_of_the_window_counts_and_one_just_before_does_not(org, env):
    payload = drifted_payload(org)
    records = await remediated(env, payload, lambda received: change(received - WINDOW, "sweep-1", "applied"))
    assert repo_calls(org, "app") == [("GET", SETTINGS)]
    assert [r.run_id for r in records] == ["sweep-1", "sweep-1"]


async def test_another_runs_change_before_the_window_does_not_make_moko_read_again(org, env):
    payload = drifted_payload(org)
    earlier = timedelta(microseconds=1)
    records = await remediated(env, payload, lambda received: change(received - WINDOW - earlier, "sweep-1", "applied"))
    # Planned from the payload alone (what a sweep changed that long ago, the payload shows).
    assert repo_calls(org, "app") == [("PATCH", SETTINGS)]
    assert outcomes(records)[2:] == [("edited-1", "pending", None), ("edited-1", "applied", None)]


async def test_a_payload_that_shows_compliance_costs_no_request_even_after_another_runs_change(org, env):
    payload = drifted_payload(org)
    payload["repository"]["has_wiki"] = False
    records = await remediated(env, payload, lambda received: change(received - timedelta(seconds=30), "sweep-1",
                                                                     "applied"))
    # Nothing to change as the payload shows it: no lock taken, nothing read, nothing written.
    assert repo_calls(org, "app") == []
    assert [r.run_id for r in records] == ["sweep-1", "sweep-1"]


async def test_a_dry_run_records_its_plan_from_the_payload_whatever_another_run_did(org, env):
    payload = drifted_payload(org)
    records = await remediated({**env, "MOKO_DRY_RUN": "true"}, payload,
                               lambda received: change(received - timedelta(seconds=30), "sweep-1", "applied"))
    # A dry run writes nothing: nothing to make twice, so nothing is read again.
    assert repo_calls(org, "app") == []
    assert outcomes(records)[2:] == [("edited-1", "dry-run", None)]


def waits(received: datetime, count: int) -> list[AuditEntry]:
    """``count`` records of branch rules that wait for their branch (no change made), the
    newest three seconds before ``received``."""
    pairs = [change(received - timedelta(seconds=3 + 2 * n), "sweep-1", "deferred", policy="branch_protection",
                    field="release", before=None, after={}) for n in range((count + 1) // 2)]
    return [e for pair in reversed(pairs) for e in pair][-count:]


async def test_a_trail_whose_eight_newest_records_are_all_recent_makes_moko_read_again(org, env):
    payload = drifted_payload(org)
    # Not one of them an intent that changed something, but an older one may be.
    await remediated(env, payload, lambda received: waits(received, 8))
    assert repo_calls(org, "app") == [("GET", SETTINGS)]


async def test_seven_recent_records_that_changed_nothing_after_an_old_one_do_not(org, env):
    payload = drifted_payload(org)

    def trail(received: datetime) -> list[AuditEntry]:
        dry_run = entry(received - timedelta(seconds=2), "sweep-2", "dry-run")
        return [*change(received - timedelta(hours=1), "old", "applied"), *waits(received, 6), dry_run]

    await remediated(env, payload, trail)
    assert repo_calls(org, "app") == [("PATCH", SETTINGS)]


async def test_this_runs_own_intent_counts_from_the_moment_its_payload_was_current(org, env):
    payload = drifted_payload(org)
    await remediated(env, payload, lambda received: change(received, "edited-1", "applied"))
    assert repo_calls(org, "app") == [("GET", SETTINGS)]


async def test_this_runs_own_intent_from_before_its_payload_was_current_does_not(org, env):
    payload = drifted_payload(org)
    earlier = timedelta(microseconds=1)
    await remediated(env, payload, lambda received: change(received - earlier, "edited-1", "applied"))
    assert repo_calls(org, "app") == [("PATCH", SETTINGS)]


async def test_a_write_another_run_left_unanswered_is_waited_for_before_the_repository_is_read(org, env):
    # The other run's process died with its PATCH on its way: GitHub carries it out half a
    # second after Moko started, within the second such a request may take.
    payload = drifted_payload(org)
    org.repo(ORG, "app")["has_wiki"] = True

    def lands_late() -> None:
        asyncio.get_running_loop().call_later(0.5, org.repo(ORG, "app").__setitem__, "has_wiki", False)

    records = await remediated(env, payload, lambda received: [entry(received - timedelta(seconds=1), "sweep-1",
                                                                     "pending")], timeout=1.0, meanwhile=lands_late)
    assert repo_calls(org, "app") == [("GET", SETTINGS)]
    assert outcomes(records) == [("sweep-1", "pending", None)]


# --- a retaken delivery's own intents ----------------------------------------------------------


async def test_a_retake_records_applied_the_change_its_dead_try_made(org, env):
    payload = drifted_payload(org)

    def trail(received: datetime) -> list[AuditEntry]:
        # Another run tried the same change after it, and failed: that made nothing; and made
        # another change, which says nothing of this one.
        return [entry(received + timedelta(seconds=1), "edited-1", "pending"),
                *change(received + timedelta(seconds=2), "sweep-1", "failed", error="HTTP 502"),
                *change(received + timedelta(seconds=4), "sweep-1", "applied", field="has_projects")]

    records = await remediated(env, payload, trail, retaken=True, timeout=0.2)

    assert repo_calls(org, "app") == [("GET", SETTINGS)]
    assert outcomes(records) == [
        ("edited-1", "pending", None), ("sweep-1", "pending", None), ("sweep-1", "failed", "HTTP 502"),
        ("edited-1", "applied", None)]


async def test_a_retake_whose_payload_shows_compliance_still_reads_and_records_its_dead_tries_change(org, env):
    payload = drifted_payload(org)
    payload["repository"]["has_wiki"] = False
    records = await remediated(env, payload, lambda received: [entry(received + timedelta(seconds=1), "edited-1",
                                                                     "pending")], retaken=True, timeout=0.2)
    assert repo_calls(org, "app") == [("GET", SETTINGS)]
    assert outcomes(records) == [("edited-1", "pending", None), ("edited-1", "applied", None)]


async def test_a_retake_records_failed_the_change_its_dead_try_did_not_make_and_makes_it(org, env):
    payload = drifted_payload(org)
    org.repo(ORG, "app")["has_wiki"] = True
    records = await remediated(env, payload, lambda received: [entry(received + timedelta(seconds=1), "edited-1",
                                                                     "pending")], retaken=True, timeout=0.2)
    assert repo_calls(org, "app") == [("GET", SETTINGS), ("PATCH", SETTINGS)]
    assert outcomes(records) == [
        ("edited-1", "pending", None), ("edited-1", "failed", NOT_MADE),
        ("edited-1", "pending", None), ("edited-1", "applied", None)]


async def test_a_retake_waits_for_its_dead_tries_write_before_reading(org, env):
    payload = drifted_payload(org)
    org.repo(ORG, "app")["has_wiki"] = True

    def lands_late() -> None:
        asyncio.get_running_loop().call_later(0.5, org.repo(ORG, "app").__setitem__, "has_wiki", False)

    records = await remediated(env, payload, lambda received: [entry(received + timedelta(seconds=1), "edited-1",
                                                                     "pending")],
                               retaken=True, timeout=1.0, meanwhile=lands_late)
    assert repo_calls(org, "app") == [("GET", SETTINGS)]
    assert outcomes(records) == [("edited-1", "pending", None), ("edited-1", "applied", None)]


async def test_a_change_another_run_made_after_the_dead_tries_intent_is_not_credited_to_it(org, env):
    payload = drifted_payload(org)

    def trail(received: datetime) -> list[AuditEntry]:
        return [entry(received + timedelta(seconds=1), "edited-1", "pending"),
                *change(received + timedelta(seconds=2), "sweep-1", "applied")]

    records = await remediated(env, payload, trail, retaken=True, timeout=0.2)

    assert repo_calls(org, "app") == [("GET", SETTINGS)]
    assert outcomes(records) == [
        ("edited-1", "pending", None), ("sweep-1", "pending", None), ("sweep-1", "applied", None),
        ("edited-1", "failed", NOT_MADE)]


async def test_a_retake_leaves_pending_an_intent_its_plan_does_not_decide(org, env):
    # The dead try of a protection rule's event intended a settings change and the branch's
    # protection: this try's plan covers protection only, so the settings' intent is left as it is.
    org.add_repo(ORG, "app", **COMPLIANT)
    org.set_protection(ORG, "app", "main", DEFAULT_PROTECTION)
    payload = org.event("branch_protection_rule", "edited", owner=ORG, repo="app", branch="main",
                        protection=DEFAULT_PROTECTION)

    def trail(received: datetime) -> list[AuditEntry]:
        return [entry(received + timedelta(seconds=1), "rule-1", "pending"),
                entry(received + timedelta(seconds=2), "rule-1", "pending", policy="branch_protection",
                      field="main", before=None, after=DEFAULT_PROTECTION)]

    records = await remediated(env, payload, trail, retaken=True, timeout=0.2, delivery="rule-1",
                               event="branch_protection_rule")

    assert [(c[0], c[1]) for c in repo_calls(org, "app") if c[0] != "GET"] == []
    assert [(r.field, r.outcome) for r in settled(records)] == [("has_wiki", "pending"), ("main", "applied")]


async def test_a_retake_leaves_pending_an_intent_about_a_field_it_cannot_read(fake_github, env):
    # The dead try intended a merge setting; the installation may not read it (contents: write
    # not granted), so this try cannot tell whether it was made.
    fake_github.add_installation(INSTALLATION, ORG, permissions=APP_PERMISSIONS)
    fake_github.add_repo(ORG, ".github", **COMPLIANT)
    fake_github.put_file(ORG, ".github", ".github/moko.yml",
                         "version: 1\nrepository:\n  has_wiki: false\n  allow_squash_merge: false\n")
    payload = drifted_payload(fake_github)

    def trail(received: datetime) -> list[AuditEntry]:
        return [entry(received + timedelta(seconds=1), "edited-1", "pending", field="allow_squash_merge"),
                entry(received + timedelta(seconds=2), "edited-1", "pending")]

    records = await remediated(env, payload, trail, retaken=True, timeout=0.2)

    assert [(r.field, r.outcome) for r in settled(records)] == [
        ("allow_squash_merge", "pending"), ("has_wiki", "applied")]
