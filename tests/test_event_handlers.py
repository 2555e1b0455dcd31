"""Each event handler, seen from outside: the event is sent as GitHub would, and the exact writes
Moko makes (or must not make) are checked. Every case here fails when its handler is gone or
misbehaves: a repository that is already compliant would prove nothing, so each one drifts."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG, repo_calls

WRITES = ("PATCH", "PUT", "DELETE")


@pytest.fixture
def org(fake_github):
    fake_github.add_installation(INSTALLATION, ORG)
    return fake_github


def writes(fake) -> list[tuple[str, str]]:
    return [(c.method, c.path) for c in fake.calls if c.method in WRITES and c.path.startswith("/repos/")]



def drifted_repo(fake, name: str) -> None:
    """Wiki on (the policy wants it off) and the default branch unprotected."""
    fake.add_repo(ORG, name, **{**COMPLIANT, "has_wiki": True})


async def records(moko, name: str):
    return await moko.services.store.audit_records(repo=f"{ORG}/{name}")


def org_policy(fake, text: str) -> None:
    fake.add_repo(ORG, ".github", **COMPLIANT)
    fake.set_protection(ORG, ".github", "main", DEFAULT_PROTECTION)
    fake.put_file(ORG, ".github", ".github/moko.yml", text)


async def test_moko_own_events_start_no_round_even_when_the_repository_drifts(org, moko):
    # Moko's own PUT comes back as branch_protection_rule and its PATCH of a description as
    # repository.edited, signed by its bot. Had a person changed the repository meanwhile,
    # their own event brings that; the bot's echo must not, or every write costs a second round.
    drifted_repo(org, "echo")
    own_rule = org.event("branch_protection_rule", "edited", owner=ORG, repo="echo", branch="main",
                         protection=DEFAULT_PROTECTION, sender=org.bot_login)
    own_edit = org.event("repository", "edited", owner=ORG, repo="echo", sender=org.bot_login)
    assert (await moko.deliver("branch_protection_rule", own_rule)).status == 202
    assert (await moko.deliver("repository", own_edit)).status == 202
    assert repo_calls(org, "echo") == []
    assert await records(moko, "echo") == []

    # The same events from a person do remediate: the quiet above is the bot check, not chance.
    person_edit = org.event("repository", "edited", owner=ORG, repo="echo", sender="octocat")
    await moko.deliver("repository", person_edit)
    assert org.repo(ORG, "echo")["has_wiki"] is False


async def test_a_persons_event_is_remediated_without_asking_github_who_moko_is(org, moko):
    # Only a bot's event can be Moko's own: a person's needs no GET /app to tell.
    drifted_repo(org, "person")
    edit = org.event("repository", "edited", owner=ORG, repo="person", sender="octocat")
    assert edit["sender"]["type"] == "User"
    await moko.deliver("repository", edit)
    assert org.repo(ORG, "person")["has_wiki"] is False
    assert org.count("GET", "^/app$") == 0


async def test_a_bot_whose_login_lacks_the_bot_suffix_is_remediated_without_asking_who_moko_is(org, moko):
    # Moko's own events come from a Bot account whose login ends in "[bot]": GitHub's Copilot
    # coding agent is a Bot account named "Copilot", so its edit is not Moko's, no GET /app asked.
    drifted_repo(org, "agent")
    edit = org.event("repository", "edited", owner=ORG, repo="agent", sender=org.state.user("Copilot", "Bot"))
    assert (edit["sender"]["login"], edit["sender"]["type"]) == ("Copilot", "Bot")
    await moko.deliver("repository", edit)
    assert org.repo(ORG, "agent")["has_wiki"] is False
    assert org.count("GET", "^/app$") == 0


async def test_repositories_added_to_an_installation_are_remediated(org, moko):
    drifted_repo(org, "joined")
    org.add_repo(ORG, "tidy", **COMPLIANT)
    org.set_protection(ORG, "tidy", "main", DEFAULT_PROTECTION)
    added = org.event("installation_repositories", "added", owner=ORG,
                      repositories_added=[org.repo(ORG, "joined"), org.repo(ORG, "tidy")])
    await moko.deliver("installation_repositories", added, delivery="added-1")
    assert sorted(writes(org)) == [
        ("PATCH", f"/repos/{ORG}/joined"),
        ("PUT", f"/repos/{ORG}/joined/branches/main/protection"),
    ]
    assert org.calls_to("PATCH", f"^/repos/{ORG}/joined$")[0].body == {"has_wiki": False}
    assert org.protection(ORG, "joined", "main") is not None
    trail = await records(moko, "joined")
    assert {(r.field, r.outcome) for r in trail} >= {("has_wiki", "applied"), ("main", "applied")}
    assert {r.run_id for r in trail} == {"added-1"}
    assert await records(moko, "tidy") == []


@pytest.mark.parametrize("action", ["transferred", "renamed", "unarchived"])
async def test_a_repository_that_arrives_by_transfer_rename_or_unarchiving_is_remediated(org, moko, action):
    drifted_repo(org, "moved")
    event = org.event("repository", action, owner=ORG, repo="moved", sender="octocat")
    with capture_logs() as logs:
        await moko.deliver("repository", event, delivery=f"{action}-1")
    assert sorted(writes(org)) == [
        ("PATCH", f"/repos/{ORG}/moved"),
        ("PUT", f"/repos/{ORG}/moved/branches/main/protection"),
    ]
    assert org.repo(ORG, "moved")["has_wiki"] is False
    assert org.protection(ORG, "moved", "main") is not None
    # The audit trail names the person whose event started the fix; the log says what it did.
    assert {(r.run_id, r.actor, r.trigger) for r in await records(moko, "moved")} == {
        (f"{action}-1", "octocat", f"repository.{action}")}
    [logged] = [e for e in logs if e["event"] == "repository_remediated"]
    assert (logged["repo"], logged["outcome"], logged["changes"], logged["dry_run"]) == (
        f"{ORG}/moved", "fixed", 2, False)
    assert "error" not in logged


async def test_a_push_of_a_repositorys_own_policy_file_applies_its_allowed_overrides(org, moko):
    org_policy(org, "version: 1\noverrides: [repository.has_wiki]\n")
    org.add_repo(ORG, "handbook", **COMPLIANT)
    org.set_protection(ORG, "handbook", "main", DEFAULT_PROTECTION)
    # The repository's maintainers want their wiki back and say so in their own file.
    org.put_file(ORG, "handbook", ".github/moko.yml", "version: 1\nrepository:\n  has_wiki: true\n")
    push = org.event("push", owner=ORG, repo="handbook", ref="refs/heads/main",
                     modified=[".github/moko.yml"])
    await moko.deliver("push", push, delivery="own-file")
    assert writes(org) == [("PATCH", f"/repos/{ORG}/handbook")]
    assert org.calls_to("PATCH", f"^/repos/{ORG}/handbook$")[0].body == {"has_wiki": True}
    assert org.repo(ORG, "handbook")["has_wiki"] is True
    assert [(r.field, r.after, r.outcome) for r in await records(moko, "handbook")
            if r.outcome != "pending"] == [("has_wiki", True, "applied")]


async def test_a_push_of_another_file_changes_nothing(org, moko):
    drifted_repo(org, "quiet")
    push = org.event("push", owner=ORG, repo="quiet", ref="refs/heads/main", modified=["README.md"])
    await moko.deliver("push", push)
    assert writes(org) == []


async def test_a_failed_step_rolls_back_an_applied_protection_step(org, moko):
    org_policy(org, (
        "version: 1\nbranches:\n"
        "  - name: main\n    protection:\n      required_status_checks: null\n      enforce_admins: false\n"
        "      required_pull_request_reviews:\n        required_approving_review_count: 1\n"
        "      restrictions: null\n"
        "  - name: release\n    protection:\n      required_status_checks: null\n      enforce_admins: true\n"
        "      required_pull_request_reviews: null\n      restrictions: null\n"
    ))
    org.add_repo(ORG, "brittle", **COMPLIANT)
    org.add_branch(ORG, "brittle", "release")
    org.fail("PUT", f"^/repos/{ORG}/brittle/branches/release/protection$", 422,
             body={"message": "Validation Failed"})
    org.reset_calls()
    with capture_logs() as logs:
        await moko.deliver("repository", org.event("repository", "unarchived", owner=ORG, repo="brittle"),
                           delivery="brittle-1")
    # main was protected, release refused: main's protection is taken off again, as it was.
    assert writes(org) == [
        ("PUT", f"/repos/{ORG}/brittle/branches/main/protection"),
        ("PUT", f"/repos/{ORG}/brittle/branches/release/protection"),
        ("DELETE", f"/repos/{ORG}/brittle/branches/main/protection"),
    ]
    assert org.protection(ORG, "brittle", "main") is None
    outcomes = {(r.field, r.outcome) for r in await records(moko, "brittle")}
    assert ("main", "rolled-back") in outcomes and ("release", "failed") in outcomes
    delivery = await moko.services.store.get_delivery("brittle-1")
    [logged] = [e for e in logs if e["event"] == "repository_remediated"]
    assert (logged["repo"], logged["outcome"], logged["dry_run"]) == (f"{ORG}/brittle", "failed", False)
    assert "422 Validation Failed" in logged["error"]
    # The delivery fails naming the repository and why, so that GitHub's redelivery is worth it.
    assert delivery.state == "failed"
    assert f"RemediationFailed: {ORG}/brittle: " in delivery.error and "422 Validation Failed" in delivery.error


async def test_audit_is_denied_to_the_read_role(org, moko):
    drifted_repo(org, "widgets")
    org.set_permission(ORG, "widgets", "rita", "read")
    payload = org.event("issue_comment", "created", owner=ORG, repo="widgets", body="/moko audit", sender="rita")
    await moko.deliver("issue_comment", payload)
    answers = [c["body"] for c in org.comments(ORG, "widgets", 1) if c["user"]["login"] == org.bot_login]
    assert len(answers) == 1
    assert "needs the **triage** role or higher" in answers[0] and "you have **read**" in answers[0]
    assert "| time | actor |" not in answers[0]
    assert [(r.field, r.outcome) for r in await records(moko, "widgets")] == [("audit", "denied")]
