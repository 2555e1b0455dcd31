"""push and create events from outside: which commits of a push count as changing a policy file,
which new refs get the protection that waited for them, and what a reconciliation a policy
push starts sends to GitHub."""

from __future__ import annotations

import time

import pytest

from bot.store.base import DONE
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG, repo_calls

NO_COMMIT = "0" * 40
RELEASE_RULE = (
    "version: 1\nbranches:\n  - name: release\n    protection:\n      required_status_checks: null\n"
    "      enforce_admins: false\n      required_pull_request_reviews: null\n      restrictions: null\n"
)


@pytest.fixture
def org(fake_github):
    fake_github.add_installation(INSTALLATION, ORG)
    return fake_github



async def records(moko, name: str) -> list[tuple[str, str]]:
    """The repository's audit trail, without the intents written before each write."""
    return [(r.field, r.outcome) for r in await moko.services.store.audit_records(repo=f"{ORG}/{name}")
            if r.outcome != "pending"]


async def state_of(moko, delivery: str) -> str:
    return (await moko.services.store.get_delivery(delivery)).state


async def waiting_release(org, moko) -> None:
    """svc, whose release branch the policy protects, has no release branch yet: it waits."""
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.set_protection(ORG, ".github", "main", DEFAULT_PROTECTION)
    org.put_file(ORG, ".github", ".github/moko.yml", RELEASE_RULE)
    org.add_repo(ORG, "svc", **COMPLIANT)
    await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="svc"))
    assert await records(moko, "svc") == [("release", "deferred")]


async def test_a_create_event_alone_protects_the_branch_that_waited_for_it(org, moko):
    await waiting_release(org, moko)
    org.add_branch(ORG, "svc", "release")
    org.reset_calls()
    create = org.event("create", owner=ORG, repo="svc", ref="release", ref_type="branch")
    await moko.deliver("create", create, delivery="created-release")
    assert repo_calls(org, "svc") == [("PUT", f"/repos/{ORG}/svc/branches/release/protection")]
    assert org.protection(ORG, "svc", "release") is not None
    assert await records(moko, "svc") == [("release", "deferred"), ("release", "applied")]
    assert await state_of(moko, "created-release") == DONE


async def test_a_new_tag_named_like_a_waiting_branch_changes_nothing(org, moko):
    await waiting_release(org, moko)
    org.reset_calls()
    create = org.event("create", owner=ORG, repo="svc", ref="release", ref_type="tag")
    push = org.event("push", owner=ORG, repo="svc", ref="refs/tags/release", before=NO_COMMIT)
    await moko.deliver("create", create, delivery="tag-create")
    await moko.deliver("push", push, delivery="tag-push")
    assert org.calls == []
    assert await records(moko, "svc") == [("release", "deferred")]
    assert [await state_of(moko, d) for d in ("tag-create", "tag-push")] == [DONE, DONE]


async def test_a_new_branch_nothing_waits_for_is_pushed_quietly(org, moko):
    await waiting_release(org, moko)
    org.add_branch(ORG, "svc", "feature")
    org.reset_calls()
    push = org.event("push", owner=ORG, repo="svc", ref="refs/heads/feature", before=NO_COMMIT)
    await moko.deliver("push", push, delivery="feature-push")
    assert repo_calls(org, "svc") == []
    assert await records(moko, "svc") == [("release", "deferred")]
    assert await state_of(moko, "feature-push") == DONE


def drifted(org, name: str) -> None:
    org.add_repo(ORG, name, **{**COMPLIANT, "has_wiki": True})
    org.set_protection(ORG, name, "main", DEFAULT_PROTECTION)
    org.put_file(ORG, name, ".github/moko.yml", "version: 1\n")


async def test_a_policy_file_changed_by_an_earlier_commit_of_the_push_counts(org, moko):
    drifted(org, "twofold")
    push = org.event("push", owner=ORG, repo="twofold", modified=["README.md"])
    earlier = {**push["head_commit"], "id": "1" * 40, "modified": [".github/moko.yml"]}
    push["commits"] = [earlier, push["head_commit"]]
    await moko.deliver("push", push)
    assert [c.body for c in org.calls_to("PATCH", f"^/repos/{ORG}/twofold$")] == [{"has_wiki": False}]


async def test_a_push_of_no_new_commit_counts_its_head_commit(org, moko):
    # A branch moved to a commit already in the repository (a force-push back to an earlier
    # one) lists no commits, only its head commit.
    drifted(org, "rolled-back")
    push = org.event("push", owner=ORG, repo="rolled-back", modified=[".github/moko.yml"])
    push["commits"] = []
    await moko.deliver("push", push)
    assert [c.body for c in org.calls_to("PATCH", f"^/repos/{ORG}/rolled-back$")] == [{"has_wiki": False}]


async def test_the_reconciliation_a_policy_push_starts_spaces_its_writes(org, moko):
    # Work over a whole organization is bulk work: GitHub asks for its writes a second apart.
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.set_protection(ORG, ".github", "main", DEFAULT_PROTECTION)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\n")
    for name in ("one", "two"):
        org.add_repo(ORG, name, **{**COMPLIANT, "has_wiki": True})
        org.set_protection(ORG, name, "main", DEFAULT_PROTECTION)
    written: list[float] = []
    org.on_request(lambda call: written.append(time.monotonic()) if call.method == "PATCH" else None)
    push = org.event("push", owner=ORG, repo=".github", modified=[".github/moko.yml"])
    await moko.deliver("push", push)
    assert sorted(c.path for c in org.calls_to("PATCH")) == [f"/repos/{ORG}/one", f"/repos/{ORG}/two"]
    assert written[1] - written[0] >= 0.9
