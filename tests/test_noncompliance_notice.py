"""`notify: issue` and `mode: report`, from outside: `moko serve` against the fake GitHub opens
one issue in a repository it cannot bring in line, updates that same issue, closes it when the
repository complies, and in report mode writes nothing but that issue."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from bot.audit import AuditWriter, settled
from bot.config import load_settings
from bot.store import open_store
from bot.store.base import AuditEntry
from handlers.wiring import cli
from handlers.wiring.cli_sweep import sweep_command
from tests.support.harness import moko_environ
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG
from tests.test_hostile_policies import serve_and_send

TITLE = "Moko: this repository does not meet policy"
MARKER = "<!-- moko:noncompliance -->"
REFUSED = {"message": "Validation Failed", "documentation_url": "https://docs.github.com/rest",
           "status": "422", "errors": [{"resource": "Repository", "code": "invalid",
                                        "field": "has_wiki", "message": "wikis are off here"}]}


@pytest.fixture
def org(fake_github):
    fake = fake_github
    fake.add_installation(INSTALLATION, ORG)
    fake.add_repo(ORG, ".github", **COMPLIANT)
    fake.set_protection(ORG, ".github", "main", DEFAULT_PROTECTION)
    fake.add_repo(ORG, "stuck", **{**COMPLIANT, "has_wiki": True})
    fake.set_protection(ORG, "stuck", "main", DEFAULT_PROTECTION)
    return fake


def policy(fake, text: str) -> None:
    fake.put_file(ORG, ".github", ".github/moko.yml", "version: 1\n" + text)


def added(fake, name: str = "stuck"):
    return fake.event("installation_repositories", "added", owner=ORG, repositories_added=[fake.repo(ORG, name)])


def moko_issues(fake, name: str = "stuck") -> list[dict]:
    return [i for i in fake.issues(ORG, name) if i["user"]["login"] == fake.bot_login]


def settings_writes(fake) -> list[str]:
    return [f"{c.method} {c.path}" for c in fake.calls
            if c.method in ("PATCH", "PUT", "DELETE") and c.path.startswith("/repos/") and "/issues" not in c.path]


async def test_a_repository_that_cannot_be_fixed_gets_one_issue_updated_then_closed(org, tmp_path):
    policy(org, "notify: issue\n")
    org.fail("PATCH", rf"^/repos/{ORG}/stuck$", status=422, body=REFUSED, times=2)
    await serve_and_send(org, tmp_path, ("installation_repositories", added(org), "stuck-1"))

    [issue] = moko_issues(org)
    assert (issue["title"], issue["state"]) == (TITLE, "open")
    assert issue["body"].startswith(MARKER)
    assert "| repository.has\\_wiki | has\\_wiki: true → false |" in issue["body"]
    assert "Validation Failed" in issue["body"]
    assert org.repo(ORG, "stuck")["has_wiki"] is True

    # Refused again, and the projects drifted meanwhile: the same issue says so.
    org.repo(ORG, "stuck")["has_projects"] = True
    await serve_and_send(org, tmp_path, ("installation_repositories", added(org), "stuck-2"), log_name="serve-2.log")
    [issue] = moko_issues(org)
    assert "has\\_projects: true → false" in issue["body"] and issue["state"] == "open"
    assert org.count("POST", rf"^/repos/{ORG}/stuck/issues$") == 1
    assert org.count("PATCH", rf"^/repos/{ORG}/stuck/issues/{issue['number']}$") == 1

    # GitHub takes the value now: the repository is fixed, and the issue closed with a comment.
    await serve_and_send(org, tmp_path, ("installation_repositories", added(org), "stuck-3"), log_name="serve-3.log")
    assert org.repo(ORG, "stuck")["has_wiki"] is False
    [issue] = moko_issues(org)
    assert issue["state"] == "closed"
    [comment] = org.comments(ORG, "stuck", issue["number"])
    assert "meets policy now" in comment["body"]


async def test_the_same_failure_again_leaves_the_issue_as_it_is(org, tmp_path):
    policy(org, "notify: issue\n")
    org.fail("PATCH", rf"^/repos/{ORG}/stuck$", status=422, body=REFUSED, times=2)
    await serve_and_send(org, tmp_path, ("installation_repositories", added(org), "same-1"),
                         ("installation_repositories", added(org), "same-2"))
    [issue] = moko_issues(org)
    assert org.count("POST", rf"^/repos/{ORG}/stuck/issues$") == 1
    assert org.count("PATCH", rf"^/repos/{ORG}/stuck/issues/\d+$") == 0
    assert org.count("GET", rf"^/repos/{ORG}/stuck/issues$") == 2  # found again, by Moko's own issues
    assert all(c.query.get("creator") == org.bot_login for c in org.calls_to("GET", rf"^/repos/{ORG}/stuck/issues$"))


async def test_mode_report_writes_nothing_but_the_issue(org, tmp_path):
    policy(org, "mode: report\nnotify: issue\n")
    await serve_and_send(org, tmp_path, ("installation_repositories", added(org), "report-1"))

    assert settings_writes(org) == []
    assert org.repo(ORG, "stuck")["has_wiki"] is True
    [issue] = moko_issues(org)
    assert "| repository.has\\_wiki | has\\_wiki: true → false |" in issue["body"]
    assert "mode&#58; report" in issue["body"] or "`mode: report`" in issue["body"]
    store = open_store(f"sqlite:///{tmp_path}/moko.db")
    await store.open()
    try:
        records = settled(await store.audit_records(repo=f"{ORG}/stuck"))
    finally:
        await store.close()
    assert {(r.field, r.outcome) for r in records if r.policy == "repository"} == {("has_wiki", "dry-run")}
    assert {(r.policy, r.field, r.outcome) for r in records if r.policy == "notify"} == {("notify", "issue", "applied")}


async def test_without_notify_or_in_dry_run_no_issue_is_opened(org, tmp_path):
    policy(org, "mode: dry-run\nnotify: issue\n")
    org.add_repo(ORG, "other", **{**COMPLIANT, "has_wiki": True})
    org.set_protection(ORG, "other", "main", DEFAULT_PROTECTION)
    org.fail("PATCH", rf"^/repos/{ORG}/other$", status=422, body=REFUSED, times=5)
    await serve_and_send(org, tmp_path, ("installation_repositories", added(org), "dry-1"))
    policy(org, "\n")  # notify: none, the default
    await serve_and_send(org, tmp_path, ("installation_repositories", added(org, "other"), "none-1"),
                         log_name="serve-2.log")
    assert moko_issues(org) == [] and moko_issues(org, "other") == []
    assert org.count("GET", r"/issues$") == 0


async def test_a_repository_with_issues_off_is_skipped_quietly(org, tmp_path):
    policy(org, "notify: issue\nrepository:\n  has_issues: false\n  has_wiki: false\n")
    org.repo(ORG, "stuck")["has_issues"] = False
    org.fail("PATCH", rf"^/repos/{ORG}/stuck$", status=422, body=REFUSED, times=2)
    log = await serve_and_send(org, tmp_path, ("installation_repositories", added(org), "off-1"))
    assert moko_issues(org) == []
    assert org.count("*", rf"^/repos/{ORG}/stuck/issues") == 0
    assert "notice_skipped" in log


async def test_a_repository_fixed_by_hand_gets_its_issue_closed_by_the_next_sweep(org, tmp_path):
    policy(org, "notify: issue\n")
    org.fail("PATCH", rf"^/repos/{ORG}/stuck$", status=422, body=REFUSED, times=1)
    await serve_and_send(org, tmp_path, ("installation_repositories", added(org), "hand-1"))
    [issue] = moko_issues(org)
    for i in range(120):  # compliant ones, which must cost no issue read
        org.add_repo(ORG, f"tidy-{i:03d}", **COMPLIANT)
        org.set_protection(ORG, f"tidy-{i:03d}", "main", DEFAULT_PROTECTION)
    org.repo(ORG, "stuck")["has_wiki"] = False  # fixed by a person: no write is needed
    org.reset_calls()

    env = moko_environ(org, f"sqlite:///{tmp_path}/moko.db")
    args = cli.build_parser().parse_args(["sweep", "--org", ORG, "--json"])
    out = io.StringIO()
    assert await sweep_command(args, load_settings(env), out=out, err=io.StringIO()) == 0
    assert json.loads(out.getvalue())["compliant"] == 122

    [issue] = moko_issues(org)
    assert issue["state"] == "closed"
    assert settings_writes(org) == []
    # The batched read showed Moko's open issue: no issue was looked for one by one.
    assert [c.path for c in org.calls if c.path.endswith("/issues")] == []
    assert org.count("POST", "^/graphql$") == 3  # the schema, then 100 repositories a query


async def test_sweeps_of_a_repository_that_stays_non_compliant_cost_no_issue_request(org, tmp_path):
    policy(org, "notify: issue\n")
    org.fail("PATCH", rf"^/repos/{ORG}/stuck$", status=422, body=REFUSED, times=10)
    env = moko_environ(org, f"sqlite:///{tmp_path}/moko.db")
    args = cli.build_parser().parse_args(["sweep", "--org", ORG, "--json"])
    assert await sweep_command(args, load_settings(env), out=io.StringIO(), err=io.StringIO()) == 1
    [issue] = moko_issues(org)
    org.reset_calls()

    assert await sweep_command(args, load_settings(env), out=io.StringIO(), err=io.StringIO()) == 1
    assert moko_issues(org) == [issue] and issue["state"] == "open"
    assert [f"{c.method} {c.path}" for c in org.calls if "/issues" in c.path] == []


async def test_protection_waiting_for_its_branch_more_than_a_day_is_told(org, tmp_path):
    policy(org, "notify: issue\n")
    org.add_repo(ORG, "empty", empty=True, **COMPLIANT)
    org.add_repo(ORG, "fresh", empty=True, **COMPLIANT)
    # Moko deferred the protection of empty's first branch a day and a half ago (an empty repository
    # has no default branch yet: the rule is the policy's "default" one).
    store = open_store(f"sqlite:///{tmp_path}/moko.db")
    await store.open()
    try:
        then = datetime.now(UTC) - timedelta(hours=36)  # a day and a half
        await AuditWriter(store, clock=lambda: then).write([AuditEntry(
            time=then, run_id="old-1", trigger="installation", installation=INSTALLATION, repo=f"{ORG}/empty",
            actor=org.bot_login, policy="branch_protection", field="default", before=None,
            after=DEFAULT_PROTECTION, outcome="deferred", error="branch does not exist yet")])
    finally:
        await store.close()
    both = org.event("installation_repositories", "added", owner=ORG,
                     repositories_added=[org.repo(ORG, "empty"), org.repo(ORG, "fresh")])
    await serve_and_send(org, tmp_path, ("installation_repositories", both, "wait-1"))

    [issue] = moko_issues(org, "empty")
    assert "protection of the default branch waits for the branch" in issue["body"]
    assert then.strftime("%Y-%m-%d") in issue["body"]
    assert moko_issues(org, "fresh") == []  # waiting since now: not yet worth an issue
