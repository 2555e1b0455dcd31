"""`moko sweep` against the fake GitHub: counts, checkpoints and resuming, --retry-failed,
--dry-run, --repo, token mode, cost, and the command line's exit codes.

The bulk client spaces writes 1 s apart; here its sleep is injected (recorded, not slept) and
its monotonic clock moves only when it sleeps, so the spacing asked for is exactly checked.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from bot.audit import settled
from bot.config import Settings, load_settings
from bot.github_app import GitHubApp
from bot.store import open_store
from bot.store.base import AuditEntry
from handlers.wiring import cli
from handlers.wiring.app import client_options
from handlers.wiring.cli_sweep import sweep_command
from tests.fakegithub.state import blob_sha

ORG = "acme"
INSTALLATION = 1
PROTECTION = {
    "required_status_checks": None,
    "enforce_admins": False,
    "required_pull_request_reviews": {"required_approving_review_count": 1},
    "restrictions": None,
}
COMPLIANT = {"has_issues": True, "has_wiki": False, "has_projects": False}
WRITES = ("PATCH", "PUT", "DELETE", "POST")


class BulkTime:
    """The GitHub client's monotonic clock and sleep: time moves only when the client sleeps."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def github_factory(time: BulkTime):
    def build(settings: Settings, session: aiohttp.ClientSession) -> GitHubApp:
        token = settings.token
        return GitHubApp(
            session=session, api_url=settings.api_url, graphql_url=settings.graphql_url,
            app_id=None if token else settings.app_id, private_key=None if token else settings.private_key,
            token=token, options=client_options(settings), clock=time.clock, sleep=time.sleep,
        )
    return build


async def sweep(env: dict[str, str], *argv: str, time: BulkTime | None = None) -> tuple[int, Any, str]:
    """Run `moko sweep --org acme --json ARGV` in-process: (exit code, JSON document, stderr)."""
    args = cli.build_parser().parse_args(["sweep", "--org", ORG, "--json", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = await sweep_command(args, load_settings(env), out=out, err=err,
                               github_factory=github_factory(time or BulkTime()))
    return code, json.loads(out.getvalue()) if out.getvalue() else None, err.getvalue()


def compliant_repo(fake, name: str, **fields: Any) -> None:
    fake.add_repo(ORG, name, **{**COMPLIANT, **fields})
    fake.set_protection(ORG, name, "main", PROTECTION)


def touched(fake, names: Iterable[str]) -> list[str]:
    """REST calls about any of the named repositories."""
    pattern = re.compile(rf"^/repos/{ORG}/({'|'.join(map(re.escape, names))})(/|$)")
    return [f"{c.method} {c.path}" for c in fake.calls if pattern.search(c.path)]


def writes(fake) -> list[Any]:
    return [c for c in fake.calls if c.method in WRITES and c.path.startswith("/repos/")]


async def trail(env: dict[str, str], **filters: Any):
    store = open_store(env["MOKO_DATABASE_URL"])
    await store.open()
    try:
        return settled(await store.audit_records(**filters))
    finally:
        await store.close()


@pytest.fixture
def org(fake_github):
    fake_github.add_installation(INSTALLATION, ORG)
    return fake_github


def mixed_org(fake, count: int = 250) -> dict[str, str]:
    """count repositories with every kind of drift; returns name -> the outcome to expect."""
    expected = {}
    for i in range(count):
        name = f"repo-{i:03d}"
        kind = i % 6
        if kind == 0:  # settings drift
            compliant_repo(fake, name, has_wiki=True, has_projects=True)
            expected[name] = "fixed"
        elif kind == 1:  # default branch not protected
            fake.add_repo(ORG, name, **COMPLIANT)
            expected[name] = "fixed"
        elif kind == 2:  # protection drift: a rule with other values than the policy's
            compliant_repo(fake, name)
            fake.set_protection(ORG, name, "main", {**PROTECTION, "required_pull_request_reviews": {
                "required_approving_review_count": 3}})
            expected[name] = "fixed"
        elif kind == 3:  # archived: left alone
            fake.add_repo(ORG, name, has_wiki=True, archived=True)
            expected[name] = "skipped"
        elif kind == 4 and i % 4 == 0:  # empty: its protection waits for the first push
            fake.add_repo(ORG, name, empty=True, **COMPLIANT)
            expected[name] = "deferred"
        else:
            compliant_repo(fake, name)
            expected[name] = "compliant"
    return expected


def count(expected: dict[str, str], outcome: str) -> int:
    return sum(1 for value in expected.values() if value == outcome)


async def test_sweep_of_250_repositories_fixes_every_drift_and_counts_right(org, env):
    expected = mixed_org(org)
    time = BulkTime()
    # When each write reached GitHub, on the client's clock (which moves only when it sleeps).
    written_at: list[float] = []
    org.on_request(lambda call: written_at.append(time.now)
                   if call.method in WRITES and call.path.startswith("/repos/") else None)
    code, doc, _ = await sweep(env, time=time)
    assert code == 0
    assert {r["repo"]: r["outcome"] for r in doc["results"]} == {f"{ORG}/{n}": o for n, o in expected.items()}
    assert {k: doc[k] for k in ("org", "repositories", "compliant", "fixed", "failed", "deferred", "skipped")} == {
        "org": ORG, "repositories": 250, "compliant": count(expected, "compliant"), "fixed": count(expected, "fixed"),
        "failed": 0, "deferred": count(expected, "deferred"), "skipped": count(expected, "skipped"),
    }
    assert list(doc) == [
        "org", "repositories", "compliant", "fixed", "failed", "deferred", "skipped", "unknown", "requests", "results",
    ]
    assert doc["requests"] == org.count()
    fixed = next(r for r in doc["results"] if r["repo"] == f"{ORG}/repo-000")
    assert {(c["field"], c["before"], c["after"], c["outcome"]) for c in fixed["changes"]} == {
        ("has_wiki", True, False, "applied"), ("has_projects", True, False, "applied")}
    # Every drift is gone: a second sweep (a new one: the first finished) finds all compliant.
    for name, outcome in expected.items():
        if outcome == "fixed":
            assert org.repo(ORG, name)["has_wiki"] is False
            assert org.protection_read(ORG, name, "main")["required_pull_request_reviews"][
                "required_approving_review_count"] == 1
    # Writes were spaced as bulk work must be: at least 1 s between one and the next.
    sent = writes(org)
    assert len(sent) == count(expected, "fixed") == len(written_at)
    assert all(later - earlier >= 1.0 for earlier, later in zip(written_at, written_at[1:], strict=False))
    org.reset_calls()
    code, again, _ = await sweep(env)
    assert code == 0 and again["fixed"] == 0 and writes(org) == []
    assert again["compliant"] == count(expected, "compliant") + count(expected, "fixed")
    records = await trail(env)
    # Empty repositories still wait for their first push; that was recorded once, not twice.
    assert again["deferred"] == count(expected, "deferred") > 0
    assert len([r for r in records if r.outcome == "deferred"]) == count(expected, "deferred")
    assert {r.trigger for r in records} == {"sweep"} and {r.actor for r in records} == {org.bot_login}
    assert all(r.run_id.startswith("sweep-") and r.installation == INSTALLATION for r in records)


async def test_compliant_organization_of_250_costs_at_most_10_requests(org, env):
    for i in range(250):
        compliant_repo(org, f"tidy-{i:03d}")
    code, doc, _ = await sweep(env)
    assert code == 0 and doc["compliant"] == 250
    assert org.count() <= 10, [f"{c.method} {c.path}" for c in org.calls]
    assert doc["requests"] == org.count()
    assert org.count("POST", "^/graphql$") == 4  # the server's schema, then 100 repositories a query
    assert not [c for c in org.calls if c.path.startswith(f"/repos/{ORG}/tidy-")]


async def test_killed_after_100_then_run_again_it_finishes_without_touching_them(org, env):
    names = [f"svc-{i:03d}" for i in range(250)]
    for name in names:
        compliant_repo(org, name, has_wiki=True)
    args = cli.build_parser().parse_args(["sweep", "--org", ORG, "--json"])
    task = asyncio.create_task(sweep_command(args, load_settings(env), out=io.StringIO(), err=io.StringIO(),
                                             github_factory=github_factory(BulkTime())))

    def kill_after_100_writes(call) -> None:
        if call.method == "PATCH" and len(writes(org)) == 100:
            task.cancel()  # as abrupt as a kill: mid-flight, nothing gets to finish

    org.on_request(kill_after_100_writes)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(writes(org)) == 100
    written = {c.path.rsplit("/", 1)[1] for c in writes(org)}
    first_records = await trail(env)
    store = open_store(env["MOKO_DATABASE_URL"])
    await store.open()
    outcomes = await store.sweep_outcomes(first_records[0].run_id)
    await store.close()
    checkpointed = {name.split("/", 1)[1] for name in outcomes}
    # Killed mid-flight: the last few written may have no checkpoint (or audit record) yet.
    assert 90 <= len(checkpointed) <= 100 and checkpointed <= written
    assert set(outcomes.values()) == {"fixed"}

    # A killed process's repository leases outlive it by the store's lock TTL: let them expire.
    with sqlite3.connect(env["MOKO_DATABASE_URL"][len("sqlite:///"):]) as db:
        db.execute("UPDATE locks SET expires = 0 WHERE name LIKE 'repo:%'")
    org.reset_calls()
    code, doc, _ = await sweep(env)
    assert code == 0
    assert touched(org, written) == []  # the first 100: no read, no write
    assert len(writes(org)) == 150  # the others, each once
    assert doc["repositories"] == 250 and doc["failed"] == 0
    # Checkpointed ones count as the first run found them; written but not checkpointed ones
    # are compliant now.
    assert (doc["fixed"], doc["compliant"]) == (len(checkpointed) + 150, 100 - len(checkpointed))
    assert all(org.repo(ORG, name)["has_wiki"] is False for name in names)
    records = await trail(env)
    assert records[: len(first_records)] == first_records
    assert len(records) == len(first_records) + 150
    assert {r.run_id for r in records} == {first_records[0].run_id}  # the same sweep, resumed


async def test_retry_failed_takes_only_the_failed_repositories(org, env):
    names = [f"lib-{i:02d}" for i in range(20)]
    for name in names:
        compliant_repo(org, name, has_wiki=True)
    refused = ["lib-03", "lib-11", "lib-17"]
    for name in refused:
        org.fail("PATCH", f"^/repos/{ORG}/{name}$", 403, body={"message": "Resource not accessible by integration"})
    code, doc, _ = await sweep(env)
    assert code == 1
    assert (doc["failed"], doc["fixed"]) == (3, 17)
    failed = [r for r in doc["results"] if r["outcome"] == "failed"]
    assert [r["repo"] for r in failed] == [f"{ORG}/{n}" for n in refused]
    assert "403" in failed[0]["changes"][0]["error"]

    org.reset_calls()
    code, doc, _ = await sweep(env, "--retry-failed")
    assert code == 0
    assert sorted({c.path for c in writes(org)}) == [f"/repos/{ORG}/{n}" for n in refused]
    assert touched(org, set(names) - set(refused)) == []
    assert (doc["repositories"], doc["fixed"], doc["failed"]) == (20, 20, 0)

    # After a finished sweep the next run starts afresh: everything read, nothing to write.
    org.reset_calls()
    code, doc, _ = await sweep(env)
    assert code == 0 and doc["compliant"] == 20 and writes(org) == []


async def test_dry_run_changes_nothing_records_the_plan_and_leaves_the_real_sweep_alone(org, env):
    for i in range(12):
        org.add_repo(ORG, f"draft-{i:02d}", has_wiki=True, has_issues=True, has_projects=False)
    code, doc, _ = await sweep(env, "--dry-run")
    assert code == 0
    assert writes(org) == []
    assert (doc["fixed"], doc["compliant"]) == (12, 0)  # what would be fixed
    assert {r["outcome"] for r in doc["results"]} == {"planned"}
    records = await trail(env)
    assert {r.outcome for r in records} == {"dry-run"}
    assert {r.field for r in records} == {"has_wiki", "main"}

    code, doc, _ = await sweep(env)
    assert code == 0 and doc["fixed"] == 12 and len(writes(org)) == 24


async def test_each_repository_s_outcome_in_a_dry_run_then_in_sweeps(org, env):
    compliant_repo(org, "tidy")
    compliant_repo(org, "drift", has_wiki=True)
    org.add_repo(ORG, "empty", empty=True, **COMPLIANT)

    def outcomes(doc: Any) -> dict[str, str]:
        return {r["repo"].split("/")[1]: r["outcome"] for r in doc["results"]}

    code, doc, _ = await sweep(env, "--dry-run")
    assert code == 0 and outcomes(doc) == {"tidy": "compliant", "drift": "planned", "empty": "planned"}
    # The empty repository's protection waits for its first branch, still after a second sweep.
    for drift in ("fixed", "compliant"):
        code, doc, _ = await sweep(env)
        assert code == 0 and outcomes(doc) == {"tidy": "compliant", "drift": drift, "empty": "deferred"}


async def test_a_sweep_waits_for_a_write_a_process_that_died_left_on_its_way(org, env):
    compliant_repo(org, "racer", has_wiki=True)
    env = {**env, "MOKO_REQUEST_TIMEOUT": "1"}
    # A `moko serve` died a second ago with its PATCH on its way: its intent has no outcome.
    store = open_store(env["MOKO_DATABASE_URL"])
    await store.open()
    try:
        await store.append_audit([AuditEntry(
            time=datetime.now(UTC) - timedelta(seconds=1), run_id="edited-6", trigger="repository.edited",
            installation=INSTALLATION, repo=f"{ORG}/racer", actor="octocat", policy="repository", field="has_wiki",
            before=True, after=False, outcome="pending")])
    finally:
        await store.close()

    def lands_late(call) -> None:
        # GitHub carries that PATCH out half a second after the sweep's batched read saw the wiki on.
        if call.method == "POST" and "MokoRepositories" in (call.graphql_query or ""):
            asyncio.get_running_loop().call_later(0.5, org.repo(ORG, "racer").__setitem__, "has_wiki", False)

    org.on_request(lands_late)
    code, doc, _ = await sweep(env, "--repo", "racer")
    # The sweep waited as long as the request could still land, then read it: not written twice.
    assert code == 0 and doc["results"][0]["outcome"] == "compliant"
    assert writes(org) == [] and org.count("GET", f"^/repos/{ORG}/racer$") == 1


async def test_global_dry_run_setting_changes_nothing(org, env):
    org.add_repo(ORG, "draft", has_wiki=True)
    code, doc, _ = await sweep({**env, "MOKO_DRY_RUN": "true"})
    assert code == 0 and writes(org) == [] and doc["results"][0]["outcome"] == "planned"


async def test_repo_option_sweeps_only_the_named_repositories(org, env):
    for name in ("one", "two", "three"):
        compliant_repo(org, name, has_wiki=True)
    code, doc, _ = await sweep(env, "--repo", "one", "--repo", f"{ORG}/three", "--repo", "ghost")
    assert code == 1
    assert {r["repo"]: r["outcome"] for r in doc["results"]} == {
        f"{ORG}/one": "fixed", f"{ORG}/three": "fixed", f"{ORG}/ghost": "failed"}
    assert org.repo(ORG, "two")["has_wiki"] is True
    assert touched(org, ["two"]) == []
    assert org.count("POST", "^/graphql$") == 2  # the server's schema, then the three


async def test_a_sweep_fixes_drift_with_the_write_alone(org, env):
    compliant_repo(org, "one", has_wiki=True)
    code, doc, _ = await sweep(env, "--repo", "one")
    assert code == 0
    assert {r["repo"]: r["outcome"] for r in doc["results"]} == {f"{ORG}/one": "fixed"}
    # The batched read told all: a sweep is no retaken delivery, so nothing is read again
    # before the one PATCH.
    assert touched(org, ["one"]) == [f"PATCH /repos/{ORG}/one"]
    assert [(r.field, r.outcome) for r in await trail(env, repo=f"{ORG}/one")] == [("has_wiki", "applied")]


async def test_token_mode_acts_as_the_tokens_user(org, env):
    org.add_personal_token("ghp_operator", "octo-admin")
    org.add_repo(ORG, "widgets", has_wiki=True, has_issues=True, has_projects=False)
    token_env = {**env, "GITHUB_TOKEN": "ghp_operator"}
    code, doc, _ = await sweep(token_env)
    assert code == 0 and doc["fixed"] == 1
    records = await trail(env)
    assert {r.actor for r in records} == {"octo-admin"} and {r.installation for r in records} == {None}
    assert org.count("POST", "/access_tokens$") == 0


async def test_unknown_organization_is_a_clear_usage_error(org, env):
    args = cli.build_parser().parse_args(["sweep", "--org", "nobody"])
    err = io.StringIO()
    code = await sweep_command(args, load_settings(env), out=io.StringIO(), err=err,
                               github_factory=github_factory(BulkTime()))
    assert code == 2
    assert err.getvalue().strip() == "moko: the App is not installed on 'nobody' (or there is no such organization)"
    org.add_personal_token("ghp_operator", "octo-admin")
    err = io.StringIO()
    code = await sweep_command(args, load_settings({**env, "GITHUB_TOKEN": "ghp_operator"}), out=io.StringIO(),
                               err=err, github_factory=github_factory(BulkTime()))
    assert code == 2 and "no organization 'nobody'" in err.getvalue()


async def test_invalid_policy_changes_nothing_and_exits_1(org, env):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nrepository:\n  has_wikki: false\n")
    org.add_repo(ORG, "victim", has_wiki=True)
    code, doc, err = await sweep(env)
    assert code == 1 and doc is None
    assert "policy is invalid" in err and "has_wikki" in err
    assert writes(org) == []
    records = await trail(env)
    assert [(r.policy, r.outcome) for r in records] == [("config", "failed")]


async def test_an_invalid_policy_is_recorded_once_per_file_found_again(org, env):
    org.add_repo(ORG, ".github", **COMPLIANT)
    first = "version: 1\nrepository:\n  has_wikki: false\n"
    second = "version: 1\nrepository:\n  has_wikky: false\n"
    # Each sweep finds the file invalid; the trail says so once for each file in a row.
    for text in (first, first, second, second, first):
        org.put_file(ORG, ".github", ".github/moko.yml", text)
        assert (await sweep(env))[0] == 1
    records = await trail(env, repo=f"{ORG}/.github")
    source = f"{ORG}/.github/.github/moko.yml"
    assert [(r.policy, r.field, r.before, r.outcome) for r in records] == [
        ("config", source, {"file": blob_sha(text.encode())}, "failed") for text in (first, second, first)]


async def test_an_invalid_policy_s_last_record_is_looked_for_among_its_repository_s_last_50(org, env):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nrepository:\n  has_wikki: false\n")
    assert (await sweep(env))[0] == 1
    store = open_store(env["MOKO_DATABASE_URL"])
    await store.open()
    try:
        # 49 newer records than the config one: it is found; 50: it is recorded again.
        for others, found in ((49, 1), (1, 2)):
            await store.append_audit([AuditEntry(
                time=datetime.now(UTC), run_id=f"cmd-{n}", trigger="issue_comment.created", installation=INSTALLATION,
                repo=f"{ORG}/.github", actor="octocat", policy="command", field="status", before=None, after=None,
                outcome="applied") for n in range(others)])
            assert (await sweep(env))[0] == 1
            assert [r.policy for r in await store.audit_records(repo=f"{ORG}/.github")].count("config") == found
    finally:
        await store.close()


async def test_table_and_progress_bar_on_a_terminal(org, env):
    compliant_repo(org, "tidy")
    org.add_repo(ORG, "messy", has_wiki=True)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    args = cli.build_parser().parse_args(["sweep", "--org", ORG])
    out, err = io.StringIO(), Terminal()
    code = await sweep_command(args, load_settings(env), out=out, err=err, github_factory=github_factory(BulkTime()))
    assert code == 0
    assert "sweeping acme: 1 fixed, 0 failed" in err.getvalue() and "2/2" in err.getvalue()
    table = out.getvalue()
    for column in ("repositories", "compliant", "fixed", "failed", "deferred", "skipped", "unknown"):
        assert column in table
    assert re.search(r"│\s+2\s+│\s+1\s+│\s+1\s+│\s+0\s+│\s+0\s+│\s+0\s+│\s+0\s+│", table), table
    assert re.search(r"Sweep of acme, \d+ requests", table), table


async def test_table_names_each_failed_repository_with_githubs_words(org, env):
    compliant_repo(org, "tidy")
    org.add_repo(ORG, "locked", has_wiki=True)
    org.fail("PATCH", f"^/repos/{ORG}/locked$", 403, body={"message": "Resource not accessible by integration"})
    args = cli.build_parser().parse_args(
        ["sweep", "--org", ORG, "--repo", "tidy", "--repo", "locked", "--repo", "gone"]
    )
    out = io.StringIO()
    code = await sweep_command(args, load_settings(env), out=out, err=io.StringIO(),
                               github_factory=github_factory(BulkTime()))
    assert code == 1
    table = out.getvalue()
    assert "Failed repositories, and those whose compliance is unknown" in table
    failed = {line.split("│")[1].strip(): line.split("│")[2].strip()
              for line in table.splitlines() if line.startswith("│ acme/")}
    assert failed == {
        f"{ORG}/gone": "repository not found, or not accessible to these credentials",
        f"{ORG}/locked": "403 Resource not accessible by integration",
    }, table


async def test_no_progress_bar_when_not_a_terminal_or_with_json(org, env):
    org.add_repo(ORG, "messy", has_wiki=True)
    for argv in (["sweep", "--org", ORG], ["sweep", "--org", ORG, "--json"]):
        args = cli.build_parser().parse_args(argv)
        out, err = io.StringIO(), io.StringIO()
        code = await sweep_command(args, load_settings(env), out=out, err=err,
                                   github_factory=github_factory(BulkTime()))
        assert code == 0 and "sweeping" not in err.getvalue() + out.getvalue()


def test_no_credentials_is_one_clear_line_and_exit_2(monkeypatch, capsys, tmp_path):
    for name in ("GITHUB_APP_ID", "GITHUB_PRIVATE_KEY", "GITHUB_PRIVATE_KEY_PATH", "GITHUB_TOKEN", "MOKO_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MOKO_DATABASE_URL", f"sqlite:///{tmp_path}/moko.db")
    assert cli.main(["sweep", "--org", ORG]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "GITHUB_TOKEN" in captured.err and "Traceback" not in captured.err


def test_bad_repo_argument_is_a_usage_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_whatever")
    monkeypatch.setenv("MOKO_DATABASE_URL", f"sqlite:///{tmp_path}/moko.db")
    assert cli.main(["sweep", "--org", ORG, "--repo", "other/thing"]) == 2
    assert "--repo" in capsys.readouterr().err


async def test_repositories_own_policy_files_come_with_the_batched_read(org, env):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.set_protection(ORG, ".github", "main", PROTECTION)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\noverrides: [repository.has_wiki]\n")
    for i in range(150):
        compliant_repo(org, f"app-{i:03d}")
    compliant_repo(org, "docs", has_wiki=False)
    org.put_file(ORG, "docs", ".github/moko.yml", "version: 1\nrepository:\n  has_wiki: true\n  has_issues: false\n")
    compliant_repo(org, "broken")
    org.put_file(ORG, "broken", ".github/moko.yml", "version: 1\nrepository: [\n")
    code, doc, _ = await sweep(env)
    assert code == 1  # one repository failed: its own file is invalid
    results = {r["repo"]: r for r in doc["results"]}
    # An invalid file changes nothing for its repository, as when it is read with REST.
    assert results[f"{ORG}/docs"]["outcome"] == "fixed" and results[f"{ORG}/broken"]["outcome"] == "failed"
    assert results[f"{ORG}/broken"]["error"].startswith(f"{ORG}/broken/.github/moko.yml:3: invalid YAML")
    assert doc["compliant"] == 151
    assert org.repo(ORG, "docs")["has_wiki"] is True  # allowed override
    assert org.repo(ORG, "docs")["has_issues"] is True  # not allowed: ignored
    # Each repository's file came with its page: no contents read one by one.
    assert org.count("GET", "/contents/") == 1  # the organization's policy
    assert org.count() <= 10


def padded_policy(size: int) -> str:
    """A valid policy file (it would turn the wiki on) padded with comments to ``size`` bytes."""
    head = "version: 1\nrepository:\n  has_wiki: true\n"
    padding = "# " + "x" * 77 + "\n"
    body = head + padding * ((size - len(head)) // len(padding))
    return body + "#" * (size - len(body) - 1) + "\n"


async def test_own_policy_files_too_large_for_the_batched_read_are_invalid_as_with_rest(org, env):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.set_protection(ORG, ".github", "main", PROTECTION)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\noverrides: [repository.has_wiki]\n")
    # GitHub's GraphQL cuts both files' text short; the contents API gives the first no content.
    huge, big = padded_policy(1_500_000), padded_policy(600_000)
    for name, text in (("huge", huge), ("big", big)):
        compliant_repo(org, name, has_wiki=False)
        org.put_file(ORG, name, ".github/moko.yml", text)

    code, doc, _ = await sweep(env)

    assert code == 1
    results = {r["repo"]: r for r in doc["results"]}
    # Refused as the REST read refuses them, never taken for what the cut text says.
    assert results[f"{ORG}/huge"]["outcome"] == "failed"
    assert results[f"{ORG}/huge"]["error"] == (
        f"{ORG}/huge/.github/moko.yml:1: the file is too large (1500000 bytes): GitHub gives no content over 1 MB")
    assert results[f"{ORG}/big"]["outcome"] == "failed"
    assert results[f"{ORG}/big"]["error"] == f"{ORG}/big/.github/moko.yml:3280: the file is larger than 256 KiB"
    assert org.repo(ORG, "huge")["has_wiki"] is False and org.repo(ORG, "big")["has_wiki"] is False
    assert org.count("GET", "/contents/") == 1  # the organization's policy: the rest came in the batch
    records = await trail(env, repo=f"{ORG}/huge")
    assert [(r.policy, r.outcome) for r in records] == [("config", "failed")]


async def test_refused_credentials_are_a_usage_error(org, env):
    code, doc, err = await sweep({**env, "GITHUB_TOKEN": "ghp_revoked"})
    assert code == 2 and doc is None
    assert err.startswith("moko: GitHub refused these credentials") and err.count("\n") == 1


async def test_a_repository_whose_only_finding_is_held_for_a_person_fails_the_sweep(org, env):
    # Nothing to write and nothing to read: the batched read shows main protected by a rule
    # other branches share, which the policy wants gone. That is a failure, not compliance.
    org.add_repo(ORG, ".github")
    org.put_file(ORG, ".github", ".github/moko.yml",
                 "version: 1\nrepository: {}\nbranches:\n  - {name: default, protection: null}\n")
    org.add_repo(ORG, "app")
    org.add_branch(ORG, "app", "maint")
    org.add_protection_rule(ORG, "app", "mai*", PROTECTION)
    code, doc, _ = await sweep(env, "--repo", "app")
    [result] = doc["results"]
    assert (code, result["outcome"], doc["failed"], doc["compliant"]) == (1, "failed", 1, 0)
    assert result["error"] == "main: protected by the rule mai*, which other branches share: Moko does not remove it"
    assert writes(org) == [] and org.protection_rules(ORG, "app") == {"mai*": PROTECTION}


async def test_wildcard_covered_branches_get_their_own_rule_and_a_shared_rule_is_never_removed(org, env):
    policy = (
        "version: 1\nrepository: {}\nbranches:\n"
        "  - name: release/1\n    protection:\n      required_status_checks: null\n"
        "      enforce_admins: true\n      required_pull_request_reviews: null\n      restrictions: null\n"
        "  - name: release/2\n    protection: null\n"
    )
    org.add_repo(ORG, ".github")
    org.put_file(ORG, ".github", ".github/moko.yml", policy)
    org.add_repo(ORG, "app")
    for branch in ("release/1", "release/2", "release/3"):
        org.add_branch(ORG, "app", branch)
    shared = {**PROTECTION, "allow_deletions": True}
    org.add_protection_rule(ORG, "app", "release/*", shared)
    code, doc, _ = await sweep(env, "--repo", "app")
    [result] = doc["results"]
    # release/1 gets a rule of its own, in one PUT, from the shared rule's settings with the
    # policy's keys laid over them; the shared rule, which release/2 and release/3 keep, stays.
    assert [(c.method, c.path) for c in writes(org)] == [("PUT", f"/repos/{ORG}/app/branches/release/1/protection")]
    assert org.protection_rules(ORG, "app") == {
        "release/*": shared,
        "release/1": {**PROTECTION, "required_pull_request_reviews": None, "enforce_admins": True,
                      "allow_deletions": True, "required_linear_history": False, "allow_force_pushes": False,
                      "block_creations": False, "required_conversation_resolution": False,
                      "lock_branch": False, "allow_fork_syncing": False},
    }
    # release/2 must not be protected, but only the shared rule protects it: left for a person.
    assert (code, result["outcome"]) == (1, "failed")
    assert result["error"] == (
        "release/2: protected by the rule release/*, which other branches share: Moko does not remove it")
    assert org.protection_read(ORG, "app", "release/2")["allow_deletions"]["enabled"] is True
    assert [(r.field, r.outcome) for r in await trail(env, repo=f"{ORG}/app")] == [("release/1", "applied")]
