"""Who may run a `/moko` command, from outside: a custom role's base role found among several,
the custom roles' list missing from GitHub, and the rate limit's one-minute window at its edges."""

from __future__ import annotations

from handlers import command_text as text
from tests.support.org import INSTALLATION, ORG
from tests.test_commands import REPO, answers, command, drifted, org  # noqa: F401 (fixtures)


async def test_a_custom_role_is_judged_by_its_own_base_role_not_another_roles(fake_github, moko):
    fake_github.add_installation(INSTALLATION, ORG, permissions={"organization_custom_roles": "read"})
    fake_github.add_repo(ORG, REPO, has_wiki=True, has_issues=True, has_projects=False)
    # Two custom roles; the commenter's is the second GitHub lists.
    fake_github.set_permission(ORG, REPO, "tom", "bug-sorter", base_role="triage")
    fake_github.set_permission(ORG, REPO, "rel", "release-manager", base_role="maintain")
    await command(moko, fake_github, "/moko apply", user="rel")
    assert fake_github.repo(ORG, REPO)["has_wiki"] is False
    await command(moko, fake_github, "/moko apply", user="tom")
    assert answers(fake_github)[-1] == (
        f"{text.MARKER}\nSorry, `/moko apply` needs the **maintain** role or higher on this repository, "
        "and you have **bug-sorter**. **bug-sorter** is a custom role based on **triage**. Nothing was changed.")


async def test_custom_roles_github_does_not_list_fall_back_on_the_legacy_permission(fake_github, moko):
    # The list is an Enterprise Cloud endpoint: elsewhere GitHub answers 404, and the
    # commenter is judged by the legacy permission, as when the App may not read it.
    fake_github.add_installation(INSTALLATION, ORG, permissions={"organization_custom_roles": "read"})
    fake_github.add_repo(ORG, REPO, has_wiki=True)
    fake_github.set_permission(ORG, REPO, "rel", "release-manager", base_role="maintain")
    fake_github.fail("GET", f"^/orgs/{ORG}/custom-repository-roles$", 404)
    await command(moko, fake_github, "/moko apply", user="rel")
    assert answers(fake_github) == [
        f"{text.MARKER}\nSorry, `/moko apply` needs the **maintain** role or higher on this repository, "
        "and you have **release-manager**. **release-manager** is a custom role, and Moko may not read "
        "the organization's custom roles to learn its base role, so it fell back on GitHub's legacy "
        "permission **write** (where maintain counts as write and triage as read). Nothing was changed."
    ]
    assert fake_github.repo(ORG, REPO)["has_wiki"] is True


async def test_the_rate_limit_counts_the_commands_of_the_last_sixty_seconds(drifted, moko):  # noqa: F811
    now = [1_000_000.0]
    moko.services.clock = lambda: now[0]
    for _ in range(5):
        await command(moko, drifted, "/moko help", user="sprinter")
    now[0] += 59.5  # the five are still within the minute: the sixth is one too many
    await command(moko, drifted, "/moko help", user="sprinter")
    now[0] += 1.0  # 60.5 s after the five: only the refused one is left in the window
    await command(moko, drifted, "/moko help", user="sprinter")
    assert answers(drifted) == [f"{text.MARKER}\n{text.HELP}"] * 5 + [
        f"{text.MARKER}\n{text.THROTTLED}", f"{text.MARKER}\n{text.HELP}"]


async def test_a_commenter_github_no_longer_knows_has_no_role(drifted, moko):  # noqa: F811
    # GitHub answers 404 for a login it does not know (an account deleted or renamed since it
    # commented): no role, refused as anyone without one is, not a failed command.
    drifted.fail("GET", f"^/repos/{ORG}/{REPO}/collaborators/gone/permission$", 404)
    await command(moko, drifted, "/moko audit", user="gone")
    assert answers(drifted) == [
        f"{text.MARKER}\nSorry, `/moko audit` needs the **triage** role or higher on this repository, "
        "and you have **none**."]
