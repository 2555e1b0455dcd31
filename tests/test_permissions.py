"""What the App may see: GitHub leaves out what an installation's permissions do not reach;
Moko asks nothing in vain, says `unknown` naming the missing permission (sweep, status, plan,
apply, metrics), and a sweep with unknowns exits 1. First, the fake GitHub's side of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from gidgethub import QueryError

from policies.permissions import APP_PERMISSIONS
from tests.fakegithub.state import APP_PERMISSIONS as FAKE_DEFAULTS
from tests.fakegithub.state import MERGE_SETTINGS
from tests.support.github_client import make_app
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG
from tests.test_sweep import sweep

ROOT = Path(__file__).resolve().parent.parent
WRITE_CONTENTS = {**APP_PERMISSIONS, "contents": "write"}
SQUASH_POLICY = "version: 1\nrepository:\n  has_wiki: false\n  allow_squash_merge: false\n"
MISSING = "reading it needs the contents: write permission, which the App's installation was not granted"


def policy_org(fake, policy: str = SQUASH_POLICY, **permissions: str):
    granted = {**APP_PERMISSIONS, **permissions}
    fake.add_installation(INSTALLATION, ORG, permissions=granted)
    fake.add_repo(ORG, ".github", **COMPLIANT)
    fake.set_protection(ORG, ".github", "main", DEFAULT_PROTECTION)
    fake.put_file(ORG, ".github", ".github/moko.yml", policy)
    fake.add_repo(ORG, "widgets", has_wiki=True, has_issues=True, has_projects=False)
    fake.set_protection(ORG, "widgets", "main", DEFAULT_PROTECTION)
    return fake


def asked_for_merge_settings(fake) -> list[str]:
    """Requests that asked GitHub for a merge setting: GraphQL fields, or a REST read of the
    repository (whose answer would have left them out)."""
    graphql = [c.graphql_query for c in fake.calls if c.graphql_query and "squashMergeAllowed" in c.graphql_query]
    rest = [f"{c.method} {c.path}" for c in fake.calls if c.method == "GET" and c.path.count("/") == 3
            and c.path.startswith(f"/repos/{ORG}/")]
    return graphql + rest


async def unknown_remediations(moko, policy: str = "repository") -> float:
    """moko_remediations_total{policy=…,outcome="unknown"} as GET /metrics shows it."""
    async with moko.session.get(moko.url + "/metrics") as response:
        text = await response.text()
    line = f'moko_remediations_total{{outcome="unknown",policy="{policy}"}} '
    return next((float(row[len(line):]) for row in text.splitlines() if row.startswith(line)), 0.0)


# --- the fake GitHub ----------------------------------------------------------------------------


def test_an_installation_is_granted_what_app_yml_asks_for():
    manifest = yaml.safe_load((ROOT / "app.yml").read_text())
    assert manifest["default_permissions"] == dict(APP_PERMISSIONS) == FAKE_DEFAULTS


async def test_the_fake_leaves_out_merge_settings_without_contents_write(fake_github, session, clock):
    fake_github.add_installation(1, ORG)
    fake_github.add_installation(2, "other", permissions=WRITE_CONTENTS)
    fake_github.add_repo(ORG, "app", security_and_analysis={"secret_scanning": {"status": "enabled"}})
    fake_github.add_repo("other", "app")
    app = make_app(fake_github, session, clock)
    limited, full = await app.installation_client(1), await app.installation_client(2)

    seen = await limited.getitem(f"/repos/{ORG}/app")
    assert not set(MERGE_SETTINGS) & set(seen) and seen["has_wiki"] is True
    assert seen["security_and_analysis"] == {"secret_scanning": {"status": "enabled"}}  # administration: write
    assert set(MERGE_SETTINGS) <= set(await full.getitem("/repos/other/app"))
    installation = await app.app_client().getitem("/app/installations/1")
    assert installation["permissions"] == FAKE_DEFAULTS

    query = "query { repository(owner: \"acme\", name: \"app\") { hasWikiEnabled squashMergeAllowed } }"
    with pytest.raises(QueryError) as refused:
        await limited.graphql(query)
    answer = refused.value.response
    assert answer["data"] == {"repository": None}
    assert answer["errors"][0]["type"] == "FORBIDDEN" and answer["errors"][0]["path"] == ["repository", "squashMergeAllowed"]
    # Asking in vain is what the tests catch.
    assert set(fake_github.take_violations()) == {"GraphQL: Resource not accessible by integration"}


async def test_the_fake_shows_security_and_analysis_to_admins_only(fake_github, session, clock):
    fake_github.add_installation(1, ORG, permissions={**APP_PERMISSIONS, "administration": "read"})
    fake_github.add_repo(ORG, "app", security_and_analysis={"secret_scanning": {"status": "enabled"}})
    client = await make_app(fake_github, session, clock).installation_client(1)
    assert "security_and_analysis" not in await client.getitem(f"/repos/{ORG}/app")


# --- Moko -----------------------------------------------------------------------------------------


async def test_a_merge_setting_without_contents_write_is_unknown_and_the_sweep_exits_1(fake_github, env):
    org = policy_org(fake_github)
    code, doc, _err = await sweep(env)
    assert code == 1
    assert doc["unknown"] == 2 and doc["compliant"] == 0 and doc["failed"] == 0
    results = {r["repo"]: r for r in doc["results"]}
    widgets = results[f"{ORG}/widgets"]
    assert widgets["outcome"] == "unknown"
    assert widgets["error"] == f"repository.allow_squash_merge is unknown: {MISSING}"
    # What could be told was still fixed.
    assert [(c["field"], c["outcome"]) for c in widgets["changes"]] == [("has_wiki", "applied")]
    assert org.repo(ORG, "widgets")["has_wiki"] is False
    assert org.repo(ORG, "widgets")["allow_squash_merge"] is True  # unseen, untouched
    assert asked_for_merge_settings(org) == []


async def test_with_contents_write_the_same_sweep_fixes_the_merge_setting(fake_github, env):
    org = policy_org(fake_github, contents="write")
    code, doc, _err = await sweep(env)
    assert code == 0 and doc["unknown"] == 0
    assert {r["repo"]: r["outcome"] for r in doc["results"]} == {f"{ORG}/.github": "fixed", f"{ORG}/widgets": "fixed"}
    assert org.repo(ORG, "widgets")["allow_squash_merge"] is False


async def test_status_plan_and_apply_say_unknown_naming_the_missing_permission(fake_github, moko):
    org = policy_org(fake_github)
    org.set_permission(ORG, "widgets", "alice", "maintain")
    for command in ("/moko status", "/moko plan", "/moko apply"):
        await moko.deliver("issue_comment", org.event("issue_comment", "created", owner=ORG, repo="widgets",
                                                      body=command, sender="alice"))
    status, plan, apply = [c["body"] for c in org.comments(ORG, "widgets", 1) if c["user"]["login"] == org.bot_login]
    reason = "reading it needs the contents&#58; write permission, which the App's installation was not granted"
    assert "❔ Moko cannot tell whether 1 of 3 items comply with the policy" in status
    assert f"| repository | allow\\_squash\\_merge | false | unknown: {reason} | unknown |" in status
    assert "| repository | has\\_wiki | false | true | no |" in status
    assert f"- cannot tell repository.allow\\_squash\\_merge, so cannot say what it would change there: {reason}" in plan
    assert "- has\\_wiki: true → false" in plan
    assert "has\\_wiki: true → false — **done**" in apply and "cannot tell repository.allow\\_squash\\_merge" in apply
    assert asked_for_merge_settings(org) == []
    # The permissions came with the installation token: no request of their own.
    assert org.count("GET", r"^/app/installations/\d+$") == 0
    assert await unknown_remediations(moko) >= 1


async def test_a_field_github_leaves_out_anyway_is_unknown_after_one_read(fake_github, moko):
    org = policy_org(fake_github, contents="write")
    org.add_repo(ORG, "fresh", **COMPLIANT)
    # As a server that lacks the field answers: GET /repos/{owner}/{repo} without it.
    del org.state.repos[ORG]["fresh"].data["allow_squash_merge"]
    before = await unknown_remediations(moko)
    await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="fresh"), delivery="new")
    assert org.count("GET", f"^/repos/{ORG}/fresh$") == 1  # asked once, not again
    assert (await moko.services.store.get_delivery("new")).state == "done"  # nothing to redeliver
    assert await unknown_remediations(moko) == before + 1


def test_check_config_lists_fields_app_yml_cannot_read(tmp_path):
    policy = tmp_path / "moko.yml"
    policy.write_text(SQUASH_POLICY)
    done = subprocess.run([sys.executable, "-m", "handlers.wiring.cli", "check-config", str(policy)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{policy}: valid",
        f"{policy}:4: warning: repository.allow_squash_merge: reading it needs the contents: write permission, "
        "which app.yml does not grant; Moko will report it unknown",
    ]


@pytest.mark.parametrize("policy", ["version: 1\n", "version: 1\nrepository:\n  has_wiki: false\n"])
def test_the_built_in_policy_needs_nothing_beyond_app_yml(tmp_path, policy):
    file = tmp_path / "moko.yml"
    file.write_text(policy)
    done = subprocess.run([sys.executable, "-m", "handlers.wiring.cli", "check-config", str(file)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0 and done.stdout == f"{file}: valid\n"


def test_the_readme_says_which_permission_reads_each_merge_setting():
    from policies.permissions import MERGE_SETTINGS as MOKO_MERGE_SETTINGS

    row = next(line for line in (ROOT / "README.md").read_text().splitlines()
               if line.startswith("| `repository.allow_squash_merge`"))
    assert "| `contents: write` | `administration: write` |" in row
    assert [f for f in MOKO_MERGE_SETTINGS if f"`{f}`" not in row and f"`repository.{f}`" not in row] == []
    assert set(MOKO_MERGE_SETTINGS) == set(MERGE_SETTINGS)  # Moko and the fake agree with GitHub's note


def test_notify_issue_needs_the_issues_permission():
    from policies.loader import parse_policy
    from policies.permissions import permission_gaps

    policy = parse_policy("version: 1\nnotify: issue\n")
    assert [str(gap) for gap in permission_gaps(policy, {**APP_PERMISSIONS, "issues": "read"})] == [
        "notify: writing it needs the issues: write permission"]
    assert [str(gap) for gap in permission_gaps(policy, {k: v for k, v in APP_PERMISSIONS.items() if k != "issues"})] == [
        "notify: reading it needs the issues: read permission", "notify: writing it needs the issues: write permission"]
    assert permission_gaps(policy, APP_PERMISSIONS) == []
    assert [gap.key for gap in permission_gaps(parse_policy("version: 1\nnotify: none\n"), {}) if gap.key == "notify"] == []
