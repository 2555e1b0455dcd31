"""Running `/moko` commands, from outside: Moko with its real handlers against the fake GitHub.
`/moko status` says that the checks were stretched only when the installation's own interval
is longer than MOKO_SWEEP_INTERVAL (not another installation's, not an equal one, not while
the reconciliation is off)."""

from __future__ import annotations

import re

import pytest

from bot.audit import settled
from bot.store import open_store
from tests.support.harness import moko_environ, run_moko
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG

REPO = "widgets"
STRETCHED = re.compile(r"⏱ Moko checks this organization's repositories every (.+?), not every (.+?):")


@pytest.fixture
def org(fake_github):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, REPO, has_wiki=True, has_issues=True, has_projects=False)
    fake_github.set_permission(ORG, REPO, "alice", "triage")
    return fake_github


async def settle_turns(database_url: str, intervals: dict[int, float]) -> None:
    """Each installation in the reconciliation cycle, its last turn having settled on an
    interval, its next due in an hour."""
    store = open_store(database_url)
    await store.open()
    try:
        for installation, interval in intervals.items():
            await store.join_reconciliation(installation, f"org-{installation}", 0)
            turn = await store.claim_reconcile_turn("earlier", 60)
            assert turn is not None and turn.installation_id == installation
            assert await store.finish_reconcile_turn(installation, "earlier", next_in=3600, interval=interval)
    finally:
        await store.close()


async def status_stretched(fake, environ: dict[str, str], delivery: str) -> list[tuple[str, str]]:
    """What Moko's answer to `/moko status` says of the stretched interval."""
    async with run_moko(environ) as moko:
        payload = fake.event("issue_comment", "created", owner=ORG, repo=REPO, body="/moko status", sender="alice")
        assert (await moko.deliver("issue_comment", payload, delivery=delivery)).status == 202
    answer = [c["body"] for c in fake.comments(ORG, REPO, 1) if c["user"]["login"] == fake.bot_login][-1]
    assert "| repository | has\\_wiki | false | true | no |" in answer
    return STRETCHED.findall(answer)


async def test_status_tells_the_stretched_interval_only_of_its_own_installation_and_when_longer(org, tmp_path):
    # Its own installation checked every 10 min as configured; another one's stretched to 3 h.
    equal = f"sqlite:///{tmp_path}/equal.db"
    await settle_turns(equal, {INSTALLATION: 600, 7: 10800})
    assert await status_stretched(org, moko_environ(org, equal, MOKO_SWEEP_INTERVAL="600s"), "equal") == []

    longer = f"sqlite:///{tmp_path}/longer.db"
    await settle_turns(longer, {INSTALLATION: 7200})
    assert await status_stretched(org, moko_environ(org, longer, MOKO_SWEEP_INTERVAL="600s"), "longer") == [
        ("2 h", "10 min")]
    # Every second, the shortest interval there is: stretched to 2 h all the same.
    assert await status_stretched(org, moko_environ(org, longer, MOKO_SWEEP_INTERVAL="1s"), "second") == [
        ("2 h", "1 s")]
    # The reconciliation off (no MOKO_SWEEP_INTERVAL): what an earlier run settled on is not told.
    assert await status_stretched(org, moko_environ(org, longer), "off") == []


MERGED = "version: 1\nrepository:\n  has_issues: true\n  has_wiki: false\n  has_projects: false\n"
PROPOSED = "version: 1\nrepository:\n  has_issues: true\n  has_wiki: true\n  has_projects: false\n"


@pytest.fixture
def policy_org(fake_github):
    """The `.github` repository, compliant with its merged policy; alice triages it."""
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, ".github", **COMPLIANT)
    fake_github.set_protection(ORG, ".github", "main", DEFAULT_PROTECTION)
    fake_github.put_file(ORG, ".github", ".github/moko.yml", MERGED)
    fake_github.set_permission(ORG, ".github", "alice", "triage")
    return fake_github


async def plan_on(moko, fake, number: int, delivery: str, repo: str = ".github") -> str:
    payload = fake.event("issue_comment", "created", owner=ORG, repo=repo, issue_number=number,
                         body="/moko plan", user="alice")
    assert (await moko.deliver("issue_comment", payload, delivery=delivery)).status == 202
    return [c["body"] for c in fake.comments(ORG, repo, number) if c["user"]["login"] == fake.bot_login][-1]


def preview_runs(fake) -> list[dict]:
    return [run for run in fake.check_runs(ORG, ".github") if run["name"] == "Moko policy preview"]


async def test_plan_on_an_open_pull_request_changing_the_policy_runs_the_preview_on_its_head(policy_org, moko):
    pull = policy_org.add_pull_request(ORG, ".github", {".github/moko.yml": PROPOSED})
    answer = await plan_on(moko, policy_org, pull["number"], "rerun")
    [run] = preview_runs(policy_org)
    assert run["head_sha"] == pull["head"]["sha"]
    assert answer.endswith(
        f"Moko ran the policy preview again on {pull['head']['sha'][:7]}, this pull request's head: **neutral**, "
        f"{run['output']['title']}. The check run `Moko policy preview` holds the details.")


@pytest.mark.parametrize("pull_request", ["closed", "without the policy file", "of another repository"])
async def test_plan_on_a_closed_pull_request_or_one_not_changing_the_policy_plans_the_repository(
    policy_org, moko, pull_request
):
    repo = "widgets" if pull_request == "of another repository" else ".github"
    if repo != ".github":
        policy_org.add_repo(ORG, repo, **COMPLIANT)
        policy_org.set_protection(ORG, repo, "main", DEFAULT_PROTECTION)
        policy_org.set_permission(ORG, repo, "alice", "triage")
    changes = {"README.md": "docs\n"} if pull_request == "without the policy file" else {".github/moko.yml": PROPOSED}
    pull = policy_org.add_pull_request(ORG, repo, changes)
    if pull_request == "closed":
        policy_org.pull_request(ORG, repo, pull["number"])["state"] = "closed"
    answer = await plan_on(moko, policy_org, pull["number"], "plan", repo)
    assert preview_runs(policy_org) == [] and policy_org.check_runs(ORG, repo) == []
    assert f"**What `/moko apply` would change in acme/{repo}**" in answer
    assert "Nothing: it complies with the policy." in answer


async def test_audit_shows_as_many_records_as_asked_when_changes_left_pending_records_before_them(org, moko):
    org.set_permission(ORG, REPO, "mia", "maintain")
    for body, user in (("/moko apply", "mia"), ("/moko audit 3", "alice")):
        payload = org.event("issue_comment", "created", owner=ORG, repo=REPO, body=body, sender=user)
        assert (await moko.deliver("issue_comment", payload)).status == 202
    answer = [c["body"] for c in org.comments(ORG, REPO, 1) if c["user"]["login"] == org.bot_login][-1]
    rows = [line.split(" | ") for line in answer.splitlines() if line.startswith("| 20")]
    # Each change was recorded pending, then applied: the answer shows the outcomes.
    assert [(row[3], row[4], row[7]) for row in rows] == [
        ("command", "apply", "applied"), ("branch\\_protection", "main", "applied"),
        ("repository", "has\\_wiki", "applied")]


@pytest.mark.parametrize("body", ["/moko status", "/moko plan"])
async def test_a_failed_read_is_answered_and_recorded_with_github_s_words_cut_at_500_characters(org, moko, body):
    message = " ".join(["Server Error"] * 50)  # 649 characters
    org.fail("GET", rf"^/repos/{ORG}/{REPO}/branches/main/protection$", 500, body={"message": message}, times=10)
    payload = org.event("issue_comment", "created", owner=ORG, repo=REPO, body=body, sender="alice")
    assert (await moko.deliver("issue_comment", payload)).status == 202
    [answer] = [c["body"] for c in org.comments(ORG, REPO, 1) if c["user"]["login"] == org.bot_login]
    cut = f"500 {message}"[:499] + "…"
    assert answer.endswith(f" failed -->\nMoko could not finish: {cut}")
    [record] = settled(await moko.services.store.audit_records(repo=f"{ORG}/{REPO}"))
    assert (record.policy, record.field, record.outcome, record.error) == ("command", body[6:], "failed", cut)


async def command_record(moko, fake, body: str, user: str) -> tuple:
    """Send a command; the outcome and error of its own audit record."""
    payload = fake.event("issue_comment", "created", owner=ORG, repo=REPO, body=body, sender=user)
    assert (await moko.deliver("issue_comment", payload)).status == 202
    trail = settled(await moko.services.store.audit_records(repo=f"{ORG}/{REPO}", newest_first=True))
    [record] = [r for r in trail if r.policy == "command"][:1]
    return record.outcome, record.error


async def test_what_a_command_record_quotes_is_cut_to_its_length(org, moko):
    # A custom role's name, at most 40 characters.
    role = "Release managers of the widgets and gadgets"  # 43 characters
    org.set_permission(ORG, REPO, "cora", role, base_role="read")
    assert await command_record(moko, org, "/moko apply", "cora") == (
        "denied", f"/moko apply needs maintain or higher; {role[:39]}… has not "
        "(its legacy permission, the organization's custom roles unreadable: read)")

    # What was given instead of a count, at most 80 characters.
    given = "9" * 100
    outcome, error = await command_record(moko, org, f"/moko audit {given}", "alice")
    assert outcome == "failed" and f"“{given[:79]}…”" in error
    answer = [c["body"] for c in org.comments(ORG, REPO, 1) if c["user"]["login"] == org.bot_login][-1]
    assert f"“{given[:79]}…”" in answer

    # GitHub's words for a failed apply, at most 500.
    org.set_permission(ORG, REPO, "mia", "maintain")
    message = " ".join(["Refused"] * 100)
    org.fail("PATCH", rf"^/repos/{ORG}/{REPO}$", 422, body={"message": message})
    outcome, error = await command_record(moko, org, "/moko apply", "mia")
    assert outcome == "failed" and len(error) == 500 and error.endswith("…")


async def test_an_invalid_policy_s_problems_are_recorded_cut_at_1000_characters(org, moko):
    keys = "".join(f"  unknown_setting_number_{n:02d}: true\n" for n in range(60))
    org.add_repo(ORG, ".github", has_wiki=False, has_issues=True, has_projects=False)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nrepository:\n" + keys)
    outcome, error = await command_record(moko, org, "/moko status", "alice")
    assert outcome == "failed" and len(error) == 1000 and error.endswith("…")
    assert error.count("unknown_setting_number_") == 9


async def test_plan_of_a_repository_out_of_scope_says_it_is_left_alone(org, moko):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nscope:\n  exclude: ['widg*']\n")
    payload = org.event("issue_comment", "created", owner=ORG, repo=REPO, body="/moko plan", sender="alice")
    assert (await moko.deliver("issue_comment", payload)).status == 202
    [answer] = [c["body"] for c in org.comments(ORG, REPO, 1) if c["user"]["login"] == org.bot_login]
    assert answer.endswith(" -->\nMoko leaves acme/widgets alone: excluded by scope.exclude 'widg\\*'.")
