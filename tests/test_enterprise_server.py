"""An older GitHub Enterprise Server: its GraphQL schema lacks the newer fields, and a query
naming one fails whole. Moko asks the server's schema once per process, queries only what the
server has, and a policy naming a field the server lacks is unknown, with that reason."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from gidgethub import QueryError
from structlog.testing import capture_logs

from bot.github_app import GitHubApp
from policies.batch_read import ReadFields, read_owner, read_repositories
from policies.defaults import DEFAULT_POLICY
from tests.support.harness import run_moko
from tests.test_permissions import unknown_remediations
from tests.test_sweep import COMPLIANT, ORG, PROTECTION, compliant_repo, sweep, writes

INSTALLATION = 1
# What GitHub Enterprise Server 3.6 lacks of what Moko may query (each came later).
OLDER = {
    "BranchProtectionRule": [
        "lockBranch", "lockAllowsFetchAndMerge", "blocksCreations", "requireLastPushApproval",
        "requiresConversationResolution",
    ],
    "Repository": ["allowUpdateBranch", "webCommitSignoffRequired", "squashMergeCommitTitle"],
}


@pytest.fixture
def org(fake_github):
    fake_github.add_installation(INSTALLATION, ORG)
    return fake_github


@pytest.fixture
def older(org):
    org.serve_schema(without_fields=OLDER)
    return org


@pytest.fixture
async def gh(org) -> Any:
    async with aiohttp.ClientSession() as session:
        app = GitHubApp(session=session, api_url=org.url, graphql_url=org.graphql_url,
                        app_id=str(org.app_id), private_key=org.private_key_pem)
        yield await app.installation_client(INSTALLATION)


def schema_questions(fake) -> list[Any]:
    return [c for c in fake.calls_to("POST", "^/graphql$") if "__type" in (c.graphql_query or "")]


def failed_queries(fake) -> list[Any]:
    return [c for c in fake.calls_to("POST", "^/graphql$") if c.status != 200]


async def test_the_older_fake_answers_introspection_and_refuses_a_field_it_lacks(older, gh):
    data = await gh.graphql('query { t: __type(name: "BranchProtectionRule") { fields { name } } }')
    names = {f["name"] for f in data["t"]["fields"]}
    assert "isAdminEnforced" in names and "lockBranch" not in names

    with pytest.raises(QueryError) as refused:
        await gh.graphql(f'query {{ repository(owner: "{ORG}", name: "x") {{ allowUpdateBranch }} }}')
    # As GitHub answers it: errors and no data at all.
    assert "data" not in refused.value.response
    [error] = refused.value.response["errors"]
    assert error["message"] == "Field 'allowUpdateBranch' doesn't exist on type 'Repository'"
    assert error["extensions"] == {"code": "undefinedField", "typeName": "Repository",
                                   "fieldName": "allowUpdateBranch"}
    assert older.take_violations()  # Moko itself must never send such a query


async def test_a_sweep_of_an_older_server_reads_every_repository_in_batches(older, env):
    for i in range(150):
        compliant_repo(older, f"svc-{i:03d}")
    older.add_repo(ORG, "drifted", has_wiki=True)
    older.set_protection(ORG, "drifted", "main", PROTECTION)

    code, doc, _ = await sweep(env)

    assert code == 0 and doc["compliant"] == 150 and doc["fixed"] == 1
    assert failed_queries(older) == [] and older.violations == []
    # The server's schema once, then two pages of 100: no repository read one by one.
    assert len(schema_questions(older)) == 1
    assert older.count("POST", "^/graphql$") == 3
    assert not [c for c in older.calls if c.path.startswith(f"/repos/{ORG}/svc-")]
    page = next(c for c in older.calls_to("POST", "^/graphql$") if "MokoOwnerRepositories" in c.graphql_query)
    assert "lockBranch" not in page.graphql_query and "isAdminEnforced" in page.graphql_query
    assert [f"{c.method} {c.path}" for c in writes(older)] == [f"PATCH /repos/{ORG}/drifted"]


async def test_the_schema_is_asked_once_per_process(older, gh):
    for i in range(3):
        compliant_repo(older, f"lib-{i}")
    fields = ReadFields.for_policy(DEFAULT_POLICY)
    for _ in range(2):
        pages = [page async for _, page in read_owner(gh, ORG, fields)]
        assert [len(page) for page in pages] == [3]
    snapshots, missing = await read_repositories(gh, [f"{ORG}/lib-0", f"{ORG}/lib-2"], fields)
    assert len(snapshots) == 2 and missing == []
    assert len(schema_questions(older)) == 1
    assert older.count("POST", "^/graphql$") == 4 and failed_queries(older) == []


async def test_github_com_schema_is_queried_whole(org, gh):
    """The same read against the current schema still names the newer fields."""
    compliant_repo(org, "lib-0", **COMPLIANT)
    fields = ReadFields.for_policy(DEFAULT_POLICY)
    [_page] = [page async for _, page in read_owner(gh, ORG, fields)]
    page = next(c for c in org.calls_to("POST", "^/graphql$") if "MokoOwnerRepositories" in c.graphql_query)
    assert "lockBranch" in page.graphql_query and "requireLastPushApproval" in page.graphql_query


POLICY_WITH_LOCK = """\
version: 1
branches:
  - name: default
    protection:
      required_status_checks: null
      enforce_admins: false
      required_pull_request_reviews:
        required_approving_review_count: 1
      restrictions: null
      lock_branch: true
"""


NO_LOCK_BRANCH = (
    "this GitHub server has no lock_branch (its GraphQL BranchProtectionRule lacks it: "
    "an older GitHub Enterprise Server)"
)


async def test_a_policy_naming_a_field_the_server_lacks_is_unknown_not_compliant(older, env):
    compliant_repo(older, ".github")
    older.put_file(ORG, ".github", ".github/moko.yml", POLICY_WITH_LOCK)
    compliant_repo(older, "steady")
    older.add_repo(ORG, "loose", **COMPLIANT)  # not protected at all

    code, doc, _ = await sweep(env)

    assert code == 1
    assert doc["unknown"] == 3 and doc["failed"] == 0 and doc["compliant"] == 0
    results = {r["repo"]: r for r in doc["results"]}
    for name in (".github", "steady", "loose"):
        assert results[f"{ORG}/{name}"]["outcome"] == "unknown"
        assert results[f"{ORG}/{name}"]["error"] == f"branch_protection.default.lock_branch is unknown: {NO_LOCK_BRANCH}"
    # What the server can do is still done, in a body without the key it lacks.
    [put] = [c for c in writes(older) if c.method == "PUT"]
    assert put.path == f"/repos/{ORG}/loose/branches/main/protection" and "lock_branch" not in put.body
    assert older.protection_read(ORG, "loose", "main")["required_pull_request_reviews"][
        "required_approving_review_count"] == 1
    assert failed_queries(older) == [] and len(schema_questions(older)) == 1


async def test_the_same_policy_on_a_current_server_is_applied(org, env):
    compliant_repo(org, ".github")
    org.put_file(ORG, ".github", ".github/moko.yml", POLICY_WITH_LOCK)
    compliant_repo(org, "steady")

    code, doc, _ = await sweep(env)

    assert code == 0 and {r["outcome"] for r in doc["results"]} == {"fixed"}
    assert org.protection_read(ORG, "steady", "main")["lock_branch"] == {"enabled": True}


async def test_a_webhook_asks_the_schema_once_when_the_policy_names_a_newer_field(older, env):
    compliant_repo(older, ".github")
    older.put_file(ORG, ".github", ".github/moko.yml",
                   "version: 1\nrepository:\n  has_wiki: false\n  web_commit_signoff_required: true\nbranches: []\n")
    async with run_moko(env) as moko:
        for name in ("one", "two"):
            older.add_repo(ORG, name, has_wiki=True, web_commit_signoff_required=False)
            await moko.deliver("repository", older.event("repository", "created", owner=ORG, repo=name))
    for name in ("one", "two"):
        assert older.repo(ORG, name)["has_wiki"] is False  # what the server can do is done
        assert older.repo(ORG, name)["web_commit_signoff_required"] is False  # the rest is not attempted
    assert [c.body for c in older.calls_to("PATCH")] == [{"has_wiki": False}] * 2
    assert len(schema_questions(older)) == 1 and failed_queries(older) == []


async def test_status_plan_and_a_webhook_say_unknown_naming_the_field_the_server_lacks(older, env):
    compliant_repo(older, ".github")
    older.put_file(ORG, ".github", ".github/moko.yml", POLICY_WITH_LOCK)
    compliant_repo(older, "steady")
    older.set_permission(ORG, "steady", "alice", "triage")
    async with run_moko(env) as moko:
        for command in ("/moko status", "/moko plan"):
            await moko.deliver("issue_comment", older.event("issue_comment", "created", owner=ORG, repo="steady",
                                                            body=command, sender="alice"))
        before = await unknown_remediations(moko, "branch_protection")
        with capture_logs() as logs:
            await moko.deliver("branch_protection_rule", older.event(
                "branch_protection_rule", "edited", owner=ORG, repo="steady"), delivery="edited")
        assert (await moko.services.store.get_delivery("edited")).state == "done"  # nothing to redeliver
        assert await unknown_remediations(moko, "branch_protection") == before + 1
    status, plan = [c["body"] for c in older.comments(ORG, "steady", 1) if c["user"]["login"] == older.bot_login]
    # As the comment escapes it: no Markdown, no mention.
    why = NO_LOCK_BRANCH.replace(":", "&#58;").replace("_", "\\_").replace("(", "\\(").replace(")", "\\)")
    assert "❔ Moko cannot tell whether 1 of 4 items comply with the policy" in status
    assert f"| unknown: {why} | unknown |" in status and "as wanted" not in status
    assert f"- cannot tell branch\\_protection.default.lock\\_branch, so cannot say what it would change there: {why}" \
        in plan
    assert [c for c in writes(older) if c.method != "POST"] == []  # steady was compliant in what it can be
    [logged] = [line for line in logs if line["event"] == "repository_unknown"]
    assert logged["unknown"] == {"branch_protection.default.lock_branch": NO_LOCK_BRANCH}
