"""How one repository's transaction takes GitHub's refusals, from outside: which answers
count as done, which as failed, and what the audit trail then says."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from bot.audit import settled
from bot.store.base import DONE, FAILED
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG

# The default branch keeps the built-in protection; `release` must have none.
UNPROTECT_RELEASE = (
    "version: 1\nbranches:\n"
    "  - name: release\n    protection: null\n"
)
PROTECTION = f"^/repos/{ORG}/app/branches/release/protection$"


@pytest.fixture
def org(fake_github):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, ".github", **COMPLIANT)
    fake_github.put_file(ORG, ".github", ".github/moko.yml", UNPROTECT_RELEASE)
    fake_github.add_repo(ORG, "app", **COMPLIANT)
    fake_github.set_protection(ORG, "app", "main", DEFAULT_PROTECTION)
    fake_github.add_branch(ORG, "app", "release")
    fake_github.set_protection(ORG, "app", "release", DEFAULT_PROTECTION)
    return fake_github


async def unarchive(moko, fake, delivery: str):
    """Deliver repository.unarchived for app: (its trail, the delivery's state, the warnings
    an operator reads about failed steps)."""
    with capture_logs() as logs:
        await moko.deliver("repository", fake.event("repository", "unarchived", owner=ORG, repo="app"),
                           delivery=delivery)
    trail = settled(await moko.services.store.audit_records(repo=f"{ORG}/app"))
    warnings = [(e["log_level"], e["repo"], e["policy"], e["fields"]) for e in logs
                if e["event"] == "remediation_step_failed"]
    state = (await moko.services.store.get_delivery(delivery)).state
    return [(r.field, r.outcome, r.error) for r in trail], state, warnings


async def test_a_protection_someone_removed_first_counts_as_removed(org, moko):
    # Between Moko's read and its DELETE someone else removed the protection: GitHub says so
    # with a 404, and the branch is as the policy wants.
    org.fail("DELETE", PROTECTION, 404, body={"message": "Branch not protected"})
    trail, state, warnings = await unarchive(moko, org, "gone-first")
    assert [(c.method, c.path) for c in org.calls if c.method in ("PUT", "DELETE", "PATCH")] == [
        ("DELETE", f"/repos/{ORG}/app/branches/release/protection")]
    assert trail == [("release", "applied", None)]
    assert state == DONE
    assert warnings == []


async def test_a_refused_protection_removal_is_a_failure(org, moko):
    org.fail("DELETE", PROTECTION, 403, body={"message": "Resource not accessible by integration"})
    trail, state, warnings = await unarchive(moko, org, "refused")
    assert len(trail) == 1 and trail[0][:2] == ("release", "failed")
    assert trail[0][2] == "403 Resource not accessible by integration"
    assert org.protection(ORG, "app", "release") == DEFAULT_PROTECTION
    assert state == FAILED
    assert warnings == [("warning", f"{ORG}/app", "branch_protection", ["release"])]


async def test_a_protection_put_answered_not_found_is_a_failure_not_a_missing_branch(org, moko):
    # A 404 on a PUT that is not "Branch not found" (the App lost access to the repository)
    # is no reason to wait for the branch: it failed.
    org.put_file(ORG, ".github", ".github/moko.yml", (
        "version: 1\nbranches:\n  - name: release\n    protection:\n      required_status_checks: null\n"
        "      enforce_admins: true\n      required_pull_request_reviews: null\n      restrictions: null\n"))
    org.fail("PUT", PROTECTION, 404, body={"message": "Not Found"})
    trail, state, _ = await unarchive(moko, org, "lost-access")
    assert len(trail) == 1 and trail[0][:2] == ("release", "failed")
    assert trail[0][2] == "404 Not Found"
    assert state == FAILED


async def test_only_a_step_that_a_later_one_could_undo_reads_which_rule_protects_its_branch(org, moko):
    # Undoing a protection PUT needs to know the rule that protected the branch, which costs
    # a GraphQL query; the last step is never undone, so only the steps before it pay.
    protect = ("      required_status_checks: null\n      enforce_admins: true\n"
               "      required_pull_request_reviews: null\n      restrictions: null\n")
    org.put_file(ORG, ".github", ".github/moko.yml", (
        f"version: 1\nbranches:\n  - name: release\n    protection:\n{protect}"
        f"  - name: stable\n    protection:\n{protect}"))
    org.add_branch(ORG, "app", "stable")
    org.set_protection(ORG, "app", "stable", DEFAULT_PROTECTION)
    trail, state, _ = await unarchive(moko, org, "two-puts")
    assert [(c.method, c.path) for c in org.calls if c.method in ("PUT", "DELETE", "PATCH")] == [
        ("PUT", f"/repos/{ORG}/app/branches/release/protection"),
        ("PUT", f"/repos/{ORG}/app/branches/stable/protection"),
    ]
    rule_reads = [c.graphql_variables for c in org.calls
                  if c.graphql_query and "branchProtectionRule {" in c.graphql_query]
    assert rule_reads == [{"owner": ORG, "name": "app", "ref": "refs/heads/release"}]
    assert trail == [("release", "applied", None), ("stable", "applied", None)]
    assert state == DONE


async def test_a_refusal_names_the_errors_github_gave(org, moko):
    # The record says what GitHub refused and why, in GitHub's words, with its status.
    org.fail("DELETE", PROTECTION, 422, body={
        "message": "Validation Failed",
        "errors": [{"resource": "Branch", "code": "custom", "message": "branch is locked"}]})
    trail, state, _ = await unarchive(moko, org, "invalid")
    assert trail == [("release", "failed",
                      "422 Validation Failed: 'branch is locked' ([{'resource': 'Branch', 'code': 'custom', 'message': 'branch is locked'}])")]
    assert state == FAILED


async def test_a_failed_transaction_still_records_the_protection_waiting_for_its_branch(org, moko):
    # hotfix does not exist yet, so its protection waits for it; the wiki's PATCH is refused.
    # The wait is recorded all the same: hotfix's first push is to bring its protection.
    org.put_file(ORG, ".github", ".github/moko.yml", (
        "version: 1\nbranches:\n  - name: hotfix\n    protection:\n      required_status_checks: null\n"
        "      enforce_admins: true\n      required_pull_request_reviews: null\n      restrictions: null\n"))
    org.repo(ORG, "app")["has_wiki"] = True
    org.fail("PATCH", f"^/repos/{ORG}/app$", 403, body={"message": "Resource not accessible by integration"})
    trail, state, _ = await unarchive(moko, org, "refused-patch")
    assert trail == [("has_wiki", "failed", "403 Resource not accessible by integration"),
                     ("hotfix", "deferred", "branch does not exist yet")]
    assert state == FAILED


TWO_BRANCHES = (
    "version: 1\nbranches:\n"
    "  - name: release\n    protection:\n      required_status_checks: null\n      enforce_admins: true\n"
    "      required_pull_request_reviews: null\n      restrictions: null\n"
    "  - name: stable\n    protection:\n      required_status_checks: null\n      enforce_admins: true\n"
    "      required_pull_request_reviews: null\n      restrictions: null\n"
)


def two_unprotected_branches(fake) -> None:
    fake.put_file(ORG, ".github", ".github/moko.yml", TWO_BRANCHES)
    # release (from the fixture) loses its protection; stable is new and unprotected.
    fake.set_protection(ORG, "app", "release", None)
    fake.add_branch(ORG, "app", "stable")


async def test_a_branch_deleted_before_its_protection_waits_and_the_next_step_goes_on(org, moko):
    two_unprotected_branches(org)
    org.fail("PUT", PROTECTION, 404, body={"message": "Branch not found"})
    trail, state, _ = await unarchive(moko, org, "deleted-branch")
    assert trail == [("release", "deferred", "branch does not exist yet"), ("stable", "applied", None)]
    assert org.protection(ORG, "app", "stable") is not None
    assert state == DONE


async def test_a_refused_rollback_is_recorded_as_failed_in_githubs_words(org, moko):
    # stable's PUT fails, so release's PUT is undone; GitHub refuses that DELETE too.
    two_unprotected_branches(org)
    org.fail("PUT", f"^/repos/{ORG}/app/branches/stable/protection$", 422, body={"message": "Validation Failed"})
    org.fail("DELETE", PROTECTION, 403, body={"message": "Resource not accessible by integration"})
    trail, state, _ = await unarchive(moko, org, "stuck")
    assert trail == [
        ("release", "applied", None),
        ("stable", "failed", "422 Validation Failed"),
        ("release", "failed", "rollback failed: 403 Resource not accessible by integration"),
    ]
    assert state == FAILED


async def test_a_rollback_whose_branch_was_deleted_meanwhile_is_recorded_as_failed(org, moko):
    two_unprotected_branches(org)
    org.fail("PUT", f"^/repos/{ORG}/app/branches/stable/protection$", 422, body={"message": "Validation Failed"})
    org.fail("DELETE", PROTECTION, 404, body={"message": "Branch not found"})
    trail, state, _ = await unarchive(moko, org, "gone-meanwhile")
    assert trail[:2] == [("release", "applied", None), ("stable", "failed", "422 Validation Failed")]
    assert [(field, outcome) for field, outcome, _ in trail[2:]] == [("release", "failed")]
    assert trail[2][2].startswith("rollback failed: ")
    assert state == FAILED
