"""`/moko` commands from outside: signed issue_comment webhooks drive Moko against the fake
GitHub; answers, reactions, every API call and the audit trail are checked."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from bot.audit import settled
from bot.store.base import DONE, FAILED
from handlers import command_text as text
from tests.support.harness import run_moko
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG

REPO = "widgets"
PROTECTION_CELL = (
    "protected: required\\_status\\_checks=null, enforce\\_admins=false, "
    "required\\_pull\\_request\\_reviews.required\\_approving\\_review\\_count=1, restrictions=null"
)
COMMENTS = f"/repos/{ORG}/{REPO}/issues/1/comments"


def reactions_path(comment_id: int) -> str:
    return f"/repos/{ORG}/{REPO}/issues/comments/{comment_id}/reactions"


@pytest.fixture
def org(fake_github):
    fake_github.add_installation(INSTALLATION, ORG)
    return fake_github


@pytest.fixture
def drifted(org):
    """A repository with its wiki on and its default branch unprotected; alice triages it."""
    org.add_repo(ORG, REPO, has_wiki=True, has_issues=True, has_projects=False)
    org.set_permission(ORG, REPO, "alice", "triage")
    return org


def comment(fake, body: str, user: str = "alice", action: str = "created", **kwargs):
    return fake.event("issue_comment", action, owner=ORG, repo=REPO, body=body, sender=user, **kwargs)


async def command(moko, fake, body: str, user: str = "alice", delivery: str | None = None):
    """Send a command; return the commenter's comment (as the payload holds it) and the reply."""
    payload = comment(fake, body, user)
    fake.reset_calls()
    reply = await moko.deliver("issue_comment", payload, delivery=delivery)
    assert reply.status == 202
    return payload["comment"], reply


def answers(fake) -> list[str]:
    """The bodies of Moko's comments on issue 1, without the delivery's marker after MARKER."""
    return [re.sub(r"^(<!-- moko:command -->)<!-- moko:delivery [^ ]* [a-z-]+ -->", r"\1", c["body"])
            for c in fake.comments(ORG, REPO, 1) if c["user"]["login"] == fake.bot_login]


def reactions(fake, comment_id: int) -> list[str]:
    return [r["content"] for r in fake.reactions(comment_id)]


def calls(fake) -> list[tuple[str, str]]:
    return [(c.method, c.path) for c in fake.calls if not c.path.startswith("/app/")]


def writes(fake) -> list[tuple[str, str]]:
    return [(c.method, c.path) for c in fake.calls if c.method in ("PATCH", "PUT", "DELETE")]


async def trail(moko, policy: str | None = None):
    records = settled(await moko.services.store.audit_records(repo=f"{ORG}/{REPO}"))
    return [r for r in records if policy in (None, r.policy)]


async def test_status_answers_a_table_and_writes_nothing(drifted, moko):
    asked, _ = await command(moko, drifted, "/moko status")
    assert answers(drifted) == [
        "<!-- moko:command -->\n"
        "**Status of acme/widgets**\n\n"
        "❌ 2 of 4 items differ from the policy; `/moko plan` lists what `/moko apply` would change.\n\n"
        "| policy | field | wanted | actual | compliant |\n"
        "|---|---|---|---|---|\n"
        "| repository | has\\_issues | true | true | yes |\n"
        "| repository | has\\_wiki | false | true | no |\n"
        "| repository | has\\_projects | false | false | yes |\n"
        f"| branch\\_protection | main \\(default branch\\) | {PROTECTION_CELL} | not protected | no |"
    ]
    assert reactions(drifted, asked["id"]) == ["eyes", "rocket"]
    # The payload holds the settings: no repository read; the protection is read once, and
    # as it is not protected, the rules rulesets may put on it.
    assert calls(drifted) == [
        ("POST", reactions_path(asked["id"])),
        ("GET", f"/repos/{ORG}/{REPO}/collaborators/alice/permission"),
        ("GET", f"/repos/{ORG}/.github/contents/.github/moko.yml"),
        ("GET", f"/repos/{ORG}/{REPO}/branches/main/protection"),
        ("GET", f"/repos/{ORG}/{REPO}/rules/branches/main"),
        ("POST", COMMENTS),
        ("POST", reactions_path(asked["id"])),
    ]
    assert drifted.repo(ORG, REPO)["has_wiki"] is True
    [record] = await trail(moko)
    assert (record.policy, record.field, record.outcome, record.actor, record.trigger) == (
        "command", "status", "applied", "alice", "command:status")
    assert record.run_id.startswith("cmd-")
    assert record.after["command"] == "/moko status"


async def test_status_of_a_compliant_repository(org, moko):
    org.add_repo(ORG, REPO, **COMPLIANT)
    org.set_permission(ORG, REPO, "alice", "triage")
    org.set_protection(ORG, REPO, "main", {**DEFAULT_PROTECTION, "required_linear_history": True})
    await command(moko, org, "/moko status")
    [answer] = answers(org)
    assert "✅ It complies with the policy." in answer
    assert answer.endswith(f"| branch\\_protection | main \\(default branch\\) | {PROTECTION_CELL} | as wanted | yes |")
    assert writes(org) == []


async def test_status_names_the_protection_keys_that_differ(org, moko):
    org.add_repo(ORG, REPO, **COMPLIANT)
    org.set_permission(ORG, REPO, "alice", "triage")
    org.set_protection(ORG, REPO, "main", {
        **DEFAULT_PROTECTION, "required_pull_request_reviews": {"required_approving_review_count": 0}})
    await command(moko, org, "/moko status")
    [answer] = answers(org)
    assert answer.endswith(
        f"| {PROTECTION_CELL} | differs in required\\_pull\\_request\\_reviews.required\\_approving\\_review\\_count | no |")


async def test_plan_lists_the_changes_apply_would_make(drifted, moko):
    asked, _ = await command(moko, drifted, "/moko plan")
    assert answers(drifted) == [
        "<!-- moko:command -->\n"
        "**What `/moko apply` would change in acme/widgets**\n\n"
        "- has\\_wiki: true → false\n"
        "- protect branch main: " + PROTECTION_CELL.removeprefix("protected: ")
    ]
    assert reactions(drifted, asked["id"]) == ["eyes", "rocket"]
    assert writes(drifted) == []
    assert [(r.field, r.outcome) for r in await trail(moko)] == [("plan", "applied")]


async def test_help_answers_with_the_help_text(drifted, moko):
    asked, _ = await command(moko, drifted, "Could you tell me?\n/moko help")
    assert answers(drifted) == [f"{text.MARKER}\n{text.HELP}"]
    assert reactions(drifted, asked["id"]) == ["eyes", "rocket"]
    # Help needs neither the policy nor the repository.
    assert calls(drifted) == [
        ("POST", reactions_path(asked["id"])), ("POST", COMMENTS), ("POST", reactions_path(asked["id"]))]


async def test_unknown_command_gets_help_and_what_was_wrong(drifted, moko):
    asked, _ = await command(moko, drifted, "/moko deploy now")
    assert answers(drifted) == [
        f"{text.MARKER}\nMoko could not run that command: there is no command “deploy”.\n\n{text.HELP}"]
    assert reactions(drifted, asked["id"]) == ["eyes", "confused"]
    [record] = await trail(moko)
    assert (record.field, record.outcome, record.error) == ("unknown", "failed", "there is no command “deploy”.")


async def test_bad_audit_count_gets_help(drifted, moko):
    await command(moko, drifted, "/moko audit 500")
    [answer] = answers(drifted)
    assert "`audit` takes one number from 1 to 50, not “500”." in answer and text.HELP in answer


async def test_echoed_text_cannot_mention_or_inject_html(drifted, moko):
    await command(moko, drifted, "/moko status @org/team <script>alert('x')</script> **now**")
    [answer] = answers(drifted)
    assert "@org/team" not in answer and "<script>" not in answer and "**now**" not in answer
    assert (
        "`status` takes no arguments, but was given "
        "“@&#8203;org/team &lt;script&gt;alert\\('x'\\)&lt;/script&gt; \\*\\*now\\*\\*”."
    ) in answer
    assert writes(drifted) == []


async def test_apply_by_a_read_user_is_denied_and_changes_nothing(drifted, moko):
    drifted.set_permission(ORG, REPO, "rita", "read")
    asked, reply = await command(moko, drifted, "/moko apply", user="rita", delivery="deny-1")
    assert answers(drifted) == [
        f"{text.MARKER}\nSorry, `/moko apply` needs the **maintain** role or higher on this repository, "
        "and you have **read**. Nothing was changed."
    ]
    assert reactions(drifted, asked["id"]) == ["eyes", "confused"]
    assert writes(drifted) == []
    assert calls(drifted) == [
        ("POST", reactions_path(asked["id"])),
        ("GET", f"/repos/{ORG}/.github/contents/.github/moko.yml"),
        ("GET", f"/repos/{ORG}/{REPO}/collaborators/rita/permission"),
        ("POST", COMMENTS),
        ("POST", reactions_path(asked["id"])),
    ]
    assert drifted.repo(ORG, REPO)["has_wiki"] is True
    [record] = await trail(moko)
    assert (record.run_id, record.trigger, record.actor, record.policy, record.field, record.outcome) == (
        "cmd-deny-1", "command:apply", "rita", "command", "apply", "denied")
    assert record.error == "/moko apply needs maintain or higher; read has not"
    assert (await moko.services.store.get_delivery("deny-1")).state == DONE


async def test_apply_by_a_maintainer_remediates(drifted, moko):
    drifted.set_permission(ORG, REPO, "mia", "maintain")
    asked, _ = await command(moko, drifted, "/moko apply", user="mia", delivery="apply-1")
    assert drifted.repo(ORG, REPO)["has_wiki"] is False
    assert drifted.protection(ORG, REPO, "main") is not None
    assert answers(drifted) == [
        "<!-- moko:command -->\n"
        "**What Moko did in acme/widgets**\n\n"
        "- has\\_wiki: true → false — **done**\n"
        "- protect branch main: " + PROTECTION_CELL.removeprefix("protected: ") + " — **done**"
    ]
    assert reactions(drifted, asked["id"]) == ["eyes", "rocket"]
    assert writes(drifted) == [
        ("PATCH", f"/repos/{ORG}/{REPO}"), ("PUT", f"/repos/{ORG}/{REPO}/branches/main/protection")]
    records = await trail(moko)
    assert [(r.policy, r.field, r.outcome) for r in records] == [
        ("repository", "has_wiki", "applied"),
        ("branch_protection", "main", "applied"),
        ("command", "apply", "applied"),
    ]
    assert {(r.run_id, r.trigger, r.actor) for r in records} == {("cmd-apply-1", "command:apply", "mia")}

    # Applied again, a compliant repository costs no write.
    await command(moko, drifted, "/moko apply", user="mia")
    assert answers(drifted)[-1].endswith("Nothing to do: it complies with the policy.")
    assert writes(drifted) == []


async def test_apply_goes_on_when_github_refuses_its_reactions(drifted, moko):
    # The eyes and the rocket only say how far Moko got; GitHub failing them, every retry
    # included, must not leave the repository drifted and the command unanswered.
    drifted.set_permission(ORG, REPO, "mia", "maintain")
    drifted.fail("POST", r"/issues/comments/\d+/reactions$", 502, times=1000)
    asked, _ = await command(moko, drifted, "/moko apply", user="mia", delivery="apply-unreacted")
    assert drifted.repo(ORG, REPO)["has_wiki"] is False
    assert drifted.protection(ORG, REPO, "main") is not None
    [answer] = answers(drifted)
    assert answer.endswith(" — **done**") and "has\\_wiki: true → false — **done**" in answer
    assert reactions(drifted, asked["id"]) == []
    assert drifted.arrived("POST", r"/reactions$") >= 2  # both were tried
    assert [(r.policy, r.field, r.outcome) for r in await trail(moko)] == [
        ("repository", "has_wiki", "applied"),
        ("branch_protection", "main", "applied"),
        ("command", "apply", "applied"),
    ]
    assert (await moko.services.store.get_delivery("apply-unreacted")).state == DONE


async def test_a_custom_role_based_on_maintain_may_apply_when_github_tells_its_base(fake_github, moko):
    # The App was granted the organization permission that lists custom repository roles.
    fake_github.add_installation(INSTALLATION, ORG, permissions={"organization_custom_roles": "read"})
    fake_github.add_repo(ORG, REPO, has_wiki=True, has_issues=True, has_projects=False)
    fake_github.set_permission(ORG, REPO, "rel", "release-manager", base_role="maintain")
    asked, _ = await command(moko, fake_github, "/moko apply", user="rel", delivery="custom-ok")
    assert fake_github.repo(ORG, REPO)["has_wiki"] is False
    assert reactions(fake_github, asked["id"]) == ["eyes", "rocket"]
    assert ("GET", f"/orgs/{ORG}/custom-repository-roles") in calls(fake_github)
    assert [(r.field, r.outcome) for r in await trail(moko, "command")] == [("apply", "applied")]


async def test_a_custom_role_without_the_org_permission_falls_back_and_says_so(drifted, moko):
    # GitHub's legacy `permission` for a custom role based on maintain is write.
    drifted.set_permission(ORG, REPO, "rel", "release-manager", base_role="maintain")
    asked, _ = await command(moko, drifted, "/moko apply", user="rel", delivery="custom-fallback")
    assert answers(drifted) == [
        f"{text.MARKER}\nSorry, `/moko apply` needs the **maintain** role or higher on this repository, "
        "and you have **release-manager**. **release-manager** is a custom role, and Moko may not read "
        "the organization's custom roles to learn its base role, so it fell back on GitHub's legacy "
        "permission **write** (where maintain counts as write and triage as read). Nothing was changed."
    ]
    assert drifted.calls_to("GET", f"^/orgs/{ORG}/custom-repository-roles$")[0].status == 403
    assert writes(drifted) == [] and drifted.repo(ORG, REPO)["has_wiki"] is True
    [record] = await trail(moko)
    assert record.outcome == "denied"
    assert record.error == ("/moko apply needs maintain or higher; release-manager has not "
                            "(its legacy permission, the organization's custom roles unreadable: write)")


async def test_a_custom_role_whose_base_is_too_low_is_denied_with_its_base(fake_github, moko):
    fake_github.add_installation(INSTALLATION, ORG, permissions={"organization_administration": "read"})
    fake_github.add_repo(ORG, REPO, has_wiki=True)
    fake_github.set_permission(ORG, REPO, "tom", "bug-sorter", base_role="triage")
    await command(moko, fake_github, "/moko apply", user="tom")
    [answer] = answers(fake_github)
    assert "you have **bug-sorter**. **bug-sorter** is a custom role based on **triage**. Nothing was changed." in answer
    assert writes(fake_github) == []


async def test_a_branch_protected_only_by_rulesets_shows_their_rules_and_still_gets_classic_protection(org, moko):
    org.add_repo(ORG, REPO, **COMPLIANT)
    org.set_permission(ORG, REPO, "mia", "maintain")
    org.set_permission(ORG, REPO, "alice", "triage")
    org_set = org.add_org_ruleset(ORG, {
        "name": "everywhere", "target": "branch", "enforcement": "active", "rules": [{"type": "non_fast_forward"}],
        "conditions": {"repository_name": {"include": ["~ALL"], "exclude": []},
                       "ref_name": {"include": ["~DEFAULT_BRANCH"], "exclude": []}}})
    repo_set = org.add_ruleset(ORG, REPO, {
        "name": "keep main", "target": "branch", "enforcement": "active", "rules": [{"type": "deletion"}],
        "conditions": {"ref_name": {"include": ["refs/heads/main"], "exclude": []}}})
    await command(moko, org, "/moko status")
    [status] = answers(org)
    assert (
        f"| branch\\_protection | main \\(default branch\\) | {PROTECTION_CELL} | "
        "not protected; rulesets apply (below) | no |"
    ) in status
    assert status.endswith(
        "**Rules from rulesets.** GitHub enforces these besides classic branch protection, "
        "which is what Moko manages:\n\n"
        "| branch | rule | ruleset | defined in |\n"
        "|---|---|---|---|\n"
        f"| main | non\\_fast\\_forward | ruleset {org_set['id']} | organization acme |\n"
        f"| main | deletion | ruleset {repo_set['id']} | repository acme/widgets |"
    )
    # Both apply on GitHub: the classic protection the policy asks for is put on all the same.
    await command(moko, org, "/moko apply", user="mia")
    assert writes(org) == [("PUT", f"/repos/{ORG}/{REPO}/branches/main/protection")]
    assert org.protection(ORG, REPO, "main") == DEFAULT_PROTECTION
    assert len(org.rulesets(ORG, REPO)) == 1
    await command(moko, org, "/moko status")
    assert answers(org)[-1].splitlines()[3] == "✅ It complies with the policy."
    assert "rules/branches" not in str(calls(org))  # protected now: no ruleset read


async def test_protection_null_leaves_a_shared_wildcard_rule_alone_and_says_so(org, moko):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nbranches:\n  - {name: default, protection: null}\n")
    org.add_repo(ORG, REPO, **COMPLIANT)
    org.add_branch(ORG, REPO, "maint")
    org.add_protection_rule(ORG, REPO, "mai*", DEFAULT_PROTECTION)
    org.set_permission(ORG, REPO, "mia", "maintain")
    org.set_permission(ORG, REPO, "alice", "triage")
    await command(moko, org, "/moko status")
    # The classic read cannot tell whose rule it is: one GraphQL read says, before any DELETE.
    [rule_query] = [c for c in org.calls_to("POST", "^/graphql$") if "MokoBranchRule" in (c.graphql_query or "")]
    assert rule_query.graphql_variables["ref"] == "refs/heads/main"
    assert (
        "| branch\\_protection | main \\(default branch\\) | not protected | protected by the rule mai\\*, "
        "which other branches share&#58; Moko does not remove it | no |"
    ) in answers(org)[-1]
    await command(moko, org, "/moko apply", user="mia", delivery="held")
    assert answers(org)[-1].endswith(
        "- not done, for a person to decide: branch main is protected by the rule mai\\*, which other "
        "branches share&#58; Moko does not remove it")
    assert writes(org) == []
    assert org.protection_rules(ORG, REPO) == {"mai*": DEFAULT_PROTECTION}
    assert (await moko.services.store.get_delivery("held")).state == FAILED


@pytest.mark.parametrize(("role", "allowed"), [("write", True), ("triage", False)])
async def test_apply_permission_comes_from_the_policy(org, moko, role, allowed):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\ncommands:\n  apply_permission: write\n")
    org.add_repo(ORG, REPO, has_wiki=True)
    org.set_permission(ORG, REPO, "wes", role)
    await command(moko, org, "/moko apply", user="wes")
    assert (org.repo(ORG, REPO)["has_wiki"] is False) is allowed
    assert ("needs the **write** role" in answers(org)[0]) is not allowed


async def test_apply_in_dry_run_says_so_and_changes_nothing(drifted, env):
    drifted.set_permission(ORG, REPO, "mia", "admin")
    async with run_moko({**env, "MOKO_DRY_RUN": "true"}) as moko:
        asked, _ = await command(moko, drifted, "/moko apply", user="mia")
        records = await trail(moko)
    [answer] = answers(drifted)
    assert "- has\\_wiki: true → false — **dry-run, not changed**" in answer
    assert answer.endswith(f"{text.APPLY_DRY_RUN}\n\n{text.DRY_RUN_NOTE}")
    assert writes(drifted) == []
    assert reactions(drifted, asked["id"]) == ["eyes", "rocket"]
    assert [(r.field, r.outcome) for r in records] == [
        ("has_wiki", "dry-run"), ("main", "dry-run"), ("apply", "dry-run")]


async def test_status_says_when_the_policy_runs_in_dry_run(org, moko):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nmode: dry-run\n")
    org.add_repo(ORG, REPO, has_wiki=True)
    await command(moko, org, "/moko status")
    assert answers(org)[0].endswith(text.DRY_RUN_NOTE)


async def test_audit_shows_the_last_records_to_triage_and_up(drifted, moko):
    drifted.set_permission(ORG, REPO, "mia", "maintain")
    drifted.set_permission(ORG, REPO, "tess", "triage")
    await command(moko, drifted, "/moko apply", user="mia", delivery="apply-2")
    asked, _ = await command(moko, drifted, "/moko audit 2", user="tess")
    [_, answer] = answers(drifted)
    lines = answer.splitlines()
    assert lines[:5] == [
        text.MARKER,
        "**The last 2 audit records of acme/widgets**, newest first",
        "",
        "| time | actor | trigger | policy | field | before | after | outcome | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    assert len(lines) == 7
    # Newest first: the apply command's own record, then its protection change; all escaped.
    assert "| mia | command&#58;apply | command | apply |   | " in lines[5]
    assert "https://" not in lines[5] and "github.com/acme/widgets/issues/1#&#8203;issuecomment" in lines[5]
    assert lines[6].startswith("| ") and "| branch\\_protection | main | " in lines[6]
    assert reactions(drifted, asked["id"]) == ["eyes", "rocket"]
    assert calls(drifted) == [
        ("POST", reactions_path(asked["id"])),
        ("GET", f"/repos/{ORG}/{REPO}/collaborators/tess/permission"),
        ("POST", COMMENTS),
        ("POST", reactions_path(asked["id"])),
    ]


async def test_audit_is_denied_below_triage(drifted, moko):
    asked, _ = await command(moko, drifted, "/moko audit", user="randal")
    assert answers(drifted) == [
        f"{text.MARKER}\nSorry, `/moko audit` needs the **triage** role or higher on this repository, "
        "and you have **none**."
    ]
    assert reactions(drifted, asked["id"]) == ["eyes", "confused"]
    assert [(r.field, r.outcome) for r in await trail(moko)] == [("audit", "denied")]


async def test_audit_records_from_github_are_escaped(drifted, moko):
    drifted.set_permission(ORG, REPO, "tess", "triage")
    drifted.set_permission(ORG, REPO, "mia", "maintain")
    drifted.fail("PATCH", f"^/repos/{ORG}/{REPO}$", 422,
                 body={"message": "Nope <img src=x onerror=alert(1)> @org/admins | `x`"})
    await command(moko, drifted, "/moko apply", user="mia")
    await command(moko, drifted, "/moko audit", user="tess")
    answer = answers(drifted)[-1]
    assert "<img" not in answer and "@org/admins" not in answer and "| `x`" not in answer
    assert "&lt;img src=x onerror=alert\\(1\\)&gt; @&#8203;org/admins \\| \\`x\\`" in answer


async def test_comments_by_moko_itself_do_nothing(drifted, moko):
    payload = comment(drifted, "/moko apply", user=drifted.bot_login)
    assert payload["comment"]["user"]["type"] == "Bot"
    drifted.reset_calls()
    await moko.deliver("issue_comment", payload)
    assert drifted.calls == []
    assert answers(drifted) == [payload["comment"]["body"]]
    assert await trail(moko) == []


async def test_a_bot_whose_login_lacks_the_bot_suffix_is_ignored(drifted, moko):
    # GitHub's Copilot coding agent comments as the Bot account "Copilot": no "[bot]" in its
    # login, only its type says it is not a person.
    drifted.state.user("Copilot", "Bot")
    payload = comment(drifted, "/moko apply", user="Copilot")
    assert (payload["comment"]["user"]["login"], payload["comment"]["user"]["type"]) == ("Copilot", "Bot")
    drifted.reset_calls()
    await moko.deliver("issue_comment", payload)
    assert drifted.calls == []
    assert answers(drifted) == [] and drifted.repo(ORG, REPO)["has_wiki"] is True
    assert await trail(moko) == []


@pytest.mark.parametrize(
    ("body", "user", "action"),
    [
        ("/moko status", "dependabot[bot]", "created"),  # another bot
        ("/moko status", "alice", "edited"),  # edits are not commands
        ("/moko status\n" + "x" * 65_536, "alice", "created"),  # over 64 KiB
        ("LGTM, ship it", "alice", "created"),
        ("/mokox status", "alice", "created"),
        (f"{text.MARKER}\n/moko status", "alice", "created"),  # Moko's answer, posted with a token
    ],
)
async def test_comments_that_are_not_commands_are_ignored(drifted, moko, body, user, action):
    payload = comment(drifted, body, user=user, action=action)
    drifted.reset_calls()
    reply = await moko.deliver("issue_comment", payload)
    assert reply.status == 202
    assert drifted.calls == []
    assert await trail(moko) == []


async def test_six_commands_in_a_minute_get_one_throttle_answer(drifted, moko):
    now = [1_000_000.0]
    moko.services.clock = lambda: now[0]
    asked = []
    with capture_logs() as logs:
        for _ in range(7):
            asked.append((await command(moko, drifted, "/moko help", user="spammer"))[0])
            now[0] += 5
    # The operator's log says which refusal was answered with the notice and which was silent.
    assert [(e["user"], e["notice"]) for e in logs if e["event"] == "command_throttled"] == [
        ("spammer", True), ("spammer", False)]
    bodies = answers(drifted)
    assert bodies == [f"{text.MARKER}\n{text.HELP}"] * 5 + [f"{text.MARKER}\n{text.THROTTLED}"]
    assert [reactions(drifted, c["id"]) for c in asked] == [["eyes", "rocket"]] * 5 + [[], []]
    assert drifted.calls == []  # the 7th costs nothing at all
    assert [r.outcome for r in await trail(moko)] == ["applied"] * 5 + ["denied"]

    # Someone else is not held back; nor is the spammer once a quiet minute has passed.
    await command(moko, drifted, "/moko help", user="bob")
    now[0] += 120
    await command(moko, drifted, "/moko help", user="spammer")
    assert answers(drifted)[-2:] == [f"{text.MARKER}\n{text.HELP}"] * 2


async def test_the_same_delivery_twice_answers_once(drifted, moko):
    payload = comment(drifted, "/moko status")
    first = await moko.deliver("issue_comment", payload, delivery="twice")
    second = await moko.deliver("issue_comment", payload, delivery="twice")
    assert (first.status, second.status, second.body) == (202, 200, {"status": "duplicate"})
    assert len(answers(drifted)) == 1
    assert reactions(drifted, payload["comment"]["id"]) == ["eyes", "rocket"]


async def test_invalid_policy_is_answered_with_its_errors(org, moko):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nrepository:\n  has_wikki: <false>\n")
    org.add_repo(ORG, REPO, has_wiki=True)
    asked, _ = await command(moko, org, "/moko status", delivery="bad-policy")
    [answer] = answers(org)
    assert answer.startswith(f"{text.MARKER}\nThe policy file is invalid, so Moko changes nothing until it is fixed:\n\n- ")
    assert "acme/.github/.github/moko.yml&#58;3&#58; repository.has\\_wikki" in answer
    assert "<false>" not in answer
    assert reactions(org, asked["id"]) == ["eyes", "confused"]
    assert writes(org) == []
    assert [(r.policy, r.outcome) for r in await trail(moko)] == [("config", "failed"), ("command", "failed")]
    assert (await moko.services.store.get_delivery("bad-policy")).state == FAILED


async def test_an_invalid_repository_file_is_answered_with_its_errors(org, moko):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\noverrides: [repository.has_wiki]\n")
    org.add_repo(ORG, REPO, has_wiki=True)
    org.put_file(ORG, REPO, ".github/moko.yml", "version: 1\nrepository:\n  has_wiki: sometimes\n")
    await command(moko, org, "/moko apply", delivery="bad-repo-policy")
    [answer] = answers(org)
    assert answer.startswith(f"{text.MARKER}\nThe policy file is invalid, so Moko changes nothing until it is fixed:")
    assert f"{ORG}/{REPO}/.github/moko.yml&#58;3&#58; repository.has\\_wiki" in answer
    assert writes(org) == [] and org.repo(ORG, REPO)["has_wiki"] is True
    trail_ = [(r.policy, r.field, r.outcome) for r in await trail(moko)]
    assert trail_[0] == ("config", f"{ORG}/{REPO}/.github/moko.yml", "failed")


async def test_a_failed_apply_is_answered_and_fails_the_delivery_without_leaking_secrets(drifted, moko):
    drifted.set_permission(ORG, REPO, "mia", "admin")
    token = "ghs_" + "S3cr3tT0k3n" * 4
    drifted.fail("PUT", f"^/repos/{ORG}/{REPO}/branches/main/protection$", 422,
                 body={"message": f"Validation Failed for {token}"})
    asked, _ = await command(moko, drifted, "/moko apply", user="mia", delivery="apply-fail")
    [answer] = answers(drifted)
    assert "S3cr3t" not in answer
    assert "- has\\_wiki: true → false — **undone, because a later change failed**" in answer
    assert "**failed: 422 Validation Failed for \\[REDACTED\\]**" in answer
    assert reactions(drifted, asked["id"]) == ["eyes", "confused"]
    assert drifted.repo(ORG, REPO)["has_wiki"] is True
    delivery = await moko.services.store.get_delivery("apply-fail")
    # The failed delivery says why, as the answer does, not only that it failed.
    assert (delivery.state, delivery.error) == (
        FAILED, "handlers.comments.answer_command: CommandFailed: 422 Validation Failed for [REDACTED]")
    assert (await trail(moko, "command"))[0].outcome == "failed"


async def test_github_failure_while_running_is_answered(drifted, moko):
    drifted.fail("GET", f"^/repos/{ORG}/{REPO}/collaborators/", 500, times=10)
    asked, _ = await command(moko, drifted, "/moko audit", user="tess", delivery="perm-fail")
    [answer] = answers(drifted)
    assert answer.startswith(f"{text.MARKER}\nMoko could not finish: ")
    assert reactions(drifted, asked["id"]) == ["eyes", "confused"]
    assert (await moko.services.store.get_delivery("perm-fail")).state == FAILED


async def test_an_answer_that_cannot_be_posted_fails_the_delivery(drifted, moko):
    drifted.fail("POST", f"^{COMMENTS}$", 502, times=10)
    asked, _ = await command(moko, drifted, "/moko help", delivery="no-answer")
    assert answers(drifted) == []
    assert reactions(drifted, asked["id"]) == ["eyes"]
    delivery = await moko.services.store.get_delivery("no-answer")
    assert delivery.state == FAILED and "could not be posted" in delivery.error
    [record] = await trail(moko)
    assert record.outcome == "failed" and "could not be posted" in record.error


async def test_a_repository_out_of_scope_is_left_alone(org, moko):
    org.add_repo(ORG, ".github", **COMPLIANT)
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nscope:\n  exclude: ['widg*']\n")
    org.add_repo(ORG, REPO, has_wiki=True)
    org.set_permission(ORG, REPO, "mia", "admin")
    for body in ("/moko status", "/moko apply"):
        await command(moko, org, body, user="mia")
    assert answers(org) == [
        f"{text.MARKER}\nMoko leaves acme/widgets alone: excluded by scope.exclude 'widg\\*'."] * 2
    assert writes(org) == []


# -- answers whose first try may have reached GitHub ---------------------------------------


async def test_a_lost_answer_and_a_lost_reaction_are_not_sent_twice(drifted, moko):
    # GitHub posts the comment and adds the reaction, then the connection drops before
    # Moko hears back: Moko finds them instead of posting again.
    drifted.fail("POST", r"/reactions$", reset_connection=True, after_effect=True)
    drifted.fail("POST", f"^{COMMENTS}$", reset_connection=True, after_effect=True)
    asked, _ = await command(moko, drifted, "/moko help", delivery="lost-1")

    assert answers(drifted) == [f"{text.MARKER}\n{text.HELP}"]
    assert reactions(drifted, asked["id"]) == ["eyes", "rocket"]
    [posted] = [c for c in drifted.comments(ORG, REPO, 1) if c["user"]["login"] == drifted.bot_login]
    assert posted["body"].startswith(f"{text.MARKER}<!-- moko:delivery lost-1 applied -->\n")
    assert drifted.count("POST", f"^{COMMENTS}$") == 1
    # The look for the lost answer reads only the comments since the command, not the thread.
    [look] = drifted.calls_to("GET", f"^{COMMENTS}$")
    assert look.query == {"since": asked["created_at"], "per_page": "100"}
    assert drifted.count("POST", "/reactions$") == 2  # eyes (lost, found), rocket
    assert (await moko.services.store.get_delivery("lost-1")).state == DONE


async def test_an_answer_that_timed_out_after_posting_is_found_not_repeated(drifted, env):
    async with run_moko({**env, "MOKO_REQUEST_TIMEOUT": "0.3"}) as moko:
        drifted.fail("POST", f"^{COMMENTS}$", delay=3.0, after_effect=True)
        asked, _ = await command(moko, drifted, "/moko help", delivery="slow-1")

        assert answers(drifted) == [f"{text.MARKER}\n{text.HELP}"]
        assert reactions(drifted, asked["id"]) == ["eyes", "rocket"]
        # The slow POST is logged by the fake only when it answers; the look that found its
        # comment is the one read of the issue's comments.
        assert drifted.count("GET", f"^{COMMENTS}$") == 1
        assert (await moko.services.store.get_delivery("slow-1")).state == DONE


async def test_an_answer_that_did_not_arrive_is_posted_again(drifted, moko):
    # The comment was not posted (the connection dropped before GitHub acted): the check
    # finds nothing, so Moko posts it again, once.
    drifted.fail("POST", f"^{COMMENTS}$", reset_connection=True)
    asked, _ = await command(moko, drifted, "/moko help", delivery="lost-2")

    assert answers(drifted) == [f"{text.MARKER}\n{text.HELP}"]
    assert drifted.count("POST", f"^{COMMENTS}$") == 2
    assert reactions(drifted, asked["id"]) == ["eyes", "rocket"]


async def test_a_readers_status_says_only_whether_it_complies(drifted, moko):
    drifted.set_permission(ORG, REPO, "rita", "read")
    asked, _ = await command(moko, drifted, "/moko status", user="rita")
    assert answers(drifted) == [f"{text.MARKER}\n**Status of acme/widgets**\n\n{text.STATUS_NOT_COMPLIANT}"]
    assert reactions(drifted, asked["id"]) == ["eyes", "rocket"]
    assert ("GET", f"/repos/{ORG}/{REPO}/collaborators/rita/permission") in calls(drifted)
    assert writes(drifted) == []
    # Once compliant, a reader (here someone GitHub does not know) is told so.
    drifted.repo(ORG, REPO)["has_wiki"] = False
    drifted.set_protection(ORG, REPO, "main", DEFAULT_PROTECTION)
    await command(moko, drifted, "/moko status", user="randal")
    assert answers(drifted)[-1] == f"{text.MARKER}\n**Status of acme/widgets**\n\n{text.STATUS_COMPLIANT}"


async def test_plan_is_denied_below_triage_before_anything_is_read(drifted, moko):
    drifted.set_permission(ORG, REPO, "rita", "read")
    asked, _ = await command(moko, drifted, "/moko plan", user="rita")
    assert answers(drifted) == [
        f"{text.MARKER}\nSorry, `/moko plan` needs the **triage** role or higher on this repository, "
        "and you have **read**."
    ]
    assert reactions(drifted, asked["id"]) == ["eyes", "confused"]
    assert calls(drifted) == [
        ("POST", reactions_path(asked["id"])),
        ("GET", f"/repos/{ORG}/{REPO}/collaborators/rita/permission"),
        ("POST", COMMENTS),
        ("POST", reactions_path(asked["id"])),
    ]
    assert [(r.field, r.outcome) for r in await trail(moko)] == [("plan", "denied")]


async def test_echoed_text_loses_every_invisible_character(drifted, moko):
    invisible = "\u200b\u200d\u2060\ufeff\u061c\u202e\u00ad"
    await command(moko, drifted, f"/moko de{invisible}ploy")
    [answer] = answers(drifted)
    assert "there is no command “deploy”." in answer
    assert not any(char in answer for char in invisible)


@pytest.mark.parametrize("given", ["ghp_" + "A1b2C3d4" * 5, "ghp_" + "A1b2C3d4\u200b" * 5])
async def test_text_holding_a_secret_is_not_echoed_at_all(drifted, moko, given):
    await command(moko, drifted, f"/moko audit {given}", delivery="secret-echo")
    [answer] = answers(drifted)
    assert "`audit` takes one number from 1 to 50." in answer
    assert "A1b2C3d4" not in answer and "REDACTED" not in answer
    [record] = await trail(moko)
    assert "A1b2C3d4" not in (record.error or "") and "REDACTED" not in (record.error or "")


async def test_plan_in_an_issue_of_the_policy_repository_plans_as_anywhere(org, moko):
    # Only a pull request of `.github` gets its policy preview again: an issue there (issues
    # and pull requests share numbers) is planned like any repository, its pull request unread.
    org.add_repo(ORG, ".github", **{**COMPLIANT, "has_wiki": True})
    org.set_protection(ORG, ".github", "main", DEFAULT_PROTECTION)
    org.set_permission(ORG, ".github", "alice", "triage")
    payload = org.event("issue_comment", "created", owner=ORG, repo=".github", body="/moko plan", sender="alice")
    assert "pull_request" not in payload["issue"]
    org.reset_calls()
    await moko.deliver("issue_comment", payload)
    [answer] = [c["body"] for c in org.comments(ORG, ".github", 1) if c["user"]["login"] == org.bot_login]
    assert answer.endswith("**What `/moko apply` would change in acme/.github**\n\n- has\\_wiki: true → false")
    assert not [c for c in org.calls if "/pulls" in c.path]


def command_counts(metrics: str) -> dict[tuple[str, str], float]:
    return {(s.labels["command"], s.labels["outcome"]): s.value
            for family in text_string_to_metric_families(metrics) if family.name == "moko_commands"
            for s in family.samples if s.name == "moko_commands_total"}


async def test_metrics_count_commands_by_name_and_outcome(drifted, moko):
    # The counters are the process's: what these commands add is compared with before.
    async def counts() -> dict[tuple[str, str], float]:
        async with moko.session.get(moko.url + "/metrics") as response:
            return command_counts(await response.text())

    before = await counts()
    await command(moko, drifted, "/moko status")  # alice triages: answered
    await command(moko, drifted, "/moko deploy")  # no such command
    await command(moko, drifted, "/moko plan", user="randal")  # no role: refused
    after = await counts()
    added = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    assert added == {("status", "done"): 1, ("unknown", "invalid"): 1, ("plan", "denied"): 1}


@pytest.mark.parametrize("body", [
    "```\n/moko apply\n```\n/moko status",  # a closed block
    "  ~~~\n/moko apply\n ~~~\n/moko status",  # fences indented as Markdown allows
    "````\n/moko apply\n  ```\n/moko apply\n````\n/moko status",  # a shorter fence does not close it
    "```\n/moko apply\n~~~\n/moko apply\n```\n/moko status",  # nor one of the other character
])
async def test_the_command_after_a_closed_code_block_is_the_one_run(drifted, moko, body):
    drifted.set_permission(ORG, REPO, "alice", "maintain")
    await command(moko, drifted, body)
    assert [(r.field, r.after["command"]) for r in await trail(moko)] == [("status", "/moko status")]
    assert writes(drifted) == []


@pytest.mark.parametrize(("size", "answered"), [(65_536, True), (65_537, False)])
async def test_a_body_of_64_kib_is_read_and_one_byte_more_is_not(drifted, moko, size, answered):
    body = "/moko help\n"
    await command(moko, drifted, body + "é" * ((size - len(body)) // 2) + "x" * ((size - len(body)) % 2))
    assert len(answers(drifted)) == int(answered)
