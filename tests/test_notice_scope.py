"""When the non-compliance issue (`notify: issue`) is told, from outside (Moko in-process against
the fake GitHub): after a remediation of the whole policy only, never after a preview
(`/moko plan`) or a protection rule's event (protection alone), with how long protection has
waited for its branch; and an issue GitHub refuses leaves the remediation as it was."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.audit import AuditWriter
from bot.store.base import FAILED, AuditEntry
from policies.permissions import APP_PERMISSIONS
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG

REFUSED = {"message": "Validation Failed", "documentation_url": "https://docs.github.com/rest",
           "status": "422", "errors": [{"resource": "Repository", "code": "invalid",
                                        "field": "has_wiki", "message": "wikis are off here"}]}
ISSUES = rf"^/repos/{ORG}/stuck/issues$"


@pytest.fixture
def org(fake_github):
    """The App's permissions, a policy with `notify: issue`, and "stuck", a protected
    repository whose wiki is on."""
    fake = fake_github
    fake.add_installation(INSTALLATION, ORG, permissions=APP_PERMISSIONS)
    fake.add_repo(ORG, ".github", **COMPLIANT)
    fake.set_protection(ORG, ".github", "main", DEFAULT_PROTECTION)
    fake.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nnotify: issue\n")
    fake.add_repo(ORG, "stuck", **{**COMPLIANT, "has_wiki": True})
    fake.set_protection(ORG, "stuck", "main", DEFAULT_PROTECTION)
    return fake


def added(fake, *names: str):
    return fake.event("installation_repositories", "added", owner=ORG,
                      repositories_added=[fake.repo(ORG, name) for name in names])


def moko_issues(fake, name: str = "stuck") -> list[dict]:
    return [i for i in fake.issues(ORG, name) if i["user"]["login"] == fake.bot_login]


async def test_a_whole_remediation_github_refuses_opens_the_issue(org, moko):
    org.fail("PATCH", rf"^/repos/{ORG}/stuck$", status=422, body=REFUSED)
    await moko.deliver("installation_repositories", added(org, "stuck"))
    [issue] = moko_issues(org)
    assert "| repository.has\\_wiki | has\\_wiki: true → false |" in issue["body"]


async def deferred_two_days_ago(moko, fake) -> datetime:
    """"empty", an empty repository whose default branch's protection has waited two days;
    a named branch's since an hour ago (newer: it says nothing of the default one's)."""
    fake.add_repo(ORG, "empty", empty=True, **COMPLIANT)
    then, lately = datetime.now(UTC) - timedelta(days=2), datetime.now(UTC) - timedelta(hours=1)
    for at, field in ((then, "default"), (lately, "release")):
        await AuditWriter(moko.services.store, clock=lambda at=at: at).write([AuditEntry(
            time=at, run_id=f"old-{field}", trigger="installation", installation=INSTALLATION, repo=f"{ORG}/empty",
            actor=fake.bot_login, policy="branch_protection", field=field, before=None,
            after=DEFAULT_PROTECTION, outcome="deferred", error="branch does not exist yet")])
    return then


async def test_a_preview_of_a_non_compliant_repository_opens_no_issue(org, moko):
    # A merge setting the installation may not read: what the issue would tell.
    org.put_file(ORG, ".github", ".github/moko.yml",
                 "version: 1\nnotify: issue\nrepository:\n  allow_squash_merge: false\n")
    org.set_permission(ORG, "stuck", "maria", "maintain")
    command = org.event("issue_comment", "created", owner=ORG, repo="stuck", sender="maria", issue_number=7,
                        body="/moko plan")
    await moko.deliver("issue_comment", command)
    [answer] = [c["body"] for c in org.comments(ORG, "stuck", 7) if c["user"]["login"] == org.bot_login]
    assert "cannot tell repository.allow\\_squash\\_merge" in answer
    assert moko_issues(org) == [] and org.count("POST", ISSUES) == 0


async def test_a_protection_rule_event_github_refuses_opens_no_issue(org, moko):
    # Protection alone is remediated: what the issue would say of the whole policy is not known.
    org.set_protection(ORG, "stuck", "main", None)
    org.fail("PUT", rf"^/repos/{ORG}/stuck/branches/main/protection$", status=422,
             body={"message": "Validation Failed", "errors": ["nope"]})
    deleted = org.event("branch_protection_rule", "deleted", owner=ORG, repo="stuck", branch="main")
    await moko.deliver("branch_protection_rule", deleted, delivery="deleted-1")
    assert (await moko.services.store.get_delivery("deleted-1")).state == FAILED
    assert moko_issues(org) == [] and org.count("*", ISSUES) == 0


async def test_protection_waiting_for_its_branch_more_than_a_day_is_told_with_the_time_it_began(org, moko):
    then = await deferred_two_days_ago(moko, org)
    await moko.deliver("installation_repositories", added(org, "empty"))
    [issue] = moko_issues(org, "empty")
    assert "protection of the default branch waits for the branch" in issue["body"]
    # Markdown-escaped: the colon of the time, and the brackets.
    assert then.strftime("(waiting since %Y-%m-%d %H&#58;%M UTC\\)") in issue["body"]


async def test_an_issue_github_refuses_leaves_the_other_repositories_remediated(org, moko):
    org.add_repo(ORG, "next", **{**COMPLIANT, "has_wiki": True})
    org.set_protection(ORG, "next", "main", DEFAULT_PROTECTION)
    org.fail("PATCH", rf"^/repos/{ORG}/stuck$", status=422, body=REFUSED)
    org.fail("POST", ISSUES, status=403, body={"message": "Resource not accessible by integration"})
    await moko.deliver("installation_repositories", added(org, "stuck", "next"), delivery="added-1")
    assert org.repo(ORG, "next")["has_wiki"] is False
    delivery = await moko.services.store.get_delivery("added-1")
    assert delivery.state == FAILED and "Validation Failed" in delivery.error and "403" not in delivery.error
