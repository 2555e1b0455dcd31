"""The repository events that do carry drift, from outside: a default branch that moved is
protected at once, privatized and publicized repositories are remediated, and Moko's own
changes start nothing. (Settings toggles send no webhook: see test_remediation and the sweeps.)"""

from __future__ import annotations

import pytest

from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG, repo_calls


@pytest.fixture
def org(fake_github):
    fake_github.add_installation(INSTALLATION, ORG)
    return fake_github



def protected_repo(fake, name: str, **fields) -> None:
    fake.add_repo(ORG, name, **{**COMPLIANT, **fields})
    fake.set_protection(ORG, name, "main", DEFAULT_PROTECTION)


async def test_a_new_default_branch_is_protected_at_once_with_one_put(org, moko):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.set_protection(ORG, ".github", "main", DEFAULT_PROTECTION)
    org.put_file(ORG, ".github", ".github/moko.yml", (
        "version: 1\nbranches:\n"
        "  - name: default\n    protection:\n      required_status_checks: null\n      enforce_admins: true\n"
        "      required_pull_request_reviews: {required_approving_review_count: 2}\n      restrictions: null\n"
        "  - name: release\n    protection: null\n"
    ))
    protected_repo(org, "app")
    org.add_branch(ORG, "app", "trunk")
    org.repo(ORG, "app")["default_branch"] = "trunk"
    org.reset_calls()
    moved = org.event("repository", "edited", owner=ORG, repo="app", changes={"default_branch": {"from": "main"}})
    await moko.deliver("repository", moved, delivery="moved")

    protection = org.protection_read(ORG, "app", "trunk")
    assert protection["enforce_admins"]["enabled"] is True
    assert protection["required_pull_request_reviews"]["required_approving_review_count"] == 2
    # The payload held the settings; the named rule (release) did not move, so it is not read.
    assert repo_calls(org, "app") == [
        ("GET", f"/repos/{ORG}/app/branches/trunk/protection"),
        ("PUT", f"/repos/{ORG}/app/branches/trunk/protection"),
    ]
    assert org.protection(ORG, "app", "main") == DEFAULT_PROTECTION  # the old one is left as it was
    records = await moko.services.store.audit_records(repo=f"{ORG}/app")
    assert [(r.field, r.outcome, r.run_id) for r in records if r.outcome != "pending"] == [("trunk", "applied", "moved")]


async def test_a_new_default_branch_that_complies_costs_no_write(org, moko):
    protected_repo(org, "steady")
    org.add_branch(ORG, "steady", "trunk")
    org.set_protection(ORG, "steady", "trunk", DEFAULT_PROTECTION)
    org.repo(ORG, "steady")["default_branch"] = "trunk"
    org.reset_calls()
    await moko.deliver("repository", org.event("repository", "edited", owner=ORG, repo="steady",
                                               changes={"default_branch": {"from": "main"}}))
    assert repo_calls(org, "steady") == [("GET", f"/repos/{ORG}/steady/branches/trunk/protection")]


@pytest.mark.parametrize("action", ["privatized", "publicized"])
async def test_a_repository_whose_visibility_changed_is_remediated(org, moko, action):
    private = action == "privatized"
    org.add_repo(ORG, "flip", has_wiki=True, has_issues=True, has_projects=False,
                 private=private, visibility="private" if private else "public")
    await moko.deliver("repository", org.event("repository", action, owner=ORG, repo="flip"), delivery=action)
    assert org.repo(ORG, "flip")["has_wiki"] is False
    assert org.protection(ORG, "flip", "main") == DEFAULT_PROTECTION
    records = await moko.services.store.audit_records(repo=f"{ORG}/flip")
    assert {(r.field, r.outcome, r.trigger) for r in records if r.outcome != "pending"} == {
        ("has_wiki", "applied", f"repository.{action}"), ("main", "applied", f"repository.{action}"),
    }


@pytest.mark.parametrize(("action", "changes"), [
    ("edited", {"default_branch": {"from": "main"}}),
    ("edited", {"topics": {"from": []}}),
    ("privatized", None),
    ("publicized", None),
])
async def test_moko_s_own_changes_start_nothing(org, moko, action, changes):
    org.add_repo(ORG, "own", has_wiki=True)
    org.add_branch(ORG, "own", "trunk")
    extra = {"changes": changes} if changes else {}
    event = org.event("repository", action, owner=ORG, repo="own", sender=org.bot_login, **extra)
    org.reset_calls()
    await moko.deliver("repository", event)
    assert repo_calls(org, "own") == []
    assert await moko.services.store.audit_records(repo=f"{ORG}/own") == []
