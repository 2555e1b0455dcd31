"""The non-compliance issue's rows and its failures, from outside: Moko with its real handlers
against the fake GitHub. Each kind of finding is a row of its own, word for word (a change
GitHub refused, one undone because a later one failed, one held for a person, a field Moko
cannot read); a failed request about the issue is recorded failed and tried again by the next
remediation; GitHub's 410 for issues turned off is a skip, not a failure; Moko's own issues
without the marker, and pull requests, are never taken for the notice."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from structlog.testing import capture_logs

from bot.audit import settled
from bot.store.base import DONE, FAILED
from handlers import noncompliance
from tests.support.harness import moko_environ
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG
from tests.test_sweep import sweep

TITLE = "Moko: this repository does not meet policy"
MARKER = "<!-- moko:noncompliance -->"
INTRO = (
    "Moko could not bring this repository in line with the organization's policy "
    "(`.github/moko.yml` in its `.github` repository). What is wrong:"
)
OUTRO = (
    "Moko updates this issue while the repository does not meet policy, and closes it once "
    "it does. `/moko status` in a comment shows the current state."
)
HEADER = "| field | what is wrong | why Moko could not fix it |\n|---|---|---|"
CLOSING = "The repository meets policy now, so Moko closes this issue."
REPO = "stuck"
ISSUES = rf"^/repos/{ORG}/{REPO}/issues"
# 400 characters of GitHub's words: the issue shows the first 299 and an ellipsis.
LONG_MESSAGE = "refused " * 50
MISSING = "reading it needs the contents&#58; write permission, which the App's installation was not granted"


@pytest.fixture
def org(fake_github):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, ".github", **COMPLIANT)
    fake_github.set_protection(ORG, ".github", "main", DEFAULT_PROTECTION)
    return fake_github


def policy(fake, text: str) -> None:
    fake.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nnotify: issue\n" + text)


def body_of(*rows: str) -> str:
    return f"{MARKER}\n{INTRO}\n\n{HEADER}\n" + "\n".join(rows) + f"\n\n{OUTRO}\n"


async def remediate(moko, fake, delivery: str) -> None:
    payload = fake.event("installation_repositories", "added", owner=ORG,
                         repositories_added=[fake.repo(ORG, REPO)])
    fake.reset_calls()
    assert (await moko.deliver("installation_repositories", payload, delivery=delivery)).status == 202


def moko_issues(fake) -> list[dict]:
    return [i for i in fake.issues(ORG, REPO) if i["user"]["login"] == fake.bot_login]


async def notice_records(moko) -> list[tuple]:
    trail = settled(await moko.services.store.audit_records(repo=f"{ORG}/{REPO}"))
    return [(r.before, r.after, r.outcome, r.error) for r in trail if r.policy == "notify"]


async def test_a_refused_change_and_the_one_undone_after_it_are_rows_word_for_word(org, moko):
    policy(org, "repository:\n  has_wiki: false\n  allow_squash_merge: false\n")
    org.add_repo(ORG, REPO, has_wiki=True, has_issues=True, has_projects=False)
    org.fail("PUT", rf"^/repos/{ORG}/{REPO}/branches/main/protection$", 422,
             body={"message": LONG_MESSAGE.strip()})
    await remediate(moko, org, "rows-1")

    assert org.repo(ORG, REPO)["has_wiki"] is True  # undone
    [issue] = moko_issues(org)
    why = ("422 " + LONG_MESSAGE.strip())[:299] + "…"
    assert issue["title"] == TITLE
    assert issue["body"] == body_of(
        "| branch\\_protection.main | protect branch main: required\\_status\\_checks=null, enforce\\_admins=false, "
        f"required\\_pull\\_request\\_reviews.required\\_approving\\_review\\_count=1, restrictions=null | {why} |",
        "| repository.has\\_wiki | has\\_wiki: true → false "
        "| undone, because a later change of the same remediation failed |",
        f"| repository.allow\\_squash\\_merge | Moko cannot tell whether it complies | {MISSING} |",
    )


async def test_a_change_held_for_a_person_is_a_row(org, moko):
    policy(org, "branches:\n  - {name: default, protection: null}\n")
    org.add_repo(ORG, REPO, **COMPLIANT)
    org.add_branch(ORG, REPO, "maint")
    org.add_protection_rule(ORG, REPO, "mai*", DEFAULT_PROTECTION)
    await remediate(moko, org, "held-1")

    [issue] = moko_issues(org)
    assert issue["body"] == body_of(
        "| branch\\_protection.main | not changed | protected by the rule mai\\*, which other branches "
        "share&#58; Moko does not remove it |")
    assert org.protection_rules(ORG, REPO) == {"mai*": DEFAULT_PROTECTION}


async def test_failed_requests_about_the_issue_are_recorded_and_tried_again(org, moko):
    policy(org, "")
    org.add_repo(ORG, REPO, has_wiki=True, has_issues=True, has_projects=False)
    org.set_protection(ORG, REPO, "main", DEFAULT_PROTECTION)
    refused = {"message": "Resource not accessible by integration"}
    org.fail("PATCH", rf"^/repos/{ORG}/{REPO}$", 422, body={"message": "wikis stay"}, times=3)

    # Opening it fails: recorded, and the next remediation opens it.
    org.fail("POST", rf"{ISSUES}$", 403, body=refused)
    await remediate(moko, org, "open-1")
    assert moko_issues(org) == []
    assert await notice_records(moko) == [(None, "open", "failed", "403 Resource not accessible by integration")]
    await remediate(moko, org, "open-2")
    [issue] = moko_issues(org)
    number = issue["number"]
    assert (await notice_records(moko))[1:] == [(None, number, "applied", None)]

    # Updating it fails the same way, with what it would have said.
    org.repo(ORG, REPO)["has_projects"] = True
    org.fail("PATCH", rf"{ISSUES}/{number}$", 403, body=refused)
    await remediate(moko, org, "update-1")
    assert "has\\_projects" not in org.issues(ORG, REPO)[0]["body"]
    assert (await notice_records(moko))[2:] == [(number, number, "failed", "403 Resource not accessible by integration")]

    # Fixed (the wiki is taken now), but the closing comment is refused: the issue stays open, and no PATCH closes it.
    org.repo(ORG, REPO)["has_projects"] = False
    org.fail("POST", rf"{ISSUES}/{number}/comments$", 403, body=refused)
    await remediate(moko, org, "close-1")
    assert org.count("PATCH", rf"{ISSUES}/{number}$") == 0
    assert [i["state"] for i in moko_issues(org)] == ["open"]
    assert (await notice_records(moko))[3:] == [(number, None, "failed", "403 Resource not accessible by integration")]

    # A repository that complies is looked at again by the next remediation that fixes something.
    org.repo(ORG, REPO)["has_wiki"] = True
    await remediate(moko, org, "close-2")
    assert [i["state"] for i in moko_issues(org)] == ["closed"]
    assert [c["body"] for c in org.comments(ORG, REPO, number)] == [f"{MARKER}\n{CLOSING}"]
    assert (await notice_records(moko))[4:] == [(number, None, "applied", None)]


async def test_issues_turned_off_after_the_read_is_a_skip_not_a_failure(org, moko):
    policy(org, "")
    org.add_repo(ORG, REPO, has_wiki=True, has_issues=True, has_projects=False)
    org.set_protection(ORG, REPO, "main", DEFAULT_PROTECTION)
    org.fail("PATCH", rf"^/repos/{ORG}/{REPO}$", 422, body={"message": "wikis stay"})
    org.fail("POST", rf"{ISSUES}$", 410, body={"message": "Issues are disabled for this repo"})
    with capture_logs() as logs:
        await remediate(moko, org, "gone-1")
    told = [(e["event"], e.get("reason")) for e in logs if e["event"].startswith("notice_")]
    assert told == [("notice_skipped", "issues are turned off")]
    assert moko_issues(org) == []


async def test_only_moko_s_open_issue_with_the_marker_is_the_notice(org, moko):
    policy(org, "")
    org.add_repo(ORG, REPO, has_wiki=True, has_issues=True, has_projects=False)
    org.set_protection(ORG, REPO, "main", DEFAULT_PROTECTION)
    org.fail("PATCH", rf"^/repos/{ORG}/{REPO}$", 422, body={"message": "wikis stay"})
    other = org.add_issue(ORG, REPO, "Something else", body="Opened by Moko, no marker", user=org.bot_login)
    pull = org.add_issue(ORG, REPO, "A pull request", body=f"{MARKER}\nquoted", user=org.bot_login)
    pull["pull_request"] = {"url": f"{org.url}/repos/{ORG}/{REPO}/pulls/{pull['number']}"}
    await remediate(moko, org, "own-1")

    assert org.count("PATCH", rf"{ISSUES}/\d+$") == 0
    assert other["body"] == "Opened by Moko, no marker" and pull["body"] == f"{MARKER}\nquoted"
    [notice] = [i for i in moko_issues(org) if i["title"] == TITLE]
    assert notice["number"] not in (other["number"], pull["number"])


async def notice_beyond_a_full_page(org, tmp_path, refusals: int) -> Callable[[], Awaitable[int]]:
    """A repository whose wiki GitHub refuses to turn off (``refusals`` times), with ten older
    open issues by Moko (a user's token, say) filling the batched read's page, swept once: the
    notice opened is not on that page. Answers a sweep of the organization again (its exit code)."""
    policy(org, "")
    org.add_repo(ORG, REPO, has_wiki=True, has_issues=True, has_projects=False)
    org.set_protection(ORG, REPO, "main", DEFAULT_PROTECTION)
    org.fail("PATCH", rf"^/repos/{ORG}/{REPO}$", 422, body={"message": "wikis stay"}, times=refusals)
    for n in range(10):
        org.add_issue(ORG, REPO, f"Report {n}", body="Opened by Moko, no marker", user=org.bot_login)
    env = moko_environ(org, f"sqlite:///{tmp_path}/moko.db")

    async def again() -> int:
        return (await sweep(env))[0]

    assert await again() == 1
    return again


async def test_a_notice_the_batched_read_did_not_reach_is_asked_for_before_one_is_opened(org, tmp_path):
    sweep = await notice_beyond_a_full_page(org, tmp_path, refusals=2)
    [notice] = [i for i in moko_issues(org) if i["title"] == TITLE]
    org.reset_calls()

    assert await sweep() == 1
    assert [i["number"] for i in moko_issues(org) if i["title"] == TITLE] == [notice["number"]]
    assert [f"{c.method} {c.path}" for c in org.calls if "/issues" in c.path] == [f"GET /repos/{ORG}/{REPO}/issues"]


async def test_a_notice_the_batched_read_did_not_reach_is_closed_once_the_repository_complies(org, tmp_path):
    sweep = await notice_beyond_a_full_page(org, tmp_path, refusals=1)
    org.repo(ORG, REPO)["has_wiki"] = False  # fixed by a person: nothing left to write

    assert await sweep() == 0
    [notice] = [i for i in moko_issues(org) if i["title"] == TITLE]
    assert notice["state"] == "closed"
    assert all(i["state"] == "open" for i in moko_issues(org) if i["title"] != TITLE)


async def test_a_global_dry_run_opens_no_issue_even_for_what_it_cannot_fix(org, tmp_path):
    # A rule other branches share is held for a person: a row without a write, which a dry run
    # would still find. Under MOKO_DRY_RUN Moko writes nothing to GitHub, the issue included.
    policy(org, "branches:\n  - {name: default, protection: null}\n")
    org.add_repo(ORG, REPO, **COMPLIANT)
    org.add_branch(ORG, REPO, "maint")
    org.add_protection_rule(ORG, REPO, "mai*", DEFAULT_PROTECTION)
    code, doc, _ = await sweep(moko_environ(org, f"sqlite:///{tmp_path}/moko.db", MOKO_DRY_RUN="true"))

    assert code == 1
    [result] = [r for r in doc["results"] if r["repo"] == f"{ORG}/{REPO}"]
    assert result["outcome"] == "failed" and "mai*" in result["error"]
    assert moko_issues(org) == []
    assert [c for c in org.calls if c.method != "GET" and c.path.startswith("/repos/")] == []
    assert org.protection_rules(ORG, REPO) == {"mai*": DEFAULT_PROTECTION}


async def test_a_remediation_that_failed_before_its_plan_fails_with_github_s_words(org, moko):
    # main is protected by a wildcard rule, which only the REST read can tell apart, and GitHub
    # refuses that read: with no plan there is nothing to tell in an issue, and the delivery
    # fails with GitHub's words.
    policy(org, "")
    org.add_repo(ORG, REPO, **COMPLIANT)
    org.add_protection_rule(ORG, REPO, "mai*", DEFAULT_PROTECTION)
    org.fail("GET", rf"^/repos/{ORG}/{REPO}/branches/main/protection$", 422, times=10,
             body={"message": "Repository access blocked", "documentation_url": "https://docs.github.com/rest"})
    await remediate(moko, org, "unread-1")
    delivery = await moko.services.store.get_delivery("unread-1")
    assert delivery.state == FAILED
    assert delivery.error.endswith(f"{ORG}/{REPO}: 422 Repository access blocked"), delivery.error
    assert moko_issues(org) == [] and org.count("GET", ISSUES) == 0
    assert org.protection_rules(ORG, REPO) == {"mai*": DEFAULT_PROTECTION}


async def test_a_renamed_repository_fixed_by_moko_gets_its_notice_closed(org, moko):
    # repository.renamed (as unarchived, transferred, privatized, publicized) remediates from
    # the payload alone, with no batched read: a fix still makes Moko look for its notice.
    policy(org, "repository:\n  has_wiki: false\n")
    org.add_repo(ORG, REPO, has_wiki=True, has_issues=True, has_projects=False)
    org.set_protection(ORG, REPO, "main", DEFAULT_PROTECTION)
    org.fail("PATCH", rf"^/repos/{ORG}/{REPO}$", 422, body={"message": "wikis stay"})
    await remediate(moko, org, "refused-1")
    [notice] = moko_issues(org)
    assert notice["state"] == "open"

    renamed = org.event("repository", "renamed", owner=ORG, repo=REPO)
    assert (await moko.deliver("repository", renamed, delivery="renamed-1")).status == 202
    assert org.repo(ORG, REPO)["has_wiki"] is False
    assert [i["state"] for i in moko_issues(org)] == ["closed"]
    assert [c["body"] for c in org.comments(ORG, REPO, notice["number"])] == [f"{MARKER}\n{CLOSING}"]
    assert (await moko.services.store.get_delivery("renamed-1")).state == DONE


@pytest.mark.parametrize("over", [0, 1])
def test_the_issue_table_fills_60000_characters_and_leaves_out_the_row_beyond(over):
    # GitHub refuses an issue body over 65,536 characters: the table takes rows up to 60,000
    # characters (each line with its newline), and says how many it left out.
    header = f"{HEADER}\n"
    cells: list[tuple[str, str, str]] = []
    rows: list[str] = []  # each as the table shows it

    def add(why: str) -> str:
        cells.append((f"repository.f{len(cells):05}", "wrong", why))
        rows.append("| " + " | ".join(cells[-1]) + " |")
        return rows[-1]

    used = len(header)
    while used < 60_000 - 200:
        used += len(add("x" * 100)) + 1
    empty_row = len(f"| repository.f{len(cells):05} | wrong |  |")
    last = add("x" * (60_000 - used - 1 - empty_row + over))
    assert used + len(last) + 1 == 60_000 + over

    body = noncompliance.issue_body(cells)
    table, note = body.split("\n\n")[1:3]
    if over:
        assert last not in body and rows[-2] in table
        assert note == "_1 more rows left out: the comment would be too long._"
    else:
        assert table == header + "\n".join(rows) and len(table) == 60_000 - 1
        assert "left out" not in body
