"""The fake GitHub itself: schema checks, protection read shape, auth, pagination, ETags, faults, GraphQL."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiohttp.web
import jwt
import pytest
from gidgethub import BadRequest, GitHubBroken, GraphQLException, InvalidField, QueryError
from gidgethub.aiohttp import GitHubAPI
from gidgethub.apps import get_installation_access_token
from jsonschema import Draft7Validator, Draft202012Validator

from tests.fakegithub import FakeGitHub
from tests.fakegithub.openapi import to_json_schema
from tests.fakegithub.plugin import assert_no_violations, fake_github  # noqa: F401
from tests.fakegithub.rest import decode_content
from tests.fakegithub.state import APP_PERMISSIONS
from tests.fakegithub.webhooks import (
    FIXTURES,
    build_event,
    load_example,
    sign,
    webhook_headers,
)

ORG = "acme"
INSTALLATION = 7
PROTECTION = {
    "required_status_checks": None,
    "enforce_admins": False,
    "required_pull_request_reviews": {"required_approving_review_count": 1},
    "restrictions": None,
}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake(fake_github: FakeGitHub) -> FakeGitHub:  # noqa: F811
    # contents: write, so that the merge settings are visible (see the permission tests).
    fake_github.add_installation(INSTALLATION, ORG, permissions={**APP_PERMISSIONS, "contents": "write"})
    fake_github.add_repo(ORG, "widgets")
    fake_github.add_repo(ORG, "empty", empty=True)
    return fake_github


@pytest.fixture
def gh(fake: FakeGitHub, session: aiohttp.ClientSession) -> GitHubAPI:
    return GitHubAPI(session, "moko-tests", base_url=fake.url,
                     oauth_token=fake.installation_token(INSTALLATION))


def app_api(fake: FakeGitHub, session: aiohttp.ClientSession) -> GitHubAPI:
    return GitHubAPI(session, "moko-tests", base_url=fake.url)


def app_jwt(fake: FakeGitHub, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iat": now - 60, "exp": now + 540, "iss": str(fake.app_id), **claims}
    # PyJWS: pyjwt's encode() refuses an integer `iss`, which GitHub accepts.
    return jwt.api_jws.PyJWS().encode(json.dumps(payload).encode(), fake.private_key_pem,
                                      algorithm="RS256")


def check_response(fake: FakeGitHub, operation_id: str, status: int, body: Any) -> None:
    """The fake's answer fits GitHub's documented response (objects left open)."""
    validator = fake.validator.response_validator(operation_id, status)
    assert validator is not None
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(body)]
    assert errors == []


# --- REST request validation ---------------------------------------------------------------


async def test_a_valid_patch_changes_the_repository(fake, gh):
    answer = await gh.patch(f"/repos/{ORG}/widgets",
                            data={"has_wiki": False, "has_projects": False,
                                  "description": "Gadgets", "visibility": "private"})

    assert answer["has_wiki"] is False and answer["description"] == "Gadgets"
    repo = fake.repo(ORG, "widgets")
    assert (repo["has_wiki"], repo["has_projects"], repo["private"]) == (False, False, True)
    assert fake.calls[-1].body == {"has_wiki": False, "has_projects": False,
                                   "description": "Gadgets", "visibility": "private"}
    check_response(fake, "repos/update", 200, answer)
    check_response(fake, "repos/get", 200, await gh.getitem(f"/repos/{ORG}/widgets"))


async def test_a_misspelt_field_is_a_violation_answered_422(fake, gh):
    with pytest.raises(InvalidField) as error:
        await gh.patch(f"/repos/{ORG}/widgets", data={"has_wikki": False})

    assert error.value.status_code == 422
    assert '"has_wikki" is not a permitted key.' in str(error.value)
    assert fake.repo(ORG, "widgets")["has_wiki"] is True
    assert fake.take_violations() == [
        f'PATCH /repos/{ORG}/widgets: "has_wikki" is not a permitted key.']


async def test_wrong_types_unknown_query_parameters_and_endpoints_are_violations(fake, gh):
    with pytest.raises(InvalidField):
        await gh.patch(f"/repos/{ORG}/widgets", data={"has_issues": "yes"})
    with pytest.raises(BadRequest):
        await gh.getitem(f"/orgs/{ORG}/repos?per_pag=100")
    with pytest.raises(BadRequest) as missing:
        await gh.getitem(f"/repos/{ORG}/widgets/frobnicate")

    assert missing.value.status_code == 404
    found = fake.take_violations()
    assert len(found) == 3
    assert '"yes" is not a boolean' in found[0]
    assert "'per_pag' is not accepted" in found[1]
    assert "unknown endpoint" in found[2]


async def test_branch_and_contents_paths_may_hold_slashes(fake, gh):
    fake.add_branch(ORG, "widgets", "release/1.x")
    fake.put_file(ORG, "widgets", ".github/moko.yml", "version: 1\n")

    await gh.put(f"/repos/{ORG}/widgets/branches/release/1.x/protection", data=PROTECTION)
    branch = await gh.getitem(f"/repos/{ORG}/widgets/branches/release%2F1.x")
    item = await gh.getitem(f"/repos/{ORG}/widgets/contents/.github/moko.yml")

    assert fake.protection(ORG, "widgets", "release/1.x") == PROTECTION
    assert branch["name"] == "release/1.x" and branch["protected"] is True
    assert base64.b64decode(item["content"]).decode() == "version: 1\n"
    assert (item["type"], item["encoding"], item["path"]) == ("file", "base64", ".github/moko.yml")
    check_response(fake, "repos/get-content", 200, item)


# --- branch protection ---------------------------------------------------------------------


async def test_protection_is_read_back_in_githubs_read_shape(fake, gh):
    body = {
        "required_status_checks": {"strict": True, "contexts": ["ci/test"]},
        "enforce_admins": True,
        "required_pull_request_reviews": {"required_approving_review_count": 2,
                                          "dismiss_stale_reviews": True},
        "restrictions": {"users": ["alice"], "teams": ["core"], "apps": []},
        "allow_force_pushes": False,
    }
    url = f"{fake.url}/repos/{ORG}/widgets/branches/main/protection"

    written = await gh.put(f"/repos/{ORG}/widgets/branches/main/protection", data=body)
    read = await gh.getitem(f"/repos/{ORG}/widgets/branches/main/protection")

    assert written == read
    assert read["url"] == url
    assert read["enforce_admins"] == {"url": f"{url}/enforce_admins", "enabled": True}
    assert read["required_status_checks"] == {
        "url": f"{url}/required_status_checks", "strict": True, "contexts": ["ci/test"],
        "checks": [{"context": "ci/test", "app_id": None}],
        "contexts_url": f"{url}/required_status_checks/contexts",
    }
    assert read["required_pull_request_reviews"] == {
        "url": f"{url}/required_pull_request_reviews", "dismiss_stale_reviews": True,
        "require_code_owner_reviews": False, "required_approving_review_count": 2,
        "require_last_push_approval": False,
    }
    assert [u["login"] for u in read["restrictions"]["users"]] == ["alice"]
    assert [t["slug"] for t in read["restrictions"]["teams"]] == ["core"]
    assert read["restrictions"]["apps"] == []
    assert read["required_signatures"] == {"url": f"{url}/required_signatures", "enabled": False}
    for toggle in ("required_linear_history", "allow_force_pushes", "allow_deletions",
                   "block_creations", "required_conversation_resolution", "lock_branch",
                   "allow_fork_syncing"):
        assert read[toggle] == {"enabled": False}
    assert fake.protection(ORG, "widgets", "main") == body
    check_response(fake, "repos/get-branch-protection", 200, read)
    check_response(fake, "repos/update-branch-protection", 200, written)


async def test_null_sections_are_absent_from_the_read_shape(fake, gh):
    await gh.put(f"/repos/{ORG}/widgets/branches/main/protection", data=PROTECTION)

    read = await gh.getitem(f"/repos/{ORG}/widgets/branches/main/protection")

    assert "required_status_checks" not in read and "restrictions" not in read
    assert read["enforce_admins"]["enabled"] is False
    assert read["required_pull_request_reviews"]["required_approving_review_count"] == 1
    assert "dismissal_restrictions" not in read["required_pull_request_reviews"]


async def test_unprotected_missing_branch_and_delete(fake, gh):
    with pytest.raises(BadRequest) as unprotected:
        await gh.getitem(f"/repos/{ORG}/widgets/branches/main/protection")
    with pytest.raises(BadRequest) as no_branch:
        await gh.put(f"/repos/{ORG}/empty/branches/main/protection", data=PROTECTION)
    fake.set_protection(ORG, "widgets", "main", PROTECTION)
    await gh.delete(f"/repos/{ORG}/widgets/branches/main/protection")

    assert (unprotected.value.status_code, str(unprotected.value)) == (404, "Branch not protected")
    assert (no_branch.value.status_code, str(no_branch.value)) == (404, "Branch not found")
    assert fake.protection(ORG, "widgets", "main") is None
    assert fake.calls[-1].status == 204


@pytest.mark.parametrize(("drop", "inner"), [
    ("restrictions", None),
    ("enforce_admins", None),
    (None, "contexts"),
    (None, "strict"),
])
async def test_an_incomplete_protection_put_is_a_violation(fake, gh, drop, inner):
    body = {**PROTECTION, "required_status_checks": {"strict": True, "contexts": []}}
    if drop:
        del body[drop]
    else:
        del body["required_status_checks"][inner]

    with pytest.raises(InvalidField):
        await gh.put(f"/repos/{ORG}/widgets/branches/main/protection", data=body)

    [violation] = fake.take_violations()
    assert f'"{drop or inner}" wasn\'t supplied.' in violation
    assert fake.protection(ORG, "widgets", "main") is None


async def test_archived_repositories_are_read_only_until_unarchived(fake, gh):
    fake.add_repo(ORG, "old", archived=True)

    with pytest.raises(BadRequest) as refused:
        await gh.patch(f"/repos/{ORG}/old", data={"has_wiki": False})
    with pytest.raises(BadRequest):
        await gh.put(f"/repos/{ORG}/old/branches/main/protection", data=PROTECTION)
    await gh.patch(f"/repos/{ORG}/old", data={"archived": False})

    assert (refused.value.status_code, str(refused.value)) == (403, "Repository was archived so is read-only.")
    assert fake.repo(ORG, "old")["archived"] is False


async def test_a_wildcard_rule_protects_matching_branches_until_one_gets_its_own(fake, gh):
    for branch in ("release/1", "release/2", "release/a/b"):
        fake.add_branch(ORG, "widgets", branch)
    fake.add_protection_rule(ORG, "widgets", "release/*", {**PROTECTION, "enforce_admins": True})

    covered = await gh.getitem(f"/repos/{ORG}/widgets/branches/release/1/protection")
    with pytest.raises(BadRequest) as deeper:  # `*` does not cross "/"
        await gh.getitem(f"/repos/{ORG}/widgets/branches/release/a/b/protection")
    await gh.delete(f"/repos/{ORG}/widgets/branches/release/1/protection")  # no rule of its own
    still = await gh.getitem(f"/repos/{ORG}/widgets/branches/release/1/protection")
    await gh.put(f"/repos/{ORG}/widgets/branches/release/1/protection", data=PROTECTION)
    own = await gh.getitem(f"/repos/{ORG}/widgets/branches/release/1/protection")
    other = await gh.getitem(f"/repos/{ORG}/widgets/branches/release/2/protection")
    query = """query($owner: String!, $name: String!) { repository(owner: $owner, name: $name) {
      branchProtectionRules(first: 10) { nodes { pattern isAdminEnforced } }
      ref(qualifiedName: "refs/heads/release/2") { branchProtectionRule { pattern } } } }"""
    data = await gh.graphql(query, endpoint=fake.graphql_url, owner=ORG, name="widgets")

    assert covered["enforce_admins"]["enabled"] is True
    assert (deeper.value.status_code, str(deeper.value)) == (404, "Branch not protected")
    assert still["enforce_admins"]["enabled"] is True
    assert own["enforce_admins"]["enabled"] is False and other["enforce_admins"]["enabled"] is True
    assert fake.protection_rules(ORG, "widgets") == {
        "release/1": PROTECTION, "release/*": {**PROTECTION, "enforce_admins": True}}
    rules = data["repository"]["branchProtectionRules"]["nodes"]
    assert sorted((r["pattern"], r["isAdminEnforced"]) for r in rules) == [("release/*", True), ("release/1", False)]
    assert data["repository"]["ref"]["branchProtectionRule"] == {"pattern": "release/*"}


async def test_a_branch_protected_only_by_rulesets_is_not_protected_on_the_classic_endpoint(fake, gh):
    fake.add_branch(ORG, "widgets", "dev")
    rules = [{"type": "deletion"}, {"type": "pull_request", "parameters": {
        "required_approving_review_count": 2, "dismiss_stale_reviews_on_push": False,
        "require_code_owner_review": False, "require_last_push_approval": False,
        "required_review_thread_resolution": False}}]
    repo_set = fake.add_ruleset(ORG, "widgets", {
        "name": "main only", "target": "branch", "enforcement": "active", "rules": rules,
        "conditions": {"ref_name": {"include": ["~DEFAULT_BRANCH"], "exclude": []}}})
    org_set = fake.add_org_ruleset(ORG, {
        "name": "no force pushes", "target": "branch", "enforcement": "active",
        "rules": [{"type": "non_fast_forward"}],
        "conditions": {"repository_name": {"include": ["wid*"], "exclude": []},
                       "ref_name": {"include": ["refs/heads/*"], "exclude": ["refs/heads/dev"]}}})
    fake.add_ruleset(ORG, "widgets", {"name": "trial", "enforcement": "evaluate", "rules": [{"type": "creation"}],
                                      "conditions": {"ref_name": {"include": ["~ALL"], "exclude": []}}})

    with pytest.raises(BadRequest) as classic:
        await gh.getitem(f"/repos/{ORG}/widgets/branches/main/protection")
    on_main = await gh.getitem(f"/repos/{ORG}/widgets/rules/branches/main")
    on_dev = await gh.getitem(f"/repos/{ORG}/widgets/rules/branches/dev")
    on_future = await gh.getitem(f"/repos/{ORG}/widgets/rules/branches/not-yet")
    branch = await gh.getitem(f"/repos/{ORG}/widgets/branches/main")

    assert (classic.value.status_code, str(classic.value)) == (404, "Branch not protected")
    assert [(r["type"], r["ruleset_source_type"], r["ruleset_source"], r["ruleset_id"]) for r in on_main] == [
        ("non_fast_forward", "Organization", ORG, org_set["id"]),
        ("deletion", "Repository", f"{ORG}/widgets", repo_set["id"]),
        ("pull_request", "Repository", f"{ORG}/widgets", repo_set["id"]),
    ]
    assert on_dev == [] and [r["type"] for r in on_future] == ["non_fast_forward"]
    assert branch["protected"] is True
    check_response(fake, "repos/get-branch-rules", 200, on_main)


# --- auth -------------------------------------------------------------------------------------


async def test_app_endpoints_need_a_valid_app_jwt(fake, session):
    api = app_api(fake, session)

    app = await api.getitem("/app", jwt=app_jwt(fake))
    installations = await api.getitem("/app/installations", jwt=app_jwt(fake, iss=fake.app_id))
    failures = []
    for credentials in [
        {},
        {"oauth_token": fake.installation_token(INSTALLATION)},
        {"jwt": app_jwt(fake, exp=int(time.time()) - 10)},
        {"jwt": app_jwt(fake, iss="1")},
        {"jwt": app_jwt(fake, exp=int(time.time()) + 3600)},
    ]:
        with pytest.raises(BadRequest) as error:
            await api.getitem("/app", **credentials)
        failures.append(error.value.status_code)

    assert (app["id"], app["slug"]) == (fake.app_id, "moko")
    assert [i["id"] for i in installations] == [INSTALLATION]
    assert failures == [401] * 5
    check_response(fake, "apps/get-authenticated", 200, app)


async def test_access_tokens_are_issued_counted_and_scoped(fake, session):
    api = app_api(fake, session)
    fake.token_lifetime = 120

    answer = await get_installation_access_token(
        api, installation_id=str(INSTALLATION), app_id=str(fake.app_id),
        private_key=fake.private_key_pem)
    client = GitHubAPI(session, "moko-tests", base_url=fake.url, oauth_token=answer["token"])
    repo = await client.getitem(f"/repos/{ORG}/widgets")

    assert fake.tokens_issued == 1 and fake.calls[0].status == 201
    assert answer["token"].startswith("ghs_") and answer["repository_selection"] == "all"
    expires = time.mktime(time.strptime(answer["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert 100 < expires - time.time() <= 121
    assert repo["full_name"] == f"{ORG}/widgets"
    check_response(fake, "apps/create-installation-access-token", 201, answer)

    fake.add_installation(8, "other-org")
    fake.add_repo("other-org", "private-things")
    with pytest.raises(BadRequest) as hidden:
        await client.getitem("/repos/other-org/private-things")
    fake.expire_tokens()
    with pytest.raises(BadRequest) as expired:
        await client.getitem(f"/repos/{ORG}/widgets")
    with pytest.raises(BadRequest) as anonymous:
        await app_api(fake, session).getitem(f"/repos/{ORG}/widgets")

    assert hidden.value.status_code == 404  # GitHub hides what a token may not see
    assert (expired.value.status_code, str(expired.value)) == (401, "Bad credentials")
    assert (anonymous.value.status_code, str(anonymous.value)) == (401, "Requires authentication")


async def test_personal_tokens_work_once_registered(fake, session):
    fake.add_personal_token("ghp_cli", "octocat")
    client = GitHubAPI(session, "moko-tests", base_url=fake.url, oauth_token="ghp_cli")

    repo = await client.getitem(f"/repos/{ORG}/widgets")

    assert repo["name"] == "widgets"
    assert fake.calls[-1].installation_id is None


# --- pagination, ETags, rate limits ------------------------------------------------------


async def test_lists_paginate_with_link_headers_for_getiter(fake, gh, session):
    for number in range(1, 75):
        fake.add_repo(ORG, f"repo-{number:03}")
    for number in range(20):
        fake.add_installation(100 + number, f"org-{number}")

    listed = [r["name"] async for r in gh.getiter("/installation/repositories?per_page=30",
                                                  iterable_key="repositories")]
    by_name = [r["name"] async for r in gh.getiter(f"/orgs/{ORG}/repos?sort=full_name&per_page=50")]
    installations = [i["id"] async for i in app_api(fake, session).getiter(
        "/app/installations?per_page=7", jwt=app_jwt(fake))]

    assert len(listed) == 76 and listed[:2] == ["widgets", "empty"]
    assert fake.count("GET", r"^/installation/repositories$") == 3
    assert by_name == sorted(by_name, key=str.lower) and len(by_name) == 76
    assert len(installations) == 21
    first = fake.calls_to("GET", r"^/installation/repositories$")[0]
    assert first.response_headers["link"] == (
        f'<{fake.url}/installation/repositories?per_page=30&page=2>; rel="next", '
        f'<{fake.url}/installation/repositories?per_page=30&page=3>; rel="last"')


async def test_etag_round_trip_answers_304_without_spending_budget(fake, gh, session):
    token = gh.oauth_token
    headers = {"Authorization": f"token {token}"}
    url = f"{fake.url}/repos/{ORG}/widgets"

    async with session.get(url, headers=headers) as first:
        etag = first.headers["ETag"]
        remaining = int(first.headers["x-ratelimit-remaining"])
    async with session.get(url, headers={**headers, "If-None-Match": etag}) as second:
        assert second.status == 304 and await second.read() == b""
        assert int(second.headers["x-ratelimit-remaining"]) == remaining
    fake.repo(ORG, "widgets")["has_wiki"] = False
    async with session.get(url, headers={**headers, "If-None-Match": etag}) as third:
        assert third.status == 200 and third.headers["ETag"] != etag
        assert int(third.headers["x-ratelimit-remaining"]) == remaining - 1
    assert etag.startswith('W/"')
    assert first.headers["x-ratelimit-resource"] == "core"
    assert int(first.headers["x-ratelimit-used"]) + remaining == 5000


async def test_gidgethub_cache_gets_304s(fake, session):
    cache: dict[str, Any] = {}
    client = GitHubAPI(session, "moko-tests", base_url=fake.url, cache=cache,
                       oauth_token=fake.installation_token(INSTALLATION))

    await client.getitem(f"/repos/{ORG}/widgets")
    again = await client.getitem(f"/repos/{ORG}/widgets")

    assert again["name"] == "widgets"
    assert [c.status for c in fake.calls] == [200, 304]


async def test_exhausted_budget_answers_403_until_the_reset(fake, gh):
    fake.set_rate_limit(INSTALLATION, remaining=1, reset_in=600)

    await gh.getitem(f"/repos/{ORG}/widgets")
    with pytest.raises(BadRequest) as limited:
        await gh.getitem(f"/repos/{ORG}/widgets")
    limits = await gh.getitem("/rate_limit")

    assert limited.value.status_code == 403
    assert str(limited.value) == f"API rate limit exceeded for installation ID {INSTALLATION}."
    assert limits["resources"]["core"]["remaining"] == 0
    assert gh.rate_limit.remaining == 0
    fake.set_rate_limit(INSTALLATION, reset_in=-1)
    assert (await gh.getitem(f"/repos/{ORG}/widgets"))["name"] == "widgets"
    assert fake.rate_limit(INSTALLATION)["remaining"] == 4999


# --- fault injection --------------------------------------------------------------------------


async def test_injected_502s_then_success(fake, gh):
    fake.fail("GET", rf"^/repos/{ORG}/widgets$", 502, times=2)
    statuses = []
    for _ in range(3):
        try:
            await gh.getitem(f"/repos/{ORG}/widgets")
            statuses.append(200)
        except GitHubBroken as error:
            statuses.append(error.status_code)

    assert statuses == [502, 502, 200]
    assert [c.status for c in fake.calls] == [502, 502, 200]


async def test_injected_secondary_limit_carries_headers_and_body(fake, gh):
    fake.fail("PATCH", rf"^/repos/{ORG}/widgets$", 403, headers={"retry-after": "1"},
              body={"message": "You have exceeded a secondary rate limit. Please wait."})

    with pytest.raises(BadRequest) as error:
        await gh.patch(f"/repos/{ORG}/widgets", data={"has_wiki": False})

    assert error.value.status_code == 403
    assert error.value.headers["retry-after"] == "1"
    assert "secondary rate limit" in str(error.value)
    assert fake.repo(ORG, "widgets")["has_wiki"] is True


async def test_a_reset_connection_reaches_the_client(fake, gh):
    fake.fail("GET", rf"^/repos/{ORG}/widgets$", reset_connection=True)

    with pytest.raises(aiohttp.ClientConnectionError):
        await gh.getitem(f"/repos/{ORG}/widgets")
    again = await gh.getitem(f"/repos/{ORG}/widgets")

    assert again["name"] == "widgets"
    assert [c.status for c in fake.calls] == [0, 0, 200]  # aiohttp resent the GET once


async def test_a_delayed_answer_times_out(fake, session):
    fake.fail("GET", rf"^/repos/{ORG}/widgets$", delay=1.0)
    headers = {"Authorization": f"token {fake.installation_token(INSTALLATION)}"}
    url = f"{fake.url}/repos/{ORG}/widgets"

    with pytest.raises(asyncio.TimeoutError):
        async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=0.1)):
            pass
    async with session.get(url, headers=headers) as answer:
        assert answer.status == 200


async def test_on_request_sees_every_call_before_the_answer(fake, gh):
    seen: list[str] = []
    fake.on_request(lambda call: seen.append(f"{call.method} {call.path} {call.status}"))

    await gh.getitem(f"/repos/{ORG}/widgets")

    assert seen == [f"GET /repos/{ORG}/widgets 200"]
    fake.reset_calls()
    assert fake.calls == [] and fake.count() == 0


# --- contents, permissions, comments, reactions ------------------------------------------------


async def test_contents_api(fake, gh):
    fake.put_file(ORG, "widgets", "README.md", "# Widgets\n")

    raw = await gh.getitem(f"/repos/{ORG}/widgets/contents/README.md",
                           accept="application/vnd.github.raw")
    with pytest.raises(BadRequest) as absent:
        await gh.getitem(f"/repos/{ORG}/widgets/contents/.github/moko.yml")
    with pytest.raises(BadRequest) as empty:
        await gh.getitem(f"/repos/{ORG}/empty/contents/README.md")
    with pytest.raises(BadRequest) as bad_ref:
        await gh.getitem(f"/repos/{ORG}/widgets/contents/README.md?ref=nope")

    assert raw == b"# Widgets\n" or raw == "# Widgets\n"
    assert (absent.value.status_code, str(absent.value)) == (404, "Not Found")
    assert (empty.value.status_code, str(empty.value)) == (404, "This repository is empty.")
    assert bad_ref.value.status_code == 404


async def test_contents_over_one_megabyte_come_without_content_except_raw(fake, gh):
    big = b"# " + b"x" * (1024 * 1024)
    fake.put_file(ORG, "widgets", "big.yml", big)
    fake.put_file(ORG, "widgets", "small.yml", b"a: 1\n")

    item = await gh.getitem(f"/repos/{ORG}/widgets/contents/big.yml")
    small = await gh.getitem(f"/repos/{ORG}/widgets/contents/small.yml")
    raw = await gh.getitem(f"/repos/{ORG}/widgets/contents/big.yml", accept="application/vnd.github.raw")

    assert (item["encoding"], item["content"], item["size"]) == ("none", "", len(big))
    assert (small["encoding"], base64.b64decode(small["content"])) == ("base64", b"a: 1\n")
    assert raw in (big, big.decode())


async def test_graphql_cuts_a_blobs_text_after_512000_bytes_and_says_so(fake, gh):
    big = ("é" * 300_000).encode()  # 600,000 bytes: the cut falls inside a character
    fake.put_file(ORG, "widgets", "big.yml", big)
    fake.put_file(ORG, "widgets", "small.yml", b"a: 1\n")
    query = ('query($owner: String!) { repository(owner: $owner, name: "widgets") { '
             'big: object(expression: "HEAD:big.yml") { ... on Blob { text byteSize isTruncated isBinary } } '
             'small: object(expression: "HEAD:small.yml") { ... on Blob { text byteSize isTruncated } } } }')
    data = (await gh.graphql(query, endpoint=fake.graphql_url, owner=ORG))["repository"]
    assert (data["big"]["byteSize"], data["big"]["isTruncated"], data["big"]["isBinary"]) == (600_000, True, False)
    assert data["big"]["text"] == "é" * 256_000
    assert data["small"] == {"text": "a: 1\n", "byteSize": 5, "isTruncated": False}


@pytest.mark.parametrize(("role", "permission"), [
    ("admin", "admin"), ("maintain", "write"), ("write", "write"),
    ("triage", "read"), ("read", "read"), ("none", "none"),
])
async def test_collaborator_permission_maps_roles_like_github(fake, gh, role, permission):
    fake.set_permission(ORG, "widgets", "Alice", role)

    answer = await gh.getitem(f"/repos/{ORG}/widgets/collaborators/alice/permission")

    assert (answer["permission"], answer["role_name"]) == (permission, role)
    assert answer["user"]["login"] == "Alice"
    check_response(fake, "repos/get-collaborator-permission-level", 200, answer)


async def test_custom_roles_answer_their_name_and_their_base_role_legacy_permission(fake, gh, session):
    fake.set_permission(ORG, "widgets", "rel", "release-manager", base_role="maintain")
    fake.set_permission(ORG, "widgets", "tri", "bug-sorter", base_role="triage")

    rel = await gh.getitem(f"/repos/{ORG}/widgets/collaborators/rel/permission")
    tri = await gh.getitem(f"/repos/{ORG}/widgets/collaborators/tri/permission")
    with pytest.raises(BadRequest) as refused:
        await gh.getitem(f"/orgs/{ORG}/custom-repository-roles")
    fake.add_installation(8, "globex", permissions={"organization_custom_roles": "read"})
    fake.add_repo("globex", "gadgets")
    fake.set_permission("globex", "gadgets", "rel", "release-manager", base_role="write")
    allowed = GitHubAPI(session, "moko-tests", base_url=fake.url, oauth_token=fake.installation_token(8))
    listed = await allowed.getitem("/orgs/globex/custom-repository-roles")

    assert (rel["role_name"], rel["permission"], rel["user"]["permissions"]["maintain"]) == (
        "release-manager", "write", True)
    assert (tri["role_name"], tri["permission"], tri["user"]["permissions"]["push"]) == ("bug-sorter", "read", False)
    assert (refused.value.status_code, str(refused.value)) == (403, "Resource not accessible by integration")
    assert [(r["name"], r["base_role"]) for r in listed["custom_roles"]] == [("release-manager", "write")]
    assert listed["total_count"] == 1
    check_response(fake, "orgs/list-custom-roles", 200, listed)
    with pytest.raises(ValueError):
        fake.set_permission(ORG, "widgets", "bob", "release-manager", base_role="read")


async def test_comments_and_reactions(fake, gh):
    human = fake.add_comment(ORG, "widgets", 5, "/moko status", user="alice")

    first = await gh.post(f"/repos/{ORG}/widgets/issues/comments/{human['id']}/reactions",
                          data={"content": "eyes"})
    repeat = await gh.post(f"/repos/{ORG}/widgets/issues/comments/{human['id']}/reactions",
                           data={"content": "eyes"})
    reply = await gh.post(f"/repos/{ORG}/widgets/issues/5/comments", data={"body": "All good."})
    listed = [c["body"] async for c in gh.getiter(f"/repos/{ORG}/widgets/issues/5/comments")]
    await gh.delete(f"/repos/{ORG}/widgets/issues/comments/{human['id']}/reactions/{first['id']}")

    assert [c.status for c in fake.calls_to("POST", r"/reactions$")] == [201, 200]
    assert repeat["id"] == first["id"] and first["content"] == "eyes"
    assert reply["user"] == {**reply["user"], "login": "moko[bot]", "type": "Bot"}
    assert reply["html_url"].endswith(f"#issuecomment-{reply['id']}")
    assert listed == ["/moko status", "All good."]
    assert [c["body"] for c in fake.comments(ORG, "widgets", 5)] == listed
    assert fake.reactions(human["id"]) == []
    check_response(fake, "issues/create-comment", 201, reply)
    check_response(fake, "reactions/create-for-issue-comment", 201, first)


# --- GraphQL ------------------------------------------------------------------------------

REPOSITORIES = """
query($org: String!, $after: String) {
  organization(login: $org) {
    repositories(first: 40, after: $after, isArchived: false, orderBy: {field: NAME, direction: ASC}) {
      totalCount
      pageInfo { hasNextPage endCursor }
      nodes { ...settings }
    }
  }
  rateLimit { cost remaining limit resetAt }
}
fragment settings on Repository {
  name nameWithOwner databaseId id isArchived isEmpty isPrivate visibility
  hasIssuesEnabled hasWikiEnabled hasProjectsEnabled hasDiscussionsEnabled
  deleteBranchOnMerge mergeCommitAllowed squashMergeAllowed rebaseMergeAllowed
  allowUpdateBranch autoMergeAllowed description homepageUrl
  defaultBranchRef { name }
  branchProtectionRules(first: 10) {
    nodes {
      pattern requiresApprovingReviews requiredApprovingReviewCount dismissesStaleReviews
      requiresCodeOwnerReviews requiresStatusChecks requiresStrictStatusChecks
      requiredStatusCheckContexts isAdminEnforced restrictsPushes
    }
  }
}
"""


async def test_graphql_pages_through_an_organizations_repositories(fake, gh):
    for number in range(1, 75):
        fake.add_repo(ORG, f"repo-{number:03}", archived=number % 10 == 0)
    fake.set_protection(ORG, "widgets", "main", PROTECTION)

    names: list[str] = []
    after = None
    while True:
        data = await gh.graphql(REPOSITORIES, endpoint=fake.graphql_url, org=ORG, after=after)
        page = data["organization"]["repositories"]
        names += [node["name"] for node in page["nodes"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]

    assert page["totalCount"] == 76 - 7
    assert names == sorted(names) and len(names) == 69
    assert fake.count("POST", "^/graphql$") == 2
    assert data["rateLimit"]["cost"] == 1 and data["rateLimit"]["limit"] == 5000
    widgets = next(n for n in page["nodes"] if n["name"] == "widgets")
    assert widgets["defaultBranchRef"] == {"name": "main"}
    assert widgets["visibility"] == "PUBLIC" and widgets["hasWikiEnabled"] is True
    assert widgets["branchProtectionRules"]["nodes"] == [{
        "pattern": "main", "requiresApprovingReviews": True, "requiredApprovingReviewCount": 1,
        "dismissesStaleReviews": False, "requiresCodeOwnerReviews": False,
        "requiresStatusChecks": False, "requiresStrictStatusChecks": False,
        "requiredStatusCheckContexts": [], "isAdminEnforced": False, "restrictsPushes": False,
    }]
    assert fake.calls[-1].graphql_query == REPOSITORIES


async def test_graphql_aliases_and_not_found(fake, gh):
    fake.put_file(ORG, "widgets", ".github/moko.yml", "version: 1\n")
    query = """query {
      r0: repository(owner: "acme", name: "widgets") { name isEmpty
        object(expression: "HEAD:.github/moko.yml") { ... on Blob { text } } }
      r1: repository(owner: "acme", name: "empty") { name isEmpty defaultBranchRef { name } }
      r2: repository(owner: "acme", name: "missing") { name }
    }"""

    with pytest.raises(GraphQLException) as error:
        await gh.graphql(query, endpoint=fake.graphql_url)

    body = error.value.response
    assert body["data"]["r0"] == {"name": "widgets", "isEmpty": False,
                                  "object": {"text": "version: 1\n"}}
    assert body["data"]["r1"] == {"name": "empty", "isEmpty": True, "defaultBranchRef": None}
    assert body["data"]["r2"] is None
    [not_found] = body["errors"]
    assert not_found["type"] == "NOT_FOUND" and not_found["path"] == ["r2"]
    assert fake.violations == []


@pytest.mark.parametrize(("query", "message"), [
    ('{ organization(login: "acme") { bogus } }', "Field 'bogus' doesn't exist on type 'Organization'"),
    ('{ organization(login: "acme") { repositories { totalCount } } }',
     "You must provide a `first` or `last` value"),
    ('{ organization(login: "acme") { repositories(first: 101) { totalCount } } }',
     "exceeds the `first` limit of 100 records"),
    ('{ organization(login: "acme") { ', "Syntax Error"),
])
async def test_invalid_graphql_is_rejected_like_github(fake, gh, query, message):
    with pytest.raises(QueryError) as error:
        await gh.graphql(query, endpoint=fake.graphql_url)

    assert message in str(error.value)
    assert fake.calls[-1].status == 200
    [violation] = fake.take_violations()
    assert message in violation


async def test_graphql_needs_an_installation_or_personal_token(fake, session):
    async with session.post(fake.graphql_url, json={"query": "{ rateLimit { cost } }"}) as answer:
        assert answer.status == 401


# --- violations fail the test -----------------------------------------------------------------


async def test_the_fixture_fails_a_test_that_left_violations(fake, gh):
    with pytest.raises(InvalidField):
        await gh.patch(f"/repos/{ORG}/widgets", data={"has_wikki": True})

    with pytest.raises(pytest.fail.Exception, match="has_wikki"):
        assert_no_violations(fake)
    fake.take_violations()
    assert_no_violations(fake)


# --- webhooks -----------------------------------------------------------------------------------

WEBHOOKS = json.loads((FIXTURES / "github-webhooks-subset.json").read_text())


def webhook_errors(key: str, payload: dict[str, Any]) -> list[str]:
    operation = WEBHOOKS["webhooks"][key]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**schema, "components": WEBHOOKS["components"]})
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(payload)]


@pytest.mark.parametrize(("event", "action", "key", "options"), [
    ("repository", "created", "repository-created", {}),
    ("repository", "edited", "repository-edited",
     {"changes": {"default_branch": {"from": "master"}}}),
    ("repository", "edited", "repository-edited", {"changes": {"topics": {"from": ["old"]}}}),
    ("repository", "unarchived", "repository-unarchived", {}),
    ("repository", "privatized", "repository-privatized", {}),
    ("repository", "publicized", "repository-publicized", {}),
    ("repository", "renamed", "repository-renamed", {}),
    ("repository", "transferred", "repository-transferred", {}),
    ("branch_protection_rule", "created", "branch-protection-rule-created",
     {"protection": PROTECTION}),
    ("branch_protection_rule", "edited", "branch-protection-rule-edited",
     {"protection": PROTECTION, "sender": "moko[bot]"}),
    ("branch_protection_rule", "deleted", "branch-protection-rule-deleted", {}),
    ("create", None, "create", {"ref": "main"}),
    ("installation", "created", "installation-created", {}),
    ("installation_repositories", "added", "installation-repositories-added",
     {"repositories_added": ["one", "two"]}),
    ("issue_comment", "created", "issue-comment-created", {"body": "/moko apply", "user": "alice"}),
    ("push", None, "push", {"repo": ".github", "modified": [".github/moko.yml"]}),
    ("ping", None, "ping", {}),
])
def test_built_events_fit_githubs_webhook_schemas(event, action, key, options):
    payload = build_event(event, action, **options)

    assert webhook_errors(key, payload) == []
    if event != "ping":
        assert payload["installation"]["id"] == 1
    if event == "issue_comment":
        assert payload["comment"]["body"] == "/moko apply"
        assert payload["comment"]["user"]["login"] == "alice"
    if event == "push":
        assert payload["repository"]["name"] == ".github"
        assert payload["head_commit"]["modified"] == [".github/moko.yml"]
    if options.get("sender") == "moko[bot]":
        assert payload["sender"]["type"] == "Bot"


WEBHOOKS_EXTRA = json.loads((FIXTURES / "github-webhooks-extra.json").read_text())


def extra_webhook_errors(key: str, payload: dict[str, Any]) -> list[str]:
    """Errors of a payload against an event of github-webhooks-extra.json (OpenAPI 3.0
    schemas, made JSON Schema; objects stay open, as GitHub adds fields)."""
    schema = WEBHOOKS_EXTRA["webhooks"][key]["post"]["requestBody"]["content"]["application/json"]["schema"]
    components = {kind: {name: to_json_schema(item, strict=False) for name, item in items.items()}
                  for kind, items in WEBHOOKS_EXTRA["components"].items()}
    validator = Draft7Validator({**to_json_schema(schema, strict=False), "components": components})
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(payload)]


def test_pull_requests_from_the_fakes_state(fake):
    fake.add_repo(ORG, ".github")
    fake.put_file(ORG, ".github", ".github/moko.yml", "version: 1\n")
    own = fake.add_pull_request(ORG, ".github", {".github/moko.yml": "version: 1\nmode: dry-run\n"})
    fork = fake.add_pull_request(ORG, ".github", {".github/moko.yml": None}, user="mallory", fork=True)

    opened = fake.event("pull_request", "opened", owner=ORG, repo=".github", number=fork["number"])
    assert webhook_errors("pull-request-opened", opened) == []
    assert opened["pull_request"]["head"]["repo"]["full_name"] == "mallory/.github"
    assert opened["pull_request"]["head"]["repo"]["fork"] is True
    assert opened["pull_request"]["base"]["repo"]["full_name"] == f"{ORG}/.github"
    assert (own["number"], fork["number"]) == (1, 2)
    # A pull request is an issue too, so that comments can be written on it.
    assert "pull_request" in fake.issues(ORG, ".github")[0]
    reopened = fake.event("pull_request", "reopened", owner=ORG, repo=".github", number=own["number"])
    assert extra_webhook_errors("pull-request-reopened", reopened) == []
    first_head = own["head"]["sha"]
    fake.push_to_pull_request(ORG, ".github", own["number"], {".github/moko.yml": "version: 1\n"})
    synchronize = fake.event("pull_request", "synchronize", owner=ORG, repo=".github", number=own["number"])
    assert extra_webhook_errors("pull-request-synchronize", synchronize) == []
    assert synchronize["after"] == synchronize["pull_request"]["head"]["sha"] != first_head


async def test_pull_request_files_and_head_commits_as_github_serves_them(fake, gh):
    fake.add_repo(ORG, ".github")
    fake.put_file(ORG, ".github", ".github/moko.yml", "version: 1\n")
    pull = fake.add_pull_request(ORG, ".github", {".github/moko.yml": "version: 1\nmode: dry-run\n",
                                                  "gone.txt": None}, user="mallory", fork=True)
    files = await gh.getitem(f"/repos/{ORG}/.github/pulls/{pull['number']}/files")
    assert [(f["filename"], f["status"]) for f in files] == [(".github/moko.yml", "modified"), ("gone.txt", "removed")]
    assert (await gh.getitem(f"/repos/{ORG}/.github/pulls/{pull['number']}"))["head"]["sha"] == pull["head"]["sha"]
    # The base repository serves the fork's head commit by its SHA.
    head = await gh.getitem(f"/repos/{ORG}/.github/contents/.github/moko.yml?ref={pull['head']['sha']}")
    assert decode_content(head) == "version: 1\nmode: dry-run\n"
    assert decode_content(await gh.getitem(f"/repos/{ORG}/.github/contents/.github/moko.yml")) == "version: 1\n"


def test_events_from_the_fakes_state(fake):
    fake.repo(ORG, "widgets")["has_wiki"] = False

    created = fake.event("repository", "created", owner=ORG, repo="widgets")
    command = fake.event("issue_comment", "created", owner=ORG, repo="widgets",
                         body="/moko plan", user="alice", issue_number=3)

    assert created["repository"]["has_wiki"] is False
    assert created["installation"]["id"] == INSTALLATION
    assert webhook_errors("repository-created", created) == []
    assert webhook_errors("issue-comment-created", command) == []
    assert fake.comments(ORG, "widgets", 3)[0]["id"] == command["comment"]["id"]


def test_examples_signatures_and_headers():
    body = b"Hello, World!"
    # GitHub's documented test vector for X-Hub-Signature-256.
    assert sign(body, "It's a Secret to Everybody") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
    headers = webhook_headers("push", "d-1", body, "It's a Secret to Everybody")
    documented = json.loads((FIXTURES / "webhook-examples" / "headers.json").read_text())
    assert {h.lower() for h in documented["headers"]} <= {h.lower() for h in headers}
    assert headers["X-GitHub-Event"] == "push" and headers["X-GitHub-Delivery"] == "d-1"
    assert headers["X-Hub-Signature"].startswith("sha1=")
    assert headers["User-Agent"].startswith("GitHub-Hookshot/")
    assert load_example("push")["ref"] == "refs/heads/master"
    assert load_example("repository.created")["action"] == "created"


def test_openapi_nullable_and_closed_objects():
    converted = to_json_schema({"type": "object", "nullable": True,
                                "properties": {"a": {"type": "string", "nullable": True,
                                                     "example": "x", "x-foo": 1}}})

    assert converted == {"type": ["object", "null"], "additionalProperties": False,
                         "properties": {"a": {"type": ["string", "null"]}}}


async def test_enterprise_server_paths_checks_issues_and_rulesets(fake, session):
    token = fake.installation_token(INSTALLATION)
    ghes = GitHubAPI(session, "moko-tests", base_url=f"{fake.url}/api/v3", oauth_token=token)
    ruleset = {"name": "default", "enforcement": "active", "target": "branch",
               "conditions": {"ref_name": {"include": ["~DEFAULT_BRANCH"], "exclude": []}},
               "rules": [{"type": "deletion"}, {"type": "non_fast_forward"}]}

    repo = await ghes.getitem(f"/repos/{ORG}/widgets")
    created = await ghes.post(f"/repos/{ORG}/widgets/rulesets", data=ruleset)
    await ghes.put(f"/repos/{ORG}/widgets/rulesets/{created['id']}",
                   data={**ruleset, "enforcement": "evaluate"})
    run = await ghes.post(f"/repos/{ORG}/widgets/check-runs",
                          data={"name": "moko", "head_sha": "a" * 40, "status": "completed",
                                "conclusion": "success",
                                "output": {"title": "Compliant", "summary": "All good."}})
    issue = await ghes.post(f"/repos/{ORG}/widgets/issues", data={"title": "Drift"})
    data = await ghes.graphql("{ rateLimit { cost } }", endpoint=f"{fake.url}/api/graphql")

    assert repo["name"] == "widgets" and data == {"rateLimit": {"cost": 1}}
    assert [r["enforcement"] for r in fake.rulesets(ORG, "widgets")] == ["evaluate"]
    assert fake.check_runs(ORG, "widgets")[0]["id"] == run["id"]
    assert issue["number"] == 1 and issue["user"]["login"] == "moko[bot]"
    assert [c.path for c in fake.calls][:2] == [f"/repos/{ORG}/widgets",
                                               f"/repos/{ORG}/widgets/rulesets"]
    check_response(fake, "repos/create-repo-ruleset", 201, created)
    check_response(fake, "checks/create", 201, run)
    check_response(fake, "issues/create", 201, issue)


@pytest.mark.parametrize("changes", [{"has_wiki": {"from": False}}, {"allow_forking": {"from": True}}, {}])
def test_repository_edited_is_built_only_for_what_github_sends_it_for(changes):
    with pytest.raises(ValueError, match="sends no webhook"):
        build_event("repository", "edited", changes=changes)


def test_webhook_repositories_carry_no_merge_settings_as_in_githubs_own_examples(fake):
    payload = fake.event("repository", "created", owner=ORG, repo="widgets")
    example = load_example("repository.created")["repository"]
    assert not {"allow_squash_merge", "delete_branch_on_merge", "security_and_analysis"} & (set(payload["repository"]) | set(example))
    assert payload["repository"]["has_wiki"] is True


# --- the App's webhook deliveries ------------------------------------------------------------


async def test_deliveries_are_listed_newest_first_by_cursor_and_redelivered_with_the_same_guid(fake, session):
    received: list[tuple[str, bytes, str]] = []

    async def receive(request: aiohttp.web.Request) -> aiohttp.web.Response:
        body = await request.read()
        received.append((request.headers["X-GitHub-Delivery"], body, request.headers["X-Hub-Signature-256"]))
        return aiohttp.web.json_response({"status": "queued"}, status=202)

    app = aiohttp.web.Application()
    app.router.add_post("/api/github/webhooks", receive)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        # Nothing listens yet: GitHub records that it failed to connect.
        fake.hook_config["url"] = "http://127.0.0.1:9/api/github/webhooks"
        payload = fake.event("repository", "edited", owner=ORG, repo="widgets",
                             changes={"description": {"from": None}})
        lost = await fake.deliver("repository", payload)
        fake.hook_config["url"] = f"http://127.0.0.1:{port}/api/github/webhooks"
        for _ in range(4):
            await fake.deliver("ping", load_example("ping"))
        api = app_api(fake, session)
        token = app_jwt(fake)
        pages = 0

        async def counting(call) -> None:
            nonlocal pages
            if call.path == "/app/hook/deliveries":
                pages += 1

        fake.on_request(counting)
        items = [item async for item in api.getiter("/app/hook/deliveries?per_page=2", jwt=token)]
        assert pages == 3 and [i["id"] for i in items] == sorted((i["id"] for i in items), reverse=True)
        assert [(i["status"], i["status_code"]) for i in items] == [("OK", 202)] * 4 + [
            ("failed to connect to host", 0)]
        assert items[-1]["guid"] == lost.guid and items[-1]["redelivery"] is False
        assert items[-1]["installation_id"] == INSTALLATION and items[-1]["action"] == "edited"
        check_response(fake, "apps/list-webhook-deliveries", 200, items)
        # The next pages are asked for by the cursor GitHub's Link header named.
        cursors = [c.query.get("cursor") for c in fake.calls_to("GET", "^/app/hook/deliveries$")]
        assert cursors[0] is None and all(c.startswith("v1_") for c in cursors[1:])

        answer = await api.post(f"/app/hook/deliveries/{lost.id}/attempts", data=b"", jwt=token)
        await fake.redeliveries_settled()
        check_response(fake, "apps/redeliver-webhook-delivery", 202, answer)
        guid, body, signature = received[-1]
        assert guid == lost.guid and body == lost.body and signature == sign(body, fake.hook_config["secret"])
        again = fake.hook_deliveries.records[-1]
        assert (again.guid, again.redelivery, again.status, again.id > lost.id) == (lost.guid, True, "OK", True)
        with pytest.raises(BadRequest) as missing:
            await api.post("/app/hook/deliveries/1/attempts", data=b"", jwt=token)
        assert missing.value.status_code == 404
        with pytest.raises(BadRequest) as unsigned:
            await api.post(f"/app/hook/deliveries/{lost.id}/attempts", data=b"",
                           oauth_token=fake.installation_token(INSTALLATION))
        assert unsigned.value.status_code == 401
    finally:
        await runner.cleanup()


RULESET_BODY = {"name": "protect-default", "target": "branch", "enforcement": "active",
                "conditions": {"ref_name": {"include": ["~DEFAULT_BRANCH"], "exclude": []}},
                "rules": [{"type": "deletion"}]}


async def test_rulesets_are_listed_as_summaries_and_read_whole_by_id(fake, gh):
    made = await gh.post(f"/repos/{ORG}/widgets/rulesets", data=RULESET_BODY)
    fake.add_org_ruleset(ORG, {**RULESET_BODY, "name": "org-wide", "conditions": {
        "ref_name": {"include": ["~ALL"], "exclude": []},
        "repository_name": {"include": ["~ALL"], "exclude": []}}})
    listed = [item async for item in gh.getiter(f"/repos/{ORG}/widgets/rulesets")]
    # As GitHub's own example: no rules, conditions or bypass actors in the list, and the
    # organization's rulesets too unless includes_parents=false.
    assert {item["name"]: item["source_type"] for item in listed} == {
        "org-wide": "Organization", "protect-default": "Repository"}
    assert not any("rules" in item or "conditions" in item for item in listed)
    own = [item async for item in gh.getiter(f"/repos/{ORG}/widgets/rulesets?includes_parents=false")]
    assert [item["name"] for item in own] == ["protect-default"]
    whole = await gh.getitem(f"/repos/{ORG}/widgets/rulesets/{made['id']}")
    assert whole["rules"] == RULESET_BODY["rules"] and whole["conditions"] == RULESET_BODY["conditions"]
    # A misspelt key in a body is refused, as the schema lists every key.
    with pytest.raises(BadRequest):
        await gh.put(f"/repos/{ORG}/widgets/rulesets/{made['id']}", data={"enforcment": "active"})
    fake.take_violations()


@pytest.mark.parametrize(("action", "key"), [
    ("created", "repository-ruleset-created"), ("edited", "repository-ruleset-edited"),
    ("deleted", "repository-ruleset-deleted"),
])
def test_repository_ruleset_events_fit_githubs_schemas(fake, action, key):
    ruleset = fake.add_ruleset(ORG, "widgets", RULESET_BODY)
    payload = fake.event("repository_ruleset", action, owner=ORG, repo="widgets", ruleset=ruleset)
    errors = (extra_webhook_errors(key, payload) if key in WEBHOOKS_EXTRA["webhooks"]
              else webhook_errors(key, payload))
    assert errors == []
    assert payload["repository_ruleset"]["id"] == ruleset["id"]
    assert payload["repository"]["full_name"] == f"{ORG}/widgets"


# --- branches: refs, comparisons, pull requests by head, deleting a ref -------------------


async def test_refs_compare_and_associated_pull_requests_answer_as_githubs(fake, gh):
    fake.push(ORG, "widgets", "main", committed="2026-01-02T03:04:05Z")
    fake.add_branch(ORG, "widgets", "merged/one", committed="2026-02-01T00:00:00Z")
    fake.merge_branch(ORG, "widgets", "merged/one")
    ahead = fake.add_branch(ORG, "widgets", "ahead")
    fake.add_branch(ORG, "widgets", "same", commits=0)
    fake.add_branch_pull_request(ORG, "widgets", "ahead", state="merged")
    fake.add_branch_pull_request(ORG, "widgets", "ahead", state="open")
    query = """query($owner: String!, $name: String!) { repository(owner: $owner, name: $name) {
      defaultBranchRef { a: compare(headRef: "merged/one") { status aheadBy behindBy }
                         b: compare(headRef: "ahead") { status aheadBy behindBy }
                         c: compare(headRef: "same") { status } d: compare(headRef: "nope") { status } }
      refs(refPrefix: "refs/heads/", first: 10) { totalCount nodes { name
        target { oid ... on Commit { committedDate } }
        open: associatedPullRequests(states: [OPEN], first: 5) { totalCount }
        merged: associatedPullRequests(states: [MERGED], first: 1,
                                       orderBy: {field: UPDATED_AT, direction: DESC}) { nodes { state headRefOid } }
        rules(first: 1) { totalCount } } } } }"""
    data = (await gh.graphql(query, endpoint=fake.graphql_url, owner=ORG, name="widgets"))["repository"]
    compared = data["defaultBranchRef"]
    # main holds merged/one and its merge commit; "ahead" started from there, one commit on.
    assert compared["a"] == {"status": "BEHIND", "aheadBy": 0, "behindBy": 1}
    assert compared["b"] == {"status": "AHEAD", "aheadBy": 1, "behindBy": 0}
    assert compared["c"] == {"status": "IDENTICAL"} and compared["d"] is None
    refs = {n["name"]: n for n in data["refs"]["nodes"]}
    assert list(refs) == ["ahead", "main", "merged/one", "same"]  # alphabetical, as GitHub's default
    assert refs["merged/one"]["target"]["committedDate"] == "2026-02-01T00:00:00Z"
    assert refs["ahead"]["target"]["oid"] == ahead
    assert refs["ahead"]["open"] == {"totalCount": 1}
    assert refs["ahead"]["merged"]["nodes"] == [{"state": "MERGED", "headRefOid": ahead}]
    assert refs["main"]["open"] == {"totalCount": 0} and refs["main"]["rules"] == {"totalCount": 0}


async def test_deleting_a_ref_takes_the_branchs_slashes_and_says_when_it_is_gone(fake, gh):
    fake.add_branch(ORG, "widgets", "feature/a#b")
    await gh.delete(f"/repos/{ORG}/widgets/git/refs/heads/feature/a%23b")
    assert "feature/a#b" not in fake.branches(ORG, "widgets")
    with pytest.raises(InvalidField) as gone:
        await gh.delete(f"/repos/{ORG}/widgets/git/refs/heads/feature/a%23b")
    assert gone.value.status_code == 422 and str(gone.value) == "Reference does not exist"
    with pytest.raises(InvalidField):
        await gh.delete(f"/repos/{ORG}/widgets/git/refs/heads/main")
    assert "main" in fake.branches(ORG, "widgets")
