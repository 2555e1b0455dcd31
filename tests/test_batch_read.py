"""Batched GraphQL reads: the queries (checked by the fake against GitHub's schema), what each
node becomes, what is left for REST, and what reconciling after webhooks costs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bot.github_app import GitHubApp
from policies.batch_read import (
    OwnerNotFound,
    ReadFields,
    read_owner,
    read_repositories,
    snapshot_of,
    viewer_login,
)
from policies.defaults import DEFAULT_POLICY
from policies.loader import parse_policy
from policies.model import BRANCH_PROTECTION, REPOSITORY
from policies.plan import plan_repository
from policies.protection_batch import RULES_PAGE, ProtectionRead
from policies.protection_shapes import GRAPHQL_RULE_FIELDS, NormalizedProtection
from policies.protection_state import protection_state
from policies.repository_settings import GRAPHQL_FIELDS
from tests.fakegithub.state import APP_PERMISSIONS
from tests.support.harness import run_moko

ORG = "acme"
INSTALLATION = 1
PROTECTION = {
    "required_status_checks": None,
    "enforce_admins": False,
    "required_pull_request_reviews": {"required_approving_review_count": 1},
    "restrictions": None,
}
COMPLIANT = {"has_issues": True, "has_wiki": False, "has_projects": False}


@pytest.fixture
def org(fake_github):
    # contents: write, so that GitHub shows the merge settings these tests read.
    fake_github.add_installation(INSTALLATION, ORG, permissions={**APP_PERMISSIONS, "contents": "write"})
    return fake_github


@pytest.fixture
async def gh(org) -> AsyncIterator[Any]:
    async with aiohttp.ClientSession() as session:
        app = GitHubApp(session=session, api_url=org.url, graphql_url=org.graphql_url,
                        app_id=str(org.app_id), private_key=org.private_key_pem)
        yield await app.installation_client(INSTALLATION, bulk=True)


def compliant_repo(fake, name: str, **fields: Any) -> None:
    fake.add_repo(ORG, name, **{**COMPLIANT, **fields})
    fake.set_protection(ORG, name, "main", PROTECTION)


def rule(pattern: str, **fields: Any) -> dict[str, Any]:
    """A BranchProtectionRule node as GitHub answers GRAPHQL_RULE_FIELDS: one approving review."""
    flags = [line.strip() for line in GRAPHQL_RULE_FIELDS.splitlines() if line.strip().isidentifier()]
    node: dict[str, Any] = dict.fromkeys(flags, False)
    node.update(pattern=pattern, requiredStatusCheckContexts=[], requiredStatusChecks=[],
                requiresApprovingReviews=True, requiredApprovingReviewCount=1, **fields)
    return node


def node(name: str = "app", *, rules: list[dict[str, Any]] | None = None, total: int | None = None,
         **fields: Any) -> dict[str, Any]:
    rules = rules or []
    return {
        "name": name, "nameWithOwner": f"{ORG}/{name}", "isArchived": False, "isEmpty": False,
        "defaultBranchRef": {"name": "main"}, "owner": {"login": ORG},
        "hasIssuesEnabled": True, "hasWikiEnabled": False, "hasProjectsEnabled": False,
        "branchProtectionRules": {"totalCount": len(rules) if total is None else total, "nodes": rules},
        **fields,
    }


def test_default_policy_reads_its_three_settings_and_default_branch_protection():
    fields = ReadFields.for_policy(DEFAULT_POLICY)
    assert fields == ReadFields((
        (REPOSITORY, frozenset({"has_issues", "has_wiki", "has_projects"})), (BRANCH_PROTECTION, ProtectionRead(True)),
    ))
    selection = fields.selection()
    assert "hasWikiEnabled" in selection and "branchProtectionRules(first: 20)" in selection
    assert "squashMergeAllowed" not in selection  # only what the policy names


def test_overrides_widen_what_is_read():
    policy = parse_policy(
        "version: 1\nrepository:\n  has_wiki: false\nbranches:\n  - name: default\n"
        "    protection: {enforce_admins: true}\n"
        "overrides: [repository.allow_squash_merge, branches.release]\n"
    )
    fields = ReadFields.for_policy(policy)
    assert fields.wanted(REPOSITORY) == {"has_wiki", "allow_squash_merge"}
    assert fields.wanted(BRANCH_PROTECTION).branches == ("release",)
    whole = ReadFields.for_policy(parse_policy("version: 1\noverrides: [repository]\n"))
    assert whole.wanted(REPOSITORY) >= set(GRAPHQL_FIELDS)
    none = ReadFields.for_policy(parse_policy("version: 1\nbranches: []\n"))
    assert none.wanted(BRANCH_PROTECTION) is None and "branchProtectionRules" not in none.selection()


def test_an_exact_rule_is_the_protection_and_plans_compliant_without_a_read():
    snapshot = snapshot_of(node(rules=[rule("release/*"), rule("main")]), ReadFields.for_policy(DEFAULT_POLICY))
    assert isinstance(protection_state(snapshot).protections["main"], NormalizedProtection)
    plan = plan_repository(DEFAULT_POLICY, snapshot)
    assert plan.compliant and plan.needs_read == ()


def test_no_rule_means_unprotected_so_protection_is_put_without_a_read():
    snapshot = snapshot_of(node(), ReadFields.for_policy(DEFAULT_POLICY))
    assert protection_state(snapshot).protections == {"main": None}
    plan = plan_repository(DEFAULT_POLICY, snapshot)
    assert [(c.field, c.method) for c in plan.changes] == [("main", "PUT")] and plan.needs_read == ()


@pytest.mark.parametrize("rules, total", [
    ([rule("ma*")], None),  # a wildcard applies: GitHub's own matching decides
    ([rule(f"topic-{i}") for i in range(RULES_PAGE)], RULES_PAGE + 1),  # the exact one may be unread
])
def test_what_graphql_cannot_decide_is_left_to_rest(rules, total):
    snapshot = snapshot_of(node(rules=rules, total=total), ReadFields.for_policy(DEFAULT_POLICY))
    assert "main" not in protection_state(snapshot).protections
    plan = plan_repository(DEFAULT_POLICY, snapshot)
    assert plan.needs_read == ("branch_protection.main",)


def test_empty_repository_waits_and_named_branches_that_do_not_exist_are_known():
    empty = snapshot_of(node(isEmpty=True, defaultBranchRef=None), ReadFields.for_policy(DEFAULT_POLICY))
    assert empty.empty and protection_state(empty).protections == {} and empty.repository["default_branch"] is None
    fields = ReadFields(((BRANCH_PROTECTION, ProtectionRead(True, ("release", "develop"))),))
    snapshot = snapshot_of(node(branch0={"name": "release"}, branch1=None, rules=[rule("release")]), fields)
    assert snapshot.existing_branches == {"main", "release"}
    assert set(protection_state(snapshot).protections) == {"main", "release"}


async def test_owner_pages_of_100_validated_against_githubs_schema(org, gh):
    for i in range(130):
        compliant_repo(org, f"svc-{i:03d}")
    org.add_repo(ORG, "bare", empty=True, **COMPLIANT)
    org.add_repo(ORG, "drifted", has_wiki=True)
    # Every field GraphQL can give, and a named branch: the fake checks the query is valid.
    everything = ReadFields(((REPOSITORY, frozenset(GRAPHQL_FIELDS)), (BRANCH_PROTECTION, ProtectionRead(True, ("release",)))))
    pages = [(total, page) async for total, page in read_owner(gh, ORG, everything)]
    assert [len(page) for _, page in pages] == [100, 32] and {t for t, _ in pages} == {132}
    snapshots = {s.repository["name"]: s for _, page in pages for s in page}
    assert snapshots["drifted"].repository["has_wiki"] is True
    assert protection_state(snapshots["drifted"]).protections == {"main": None}  # read, and not protected
    assert snapshots["bare"].empty
    assert isinstance(protection_state(snapshots["svc-000"]).protections["main"], NormalizedProtection)
    assert snapshots["svc-000"].existing_branches == {"main"}
    assert snapshots["svc-000"].repository["visibility"] == "public"
    # The server's schema, asked once, then a query a page.
    assert org.count("POST", "^/graphql$") == 3 and org.count("GET") == 0


async def test_named_repositories_100_a_query_and_the_missing_ones(org, gh):
    for i in range(150):
        compliant_repo(org, f"lib-{i:03d}")
    names = [f"{ORG}/lib-{i:03d}" for i in range(150)] + [f"{ORG}/ghost"]
    snapshots, missing = await read_repositories(gh, names, ReadFields.for_policy(DEFAULT_POLICY))
    assert len(snapshots) == 150 and missing == [f"{ORG}/ghost"]
    assert org.count("POST", "^/graphql$") == 3  # the server's schema, then 100 a query
    org.take_violations()  # NOT_FOUND for the ghost is GitHub's answer, not a bad query
    with pytest.raises(OwnerNotFound):
        async for _ in read_owner(gh, "nobody", ReadFields()):
            pass


async def test_viewer_login_of_a_personal_token(org):
    org.add_personal_token("ghp_operator", "octo-admin")
    async with aiohttp.ClientSession() as session:
        app = GitHubApp(session=session, api_url=org.url, graphql_url=org.graphql_url, token="ghp_operator")
        assert await viewer_login(await app.installation_client(0)) == "octo-admin"


async def test_installation_of_150_repositories_reads_them_in_two_queries(org, env):
    for i in range(150):
        compliant_repo(org, f"app-{i:03d}")
    org.add_repo(ORG, "wiki-on", has_wiki=True, has_issues=True, has_projects=False)
    org.set_protection(ORG, "wiki-on", "main", PROTECTION)
    payload = org.event("installation", "created", owner=ORG, repositories=[
        {"id": org.repo(ORG, n)["id"], "node_id": org.repo(ORG, n)["node_id"], "name": n,
         "full_name": f"{ORG}/{n}", "private": False} for n in [*(f"app-{i:03d}" for i in range(150)), "wiki-on"]
    ])
    async with run_moko(env) as moko:
        await moko.deliver("installation", payload)
    assert org.repo(ORG, "wiki-on")["has_wiki"] is False
    assert org.count("POST", "^/graphql$") == 3  # the server's schema, then 100 a query
    assert [f"{c.method} {c.path}" for c in org.calls if c.path.startswith(f"/repos/{ORG}/")] == [
        f"GET /repos/{ORG}/.github/contents/.github/moko.yml", f"PATCH /repos/{ORG}/wiki-on"]
    assert org.count("GET", "^/installation/repositories") == 0


async def test_policy_change_reconciles_the_installation_from_graphql_pages(org, env):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.set_protection(ORG, ".github", "main", PROTECTION)
    for i in range(120):
        compliant_repo(org, f"svc-{i:03d}")
    compliant_repo(org, "svc-loose", allow_auto_merge=True)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nrepository:\n  allow_auto_merge: false\n")
    push = org.event("push", owner=ORG, repo=".github", ref="refs/heads/main", modified=[".github/moko.yml"])
    async with run_moko(env) as moko:
        await moko.deliver("push", push)
    assert org.repo(ORG, "svc-loose")["allow_auto_merge"] is False
    assert org.count("POST", "^/graphql$") == 3  # the server's schema; 122 repositories, 100 a query
    assert org.count("GET", f"^/repos/{ORG}/svc-") == 0  # nothing read one by one
    assert [c.path for c in org.calls_to("PATCH")] == [f"/repos/{ORG}/svc-loose"]
