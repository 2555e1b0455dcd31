"""API calls per handled event, for each remediation scenario: the number Moko is judged on.

Runs the real Moko in-process against the fake GitHub (tests/fakegithub) and counts the
requests each delivery costs, in two columns: calls about the repository itself, and every
call (an installation token, the organization's policy file, the GraphQL schema's
introspection before the first batched read) for a cold process.

    python bench/api_calls.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.logs import configure_logging  # noqa: E402
from tests.fakegithub.server import FakeGitHub  # noqa: E402
from tests.support.harness import RunningMoko, moko_environ, run_moko  # noqa: E402
from tests.support.org import COMPLIANT, ORG  # noqa: E402
from tests.support.org import DEFAULT_PROTECTION as PROTECTION  # noqa: E402

Scenario = Callable[[FakeGitHub, RunningMoko], Awaitable[None]]


async def new_repository_drifted(fake: FakeGitHub, moko: RunningMoko) -> None:
    fake.add_repo(ORG, "new", has_wiki=True, has_issues=True, has_projects=False)
    await moko.deliver("repository", fake.event("repository", "created", owner=ORG, repo="new"))


async def new_repository_compliant(fake: FakeGitHub, moko: RunningMoko) -> None:
    fake.add_repo(ORG, "tidy", **COMPLIANT)
    await moko.deliver("repository", fake.event("repository", "created", owner=ORG, repo="tidy"))


async def new_empty_repository(fake: FakeGitHub, moko: RunningMoko) -> None:
    fake.add_repo(ORG, "empty", empty=True, **COMPLIANT)
    await moko.deliver("repository", fake.event("repository", "created", owner=ORG, repo="empty"))


def _protected(fake: FakeGitHub, name: str, **fields: object) -> None:
    fake.add_repo(ORG, name, **{**COMPLIANT, **fields})
    fake.set_protection(ORG, name, "main", PROTECTION)


async def first_push_to_empty_repository(fake: FakeGitHub, moko: RunningMoko) -> None:
    fake.add_repo(ORG, "later", empty=True, **COMPLIANT)
    await moko.deliver("repository", fake.event("repository", "created", owner=ORG, repo="later"))
    fake.add_branch(ORG, "later", "main")
    fake.reset_calls()
    await moko.deliver("push", fake.event("push", owner=ORG, repo="later", ref="refs/heads/main",
                                          before="0" * 40, created=True))


async def description_edited_wiki_on(fake: FakeGitHub, moko: RunningMoko) -> None:
    # Turning the wiki on sends no webhook; a later description edit's payload shows it.
    _protected(fake, "wiki", has_wiki=True)
    await moko.deliver("repository", fake.event("repository", "edited", owner=ORG, repo="wiki",
                                                 changes={"description": {"from": None}}))


async def own_edit_echoed_back(fake: FakeGitHub, moko: RunningMoko) -> None:
    _protected(fake, "echo")
    await moko.deliver("repository", fake.event("repository", "edited", owner=ORG, repo="echo",
                                                 sender=fake.bot_login, changes={"description": {"from": None}}))


async def default_branch_moved(fake: FakeGitHub, moko: RunningMoko) -> None:
    _protected(fake, "moved")
    fake.add_branch(ORG, "moved", "trunk")
    fake.repo(ORG, "moved")["default_branch"] = "trunk"
    await moko.deliver("repository", fake.event("repository", "edited", owner=ORG, repo="moved",
                                                 changes={"default_branch": {"from": "main"}}))


async def privatized_compliant(fake: FakeGitHub, moko: RunningMoko) -> None:
    _protected(fake, "hidden", private=True, visibility="private")
    await moko.deliver("repository", fake.event("repository", "privatized", owner=ORG, repo="hidden"))


async def protection_deleted(fake: FakeGitHub, moko: RunningMoko) -> None:
    _protected(fake, "bare")
    fake.set_protection(ORG, "bare", "main", None)
    await moko.deliver("branch_protection_rule",
                       fake.event("branch_protection_rule", "deleted", owner=ORG, repo="bare", branch="main"))


async def protection_edited_still_compliant(fake: FakeGitHub, moko: RunningMoko) -> None:
    _protected(fake, "steady")
    await moko.deliver("branch_protection_rule", fake.event(
        "branch_protection_rule", "edited", owner=ORG, repo="steady", branch="main", protection=PROTECTION))


async def invalid_policy_file(fake: FakeGitHub, moko: RunningMoko) -> None:
    fake.add_repo(ORG, ".github", **COMPLIANT)
    fake.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nrepository:\n  has_wikki: false\n")
    fake.add_repo(ORG, "victim", has_wiki=True)
    await moko.deliver("repository", fake.event("repository", "created", owner=ORG, repo="victim"))


async def rollback_after_failed_protection(fake: FakeGitHub, moko: RunningMoko) -> None:
    fake.add_repo(ORG, "fragile", has_wiki=True, has_issues=True, has_projects=False)
    fake.fail("PUT", f"^/repos/{ORG}/fragile/branches/main/protection$", 422,
              body={"message": "Validation Failed"})
    await moko.deliver("repository", fake.event("repository", "created", owner=ORG, repo="fragile"))


async def dry_run_new_repository(fake: FakeGitHub, moko: RunningMoko) -> None:
    fake.add_repo(ORG, ".github", **COMPLIANT)
    fake.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nmode: dry-run\n")
    fake.add_repo(ORG, "draft", has_wiki=True)
    await moko.deliver("repository", fake.event("repository", "created", owner=ORG, repo="draft"))


async def installation_of_ten_repositories(fake: FakeGitHub, moko: RunningMoko) -> None:
    names = [f"r{i}" for i in range(10)]
    for name in names[:7]:
        _protected(fake, name)
    for name in names[7:]:
        fake.add_repo(ORG, name, has_wiki=True)
    await moko.deliver("installation", fake.event("installation", "created", owner=ORG, repositories=[
        {"id": fake.repo(ORG, n)["id"], "node_id": fake.repo(ORG, n)["node_id"], "name": n,
         "full_name": f"{ORG}/{n}", "private": False} for n in names]))


SCENARIOS: list[tuple[str, Scenario]] = [
    ("repository.created, wiki on", new_repository_drifted),
    ("repository.created, compliant", new_repository_compliant),
    ("repository.created, empty repository", new_empty_repository),
    ("push, first branch of an empty repository", first_push_to_empty_repository),
    ("repository.edited (description), wiki turned on without a webhook", description_edited_wiki_on),
    ("repository.edited by Moko itself", own_edit_echoed_back),
    ("repository.edited, default branch moved to an unprotected branch", default_branch_moved),
    ("repository.privatized, compliant", privatized_compliant),
    ("branch_protection_rule.deleted", protection_deleted),
    ("branch_protection_rule.edited, still compliant", protection_edited_still_compliant),
    ("repository.created, invalid policy file", invalid_policy_file),
    ("repository.created, protection fails, rollback", rollback_after_failed_protection),
    ("repository.created, mode: dry-run", dry_run_new_repository),
    ("installation.created, 10 repositories (3 drifted)", installation_of_ten_repositories),
]


async def measure(scenario: Scenario) -> tuple[int, int, str]:
    fake = FakeGitHub()
    await fake.start()
    try:
        fake.add_installation(1, ORG)
        with tempfile.TemporaryDirectory() as tmp:
            async with run_moko(moko_environ(fake, f"sqlite:///{tmp}/moko.db")) as moko:
                await scenario(fake, moko)
        repo_calls = [c for c in fake.calls if c.path.startswith(f"/repos/{ORG}/") and "/.github/" not in c.path
                      and not c.path.startswith(f"/repos/{ORG}/.github/")]
        kinds = ", ".join(f"{c.method} {c.path.split(f'/repos/{ORG}/', 1)[1]}" for c in repo_calls) or "none"
        return len(repo_calls), len(fake.calls), kinds
    finally:
        await fake.close()


async def main() -> None:
    configure_logging("warning", "json")
    print("| scenario | calls about the repository | all calls, cold process | which |")
    print("|---|---:|---:|---|")
    for name, scenario in SCENARIOS:
        repo_calls, all_calls, kinds = await measure(scenario)
        print(f"| {name} | {repo_calls} | {all_calls} | {kinds} |")


if __name__ == "__main__":
    asyncio.run(main())
