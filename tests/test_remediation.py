"""Remediation from outside: signed webhooks drive Moko against the fake GitHub; every API call counted."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from bot.audit import settled
from bot.store.base import DONE, FAILED, AuditEntry
from tests.support.harness import run_moko
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG, repo_calls


@pytest.fixture
def org(fake_github):
    fake_github.add_installation(INSTALLATION, ORG)
    return fake_github



async def records(moko, name: str):
    """The repository's trail as a reader sees it: each change's pending record is left out
    once its outcome follows (test_intent_is_recorded_before_each_request shows them)."""
    return settled(await moko.services.store.audit_records(repo=f"{ORG}/{name}"))


def release_protection_policy(fake, before: str = "") -> None:
    """An organization policy (after ``before``) protecting each repository's release branch."""
    fake.add_repo(ORG, ".github", **COMPLIANT)
    fake.put_file(ORG, ".github", ".github/moko.yml", (
        f"version: 1\n{before}branches:\n  - name: release\n    protection:\n"
        "      required_status_checks: null\n      enforce_admins: false\n"
        "      required_pull_request_reviews: null\n      restrictions: null\n"
    ))


def compliant_repo(fake, name: str, **fields):
    fake.add_repo(ORG, name, **{**COMPLIANT, **fields})
    fake.set_protection(ORG, name, "main", DEFAULT_PROTECTION)


async def test_new_repository_gets_wiki_off_and_default_branch_protected_with_two_calls(org, moko):
    org.add_repo(ORG, "widgets", has_wiki=True, has_issues=True, has_projects=False)
    payload = org.event("repository", "created", owner=ORG, repo="widgets")
    reply = await moko.deliver("repository", payload, delivery="new-1")
    assert reply.status == 202
    assert org.repo(ORG, "widgets")["has_wiki"] is False
    assert org.protection_read(ORG, "widgets", "main")["required_pull_request_reviews"]["required_approving_review_count"] == 1
    # No GET: the payload held the settings, and a new repository has no protection to read.
    assert repo_calls(org, "widgets") == [
        ("PATCH", f"/repos/{ORG}/widgets"),
        ("PUT", f"/repos/{ORG}/widgets/branches/main/protection"),
    ]
    patch = org.calls_to("PATCH", f"^/repos/{ORG}/widgets$")[0]
    assert patch.body == {"has_wiki": False}
    trail = await records(moko, "widgets")
    assert [(r.policy, r.field, r.before, r.after, r.outcome) for r in trail][0] == (
        "repository", "has_wiki", True, False, "applied")
    assert trail[1].policy == "branch_protection" and trail[1].outcome == "applied"
    assert all(r.run_id == "new-1" and r.actor == "octocat" for r in trail)
    assert (await moko.services.store.get_delivery("new-1")).state == DONE


async def test_compliant_new_repository_costs_no_settings_call(org, moko):
    org.add_repo(ORG, "tidy", **COMPLIANT)
    await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="tidy"))
    assert repo_calls(org, "tidy") == [("PUT", f"/repos/{ORG}/tidy/branches/main/protection")]


async def test_empty_repository_is_protected_when_its_first_push_arrives(org, moko):
    org.add_repo(ORG, "fresh", empty=True, **COMPLIANT)
    await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="fresh"))
    trail = await records(moko, "fresh")
    assert [(r.policy, r.outcome) for r in trail] == [("branch_protection", "deferred")]
    assert org.protection(ORG, "fresh", "main") is None

    org.add_branch(ORG, "fresh", "main")
    org.reset_calls()
    push = org.event("push", owner=ORG, repo="fresh", ref="refs/heads/main",
                     before="0" * 40, created=True)
    create = org.event("create", owner=ORG, repo="fresh", ref="main", ref_type="branch")
    await moko.send("push", push)
    await moko.send("create", create)
    await moko.settle()
    assert org.protection(ORG, "fresh", "main") is not None
    # GitHub sends both create and push for the first push: protection is written once.
    assert repo_calls(org, "fresh") == [("PUT", f"/repos/{ORG}/fresh/branches/main/protection")]
    assert [r.outcome for r in await records(moko, "fresh")] == ["deferred", "applied"]


async def test_a_branch_s_protection_still_waits_for_it_when_github_refuses_the_rest(org, moko):
    release_protection_policy(org, "repository:\n  has_wiki: false\n")
    org.add_repo(ORG, "svc", **{**COMPLIANT, "has_wiki": True})
    org.fail("PATCH", f"^/repos/{ORG}/svc$", 422, body={"message": "Validation Failed", "errors": ["nope"]})
    await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="svc"))
    assert [(r.field, r.outcome) for r in await records(moko, "svc")] == [
        ("has_wiki", "failed"), ("release", "deferred")]

    # The branch's first push brings its protection, whatever became of the settings.
    org.add_branch(ORG, "svc", "release")
    org.reset_calls()
    push = org.event("push", owner=ORG, repo="svc", ref="refs/heads/release", before="0" * 40, created=True)
    await moko.deliver("push", push)
    # (It reads first: the failed write's intent is recent enough to have changed the repository.)
    writes = [call for call in repo_calls(org, "svc") if call[0] != "GET"]
    assert writes == [("PUT", f"/repos/{ORG}/svc/branches/release/protection")]
    assert org.protection(ORG, "svc", "release") is not None
    assert [(r.field, r.outcome) for r in await records(moko, "svc")][-1] == ("release", "applied")


async def test_protection_for_a_missing_branch_is_recorded_as_waiting_once(org, moko):
    release_protection_policy(org)
    org.add_repo(ORG, "svc", **COMPLIANT)
    await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="svc"))
    for _ in range(2):  # the policy file is pushed again: every repository is reconciled again
        await moko.deliver("push", org.event("push", owner=ORG, repo=".github", ref="refs/heads/main",
                                             modified=[".github/moko.yml"]))
    assert [(r.field, r.outcome) for r in await records(moko, "svc")] == [("release", "deferred")]
    assert org.count("PUT") == 0

    org.add_branch(ORG, "svc", "release")
    push = org.event("push", owner=ORG, repo="svc", ref="refs/heads/release", before="0" * 40, created=True)
    await moko.deliver("push", push)
    assert org.protection(ORG, "svc", "release") is not None
    assert [(r.field, r.outcome) for r in await records(moko, "svc")] == [("release", "deferred"), ("release", "applied")]


async def test_a_wait_for_a_branch_is_looked_for_among_the_repository_s_last_50_records(org, moko):
    release_protection_policy(org)
    org.add_repo(ORG, "svc", **COMPLIANT)
    await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="svc"))
    # 49 newer records than the wait's: it is found; 50: it is recorded again.
    for others, waits in ((49, 1), (1, 2)):
        await moko.services.store.append_audit([AuditEntry(
            time=datetime.now(UTC), run_id=f"cmd-{n}", trigger="issue_comment.created", installation=INSTALLATION,
            repo=f"{ORG}/svc", actor="octocat", policy="command", field="status", before=None, after=None,
            outcome="applied") for n in range(others)])
        await moko.deliver("repository", org.event("repository", "unarchived", owner=ORG, repo="svc"))
        found = [(r.field, r.outcome) for r in await records(moko, "svc") if r.policy == "branch_protection"]
        assert found == [("release", "deferred")] * waits


async def test_wiki_turned_back_on_sends_no_webhook_and_apply_turns_it_off_once(org, moko):
    compliant_repo(org, "app")
    org.set_permission(ORG, "app", "alice", "maintain")
    # On GitHub, turning the wiki on sends no webhook at all; the fake refuses to pretend.
    with pytest.raises(ValueError, match="no webhook"):
        org.event("repository", "edited", owner=ORG, repo="app", changes={"has_wiki": {"from": False}})
    org.repo(ORG, "app")["has_wiki"] = True
    apply = org.event("issue_comment", "created", owner=ORG, repo="app", body="/moko apply", sender="alice")
    await moko.deliver("issue_comment", apply)
    assert org.repo(ORG, "app")["has_wiki"] is False
    assert [c.body for c in org.calls_to("PATCH", f"^/repos/{ORG}/app$")] == [{"has_wiki": False}]
    assert [r.outcome for r in await records(moko, "app") if r.policy == "repository"] == ["applied"]


async def test_a_description_edit_is_reverted_from_the_payload_and_moko_s_own_edit_starts_nothing(org, moko):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nrepository:\n  description: Managed by Moko\n")
    org.add_repo(ORG, "app", description="Managed by Moko")
    org.set_protection(ORG, "app", "main", DEFAULT_PROTECTION)
    org.repo(ORG, "app")["description"] = "mine now"
    edited = org.event("repository", "edited", owner=ORG, repo="app",
                       changes={"description": {"from": "Managed by Moko"}})
    await moko.deliver("repository", edited)
    assert org.repo(ORG, "app")["description"] == "Managed by Moko"
    # The payload held the settings: no read, one PATCH.
    assert repo_calls(org, "app") == [("PATCH", f"/repos/{ORG}/app")]

    # GitHub reports Moko's own edit back to it; that starts no new round.
    org.reset_calls()
    own = org.event("repository", "edited", owner=ORG, repo="app", sender=org.bot_login,
                    changes={"description": {"from": "mine now"}})
    await moko.deliver("repository", own)
    assert repo_calls(org, "app") == []
    assert [r.outcome for r in await records(moko, "app")] == ["applied"]


async def test_deleted_protection_is_restored(org, moko):
    compliant_repo(org, "core")
    org.set_protection(ORG, "core", "main", None)
    deleted = org.event("branch_protection_rule", "deleted", owner=ORG, repo="core", branch="main")
    await moko.deliver("branch_protection_rule", deleted)
    assert org.protection(ORG, "core", "main") is not None
    assert repo_calls(org, "core") == [
        ("GET", f"/repos/{ORG}/core/branches/main/protection"),
        ("PUT", f"/repos/{ORG}/core/branches/main/protection"),
    ]


async def test_a_rule_created_against_the_policy_is_removed(org, moko):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nbranches:\n  - name: release\n    protection: null\n")
    compliant_repo(org, "core")
    org.add_branch(ORG, "core", "release")
    org.set_protection(ORG, "core", "release", DEFAULT_PROTECTION)
    org.reset_calls()
    created = org.event("branch_protection_rule", "created", owner=ORG, repo="core", branch="release",
                        protection=DEFAULT_PROTECTION)
    await moko.deliver("branch_protection_rule", created, delivery="rule-created")
    assert org.protection(ORG, "core", "release") is None
    assert [c for c in repo_calls(org, "core") if c[0] != "GET"] == [
        ("DELETE", f"/repos/{ORG}/core/branches/release/protection")]
    assert [(r.field, r.outcome, r.trigger) for r in await records(moko, "core")] == [
        ("release", "applied", "branch_protection_rule.created")]


async def test_compliant_protected_branch_is_never_written_again(org, moko):
    compliant_repo(org, "steady")
    for action in ("edited", "created"):
        event = org.event("branch_protection_rule", action, owner=ORG, repo="steady", branch="main",
                          protection=DEFAULT_PROTECTION)
        await moko.deliver("branch_protection_rule", event)
    unarchived = org.event("repository", "unarchived", owner=ORG, repo="steady")
    await moko.deliver("repository", unarchived)
    assert org.count("PUT") == 0 and org.count("PATCH") == 0
    assert await records(moko, "steady") == []


async def test_a_rule_other_branches_share_is_held_not_removed_and_the_operator_is_told(org, moko):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nbranches:\n  - name: release/1\n    protection: null\n")
    compliant_repo(org, "core")
    for branch in ("release/1", "release/2"):
        org.add_branch(ORG, "core", branch)
    org.add_protection_rule(ORG, "core", "release/*", DEFAULT_PROTECTION)
    before = org.protection_rules(ORG, "core")
    edited = org.event("branch_protection_rule", "edited", owner=ORG, repo="core", branch="release/*")
    with capture_logs() as logs:
        await moko.deliver("branch_protection_rule", edited, delivery="held-1")
    assert org.protection_rules(ORG, "core") == before
    reason = "release/1: protected by the rule release/*, which other branches share: Moko does not remove it"
    delivery = await moko.services.store.get_delivery("held-1")
    assert delivery.state == FAILED and delivery.error.endswith(f"{ORG}/core: {reason}")
    assert [(e["repo"], e["reason"]) for e in logs if e["event"] == "policy_change_held"] == [(f"{ORG}/core", reason)]
    assert await records(moko, "core") == []


async def test_invalid_policy_file_changes_nothing_and_says_why(org, moko):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nrepository:\n  has_wikki: false\n")
    org.add_repo(ORG, "victim", has_wiki=True)
    with capture_logs() as logs:
        await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="victim"),
                           delivery="bad-policy")
    assert org.count("PATCH") == 0 and org.count("PUT") == 0
    # The operator's log: failed, and not a dry run (nothing was planned at all).
    assert [(e["repo"], e["outcome"], e["dry_run"]) for e in logs if e["event"] == "repository_remediated"] == [
        (f"{ORG}/victim", "failed", False)]
    trail = await records(moko, "victim")
    assert len(trail) == 1 and trail[0].outcome == "failed" and trail[0].policy == "config"
    assert ":3: repository.has_wikki" in trail[0].error
    delivery = await moko.services.store.get_delivery("bad-policy")
    assert delivery.state == FAILED and "has_wikki" in delivery.error


async def test_policy_file_over_one_megabyte_is_invalid_not_empty(org, moko):
    # Valid YAML padded to 1.5 MB: the contents API answers it with no content, which read
    # as an empty file would silently mean the built-in default (wiki off, here).
    padding = "# " + "x" * 78 + "\n"
    text = "version: 1\nrepository:\n  has_wiki: true\n" + padding * (1536 * 1024 // len(padding))
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml", text)
    org.add_repo(ORG, "victim", has_wiki=True)
    await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="victim"), delivery="big-policy")
    assert org.count("PATCH") == 0 and org.count("PUT") == 0
    assert org.repo(ORG, "victim")["has_wiki"] is True
    [record] = await records(moko, "victim")
    assert (record.policy, record.field, record.outcome) == ("config", f"{ORG}/.github/.github/moko.yml", "failed")
    assert "too large" in record.error and str(len(text)) in record.error
    assert (await moko.services.store.get_delivery("big-policy")).state == FAILED


async def test_invalid_repository_file_changes_nothing_for_that_repository_and_says_why(org, moko):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\noverrides: [repository.has_wiki]\n")
    # The owner meant to keep the wiki on, with a typo: Moko must not turn it off.
    org.add_repo(ORG, "docs", has_wiki=True)
    org.put_file(ORG, "docs", ".github/moko.yml", "version: 1\nrepository:\n  has_wiki: yes please\n")
    org.add_repo(ORG, "other", has_wiki=True)
    await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="docs"), delivery="bad-repo-file")
    await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="other"))
    assert org.repo(ORG, "docs")["has_wiki"] is True
    assert org.count("PATCH", f"^/repos/{ORG}/docs$") == 0 and org.count("PUT", f"^/repos/{ORG}/docs/") == 0
    trail = await records(moko, "docs")
    assert [(r.policy, r.field, r.outcome) for r in trail] == [("config", f"{ORG}/docs/.github/moko.yml", "failed")]
    assert f"{ORG}/docs/.github/moko.yml:3: repository.has_wiki" in trail[0].error
    assert (await moko.services.store.get_delivery("bad-repo-file")).state == FAILED
    assert org.repo(ORG, "other")["has_wiki"] is False  # the organization's policy still holds elsewhere


async def test_forbidden_repository_does_not_stop_the_others(org, moko):
    for name in ("one", "two", "three"):
        org.add_repo(ORG, name, has_wiki=True, has_issues=True, has_projects=False)
        org.set_protection(ORG, name, "main", DEFAULT_PROTECTION)
    org.fail("PATCH", f"^/repos/{ORG}/two$", 403, body={"message": "Resource not accessible by integration"})
    payload = org.event("installation", "created", owner=ORG, repositories=[
        {"id": org.repo(ORG, n)["id"], "node_id": org.repo(ORG, n)["node_id"], "name": n,
         "full_name": f"{ORG}/{n}", "private": False} for n in ("one", "two", "three")
    ])
    await moko.deliver("installation", payload, delivery="install")
    assert org.repo(ORG, "one")["has_wiki"] is False
    assert org.repo(ORG, "two")["has_wiki"] is True
    assert org.repo(ORG, "three")["has_wiki"] is False
    failed = await records(moko, "two")
    assert failed[0].outcome == "failed" and "403" in failed[0].error and "Resource not accessible" in failed[0].error
    delivery = await moko.services.store.get_delivery("install")
    # The delivery's error names the repository and what GitHub answered.
    assert delivery.state == FAILED and delivery.error.endswith(f"{ORG}/two: 403 Resource not accessible by integration")
    async with moko.session.get(moko.url + "/metrics") as response:
        assert 'moko_remediations_total{outcome="failed",policy="repository"}' in await response.text()


async def test_failure_on_second_step_rolls_the_first_back(org, moko):
    org.add_repo(ORG, "fragile", has_wiki=True, has_issues=True, has_projects=False)
    org.fail("PUT", f"^/repos/{ORG}/fragile/branches/main/protection$", 422,
             body={"message": "Validation Failed", "errors": ["nope"]})
    await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="fragile"))
    assert org.repo(ORG, "fragile")["has_wiki"] is True
    trail = await records(moko, "fragile")
    assert [(r.policy, r.outcome) for r in trail] == [
        ("repository", "applied"),
        ("branch_protection", "failed"),
        ("repository", "rolled-back"),
    ]
    assert "422" in trail[1].error
    assert [c.body for c in org.calls_to("PATCH")] == [{"has_wiki": False}, {"has_wiki": True}]


async def test_dry_run_changes_nothing_and_records_everything(org, env):
    org.add_repo(ORG, "draft", has_wiki=True, has_issues=True, has_projects=True)
    async with run_moko({**env, "MOKO_DRY_RUN": "true"}) as moko:
        await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="draft"))
        trail = await records(moko, "draft")
    assert org.count("PATCH") == 0 and org.count("PUT") == 0
    assert {(r.field, r.outcome) for r in trail} == {
        ("has_wiki", "dry-run"), ("has_projects", "dry-run"), ("main", "dry-run"),
    }


async def test_policy_mode_dry_run_changes_nothing(org, moko):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nmode: dry-run\n")
    org.add_repo(ORG, "sandbox", has_wiki=True)
    await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="sandbox"))
    assert org.count("PATCH") == 0 and org.count("PUT") == 0
    assert {r.outcome for r in await records(moko, "sandbox")} == {"dry-run"}


async def test_archived_and_out_of_scope_repositories_are_left_alone(org, moko):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nscope:\n  exclude: ['legacy-*']\n")
    org.add_repo(ORG, "legacy-app", has_wiki=True)
    org.add_repo(ORG, "old", has_wiki=True, archived=True)
    await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="legacy-app"))
    await moko.deliver("repository", org.event("repository", "edited", owner=ORG, repo="old",
                                                 changes={"homepage": {"from": None}}))
    assert org.count("PATCH") == 0 and org.count("PUT") == 0
    assert repo_calls(org, "old") == []


async def test_policy_change_reconciles_every_repository(org, moko):
    org.add_repo(ORG, ".github", **COMPLIANT)
    compliant_repo(org, "alpha")
    compliant_repo(org, "beta")
    await moko.deliver("repository", org.event("repository", "unarchived", owner=ORG, repo="alpha"))
    assert org.count("PATCH") == 0
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nrepository:\n  has_issues: false\n")
    push = org.event("push", owner=ORG, repo=".github", ref="refs/heads/main", modified=[".github/moko.yml"])
    await moko.deliver("push", push)
    assert org.repo(ORG, "alpha")["has_issues"] is False
    assert org.repo(ORG, "beta")["has_issues"] is False
    assert org.repo(ORG, ".github")["has_issues"] is False


WILDCARD_POLICY = (
    "version: 1\nrepository: {}\nbranches:\n"
    "  - name: release/1\n    protection:\n      required_status_checks: null\n"
    "      enforce_admins: true\n      required_pull_request_reviews: null\n      restrictions: null\n"
    "  - name: stable\n    protection:\n      required_status_checks: null\n"
    "      enforce_admins: true\n      required_pull_request_reviews: null\n      restrictions: null\n"
)


def wildcard_org(fake) -> dict:
    """release/1 is covered only by the shared rule release/*; stable is unprotected, and
    GitHub refuses its protection, so the transaction must undo release/1's PUT."""
    fake.add_repo(ORG, ".github", **COMPLIANT)
    fake.put_file(ORG, ".github", ".github/moko.yml", WILDCARD_POLICY)
    fake.add_repo(ORG, "app", **COMPLIANT)
    for branch in ("release/1", "release/2", "stable"):
        fake.add_branch(ORG, "app", branch)
    fake.add_protection_rule(ORG, "app", "release/*", {**DEFAULT_PROTECTION, "allow_deletions": True})
    fake.fail("PUT", f"^/repos/{ORG}/app/branches/stable/protection$", 422,
              body={"message": "Validation Failed", "errors": ["nope"]})
    return fake.protection_rules(ORG, "app")


async def test_rollback_of_a_put_on_a_wildcard_covered_branch_leaves_the_rules_as_they_were(org, moko):
    before = wildcard_org(org)
    await moko.deliver("branch_protection_rule", org.event(
        "branch_protection_rule", "edited", owner=ORG, repo="app", branch="release/*"), delivery="edited")

    # The rules are exactly as they were: release/1 has no rule of its own left behind.
    assert org.protection_rules(ORG, "app") == before
    writes = [(c.method, c.path) for c in org.calls if c.method in ("PUT", "DELETE")]
    assert writes == [
        ("PUT", f"/repos/{ORG}/app/branches/release/1/protection"),
        ("PUT", f"/repos/{ORG}/app/branches/stable/protection"),
        ("DELETE", f"/repos/{ORG}/app/branches/release/1/protection"),
    ]
    trail = await records(moko, "app")
    assert [(r.field, r.outcome) for r in trail] == [
        ("release/1", "applied"), ("stable", "failed"), ("release/1", "rolled-back")]
    assert (await moko.services.store.get_delivery("edited")).state == FAILED


async def test_a_sweeps_rollback_on_a_wildcard_covered_branch_costs_no_extra_read(org, env):
    from tests.test_sweep import sweep

    before = wildcard_org(org)
    code, doc, _ = await sweep(env, "--repo", "app")
    assert code == 1 and doc["results"][0]["outcome"] == "failed"
    assert org.protection_rules(ORG, "app") == before
    # The batched read said which rule covers release/1: no question of its own.
    assert not [c for c in org.calls_to("POST", "^/graphql$") if "MokoBranchRule" in (c.graphql_query or "")]


async def test_a_schema_question_github_fails_once_is_asked_again_under_the_lock(org, env):
    # A policy naming a newer field makes Moko ask the server's schema; the first answer is a 502.
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml",
                 "version: 1\nrepository:\n  has_wiki: false\n  web_commit_signoff_required: true\nbranches: []\n")
    org.add_repo(ORG, "app", has_wiki=True, web_commit_signoff_required=True)
    org.fail("POST", "^/graphql$", 502)
    async with run_moko({**env, "MOKO_RETRY_ATTEMPTS": "1"}) as moko:
        await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="app"), delivery="new-1")
        assert (await moko.services.store.get_delivery("new-1")).state == DONE
    assert [c.body for c in org.calls_to("PATCH", f"^/repos/{ORG}/app$")] == [{"has_wiki": False}]
    assert [c.status for c in org.calls_to("POST", "^/graphql$")] == [502, 200]


async def test_a_read_github_refuses_under_the_lock_fails_the_repository_with_githubs_words(org, moko):
    compliant_repo(org, "core")
    org.fail("GET", f"^/repos/{ORG}/core/branches/main/protection$", 403,
             body={"message": "Resource not accessible by integration"})
    deleted = org.event("branch_protection_rule", "deleted", owner=ORG, repo="core", branch="main")
    await moko.deliver("branch_protection_rule", deleted, delivery="deleted-1")
    delivery = await moko.services.store.get_delivery("deleted-1")
    assert delivery.state == FAILED
    assert delivery.error.endswith(f"{ORG}/core: 403 Resource not accessible by integration")
    assert org.count("PUT") == 0 and await records(moko, "core") == []
