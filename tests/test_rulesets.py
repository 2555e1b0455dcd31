"""The `rulesets:` section from outside: Moko creates, updates and puts back the repository
rulesets a policy names (matched by name), and leaves every other ruleset alone."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from bot.audit import settled
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG

RULESET = {
    "name": "protect-default",
    "target": "branch",
    "enforcement": "active",
    "conditions": {"ref_name": {"include": ["~DEFAULT_BRANCH"], "exclude": []}},
    "rules": [
        {"type": "deletion"},
        {"type": "non_fast_forward"},
        {"type": "pull_request", "parameters": {
            "required_approving_review_count": 1,
            "dismiss_stale_reviews_on_push": True,
            "require_code_owner_review": False,
            "require_last_push_approval": False,
            "required_review_thread_resolution": False,
        }},
    ],
}
POLICY = """version: 1
rulesets:
  - name: protect-default
    target: branch
    enforcement: active
    conditions:
      ref_name:
        include: ["~DEFAULT_BRANCH"]
        exclude: []
    rules:
      - type: deletion
      - type: non_fast_forward
      - type: pull_request
        parameters:
          required_approving_review_count: 1
          dismiss_stale_reviews_on_push: true
          require_code_owner_review: false
          require_last_push_approval: false
          required_review_thread_resolution: false
"""
UNMANAGED = {"name": "team-tags", "target": "tag", "enforcement": "evaluate",
             "conditions": {"ref_name": {"include": ["~ALL"], "exclude": []}},
             "rules": [{"type": "deletion"}]}


@pytest.fixture
def org(fake_github):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, ".github", **COMPLIANT)
    fake_github.put_file(ORG, ".github", ".github/moko.yml", POLICY)
    return fake_github


def compliant_repo(fake, name: str) -> None:
    fake.add_repo(ORG, name, **COMPLIANT)
    fake.set_protection(ORG, name, "main", DEFAULT_PROTECTION)


def by_name(fake, name: str) -> dict[str, dict]:
    return {r["name"]: r for r in fake.rulesets(ORG, name)}


async def records(moko, name: str):
    return settled(await moko.services.store.audit_records(repo=f"{ORG}/{name}"))


def ruleset_calls(fake, name: str) -> list[tuple[str, str]]:
    prefix = f"/repos/{ORG}/{name}/rulesets"
    return [(c.method, c.path) for c in fake.calls if c.path.startswith(prefix)]


async def test_a_new_repository_gets_the_policys_ruleset_with_one_post(org, moko):
    org.add_repo(ORG, "widgets", **COMPLIANT)
    await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="widgets"),
                       delivery="new-1")
    made = by_name(org, "widgets")["protect-default"]
    assert made["enforcement"] == "active" and made["rules"] == RULESET["rules"]
    assert made["conditions"] == RULESET["conditions"]
    # A new repository has no rulesets: nothing is read first.
    assert ruleset_calls(org, "widgets") == [("POST", f"/repos/{ORG}/widgets/rulesets")]
    trail = [r for r in await records(moko, "widgets") if r.policy == "rulesets"]
    assert [(r.field, r.before, r.after, r.outcome) for r in trail] == [
        ("protect-default", None, RULESET, "applied")]


async def test_a_ruleset_edited_by_hand_is_put_back_and_moko_s_own_edit_starts_nothing(org, moko):
    compliant_repo(org, "app")
    made = org.add_ruleset(ORG, "app", RULESET)
    other = org.add_ruleset(ORG, "app", UNMANAGED)
    made["enforcement"] = "disabled"
    made["rules"] = [{"type": "deletion"}]
    edited = org.event("repository_ruleset", "edited", owner=ORG, repo="app", ruleset=made,
                       changes={"enforcement": {"from": "active"}})
    await moko.deliver("repository_ruleset", edited)
    now = by_name(org, "app")
    assert now["protect-default"]["enforcement"] == "active"
    assert now["protect-default"]["rules"] == RULESET["rules"]
    assert now["protect-default"]["id"] == made["id"]
    assert now["team-tags"] == other  # not the policy's: untouched
    # The list (summaries), the managed one by id, one PUT; never the other ruleset.
    assert ruleset_calls(org, "app") == [
        ("GET", f"/repos/{ORG}/app/rulesets"),
        ("GET", f"/repos/{ORG}/app/rulesets/{made['id']}"),
        ("PUT", f"/repos/{ORG}/app/rulesets/{made['id']}"),
    ]
    put = org.calls_to("PUT", rf"^/repos/{ORG}/app/rulesets/")[0]
    assert put.body == RULESET
    trail = [r for r in await records(moko, "app") if r.policy == "rulesets"]
    assert [(r.field, r.outcome) for r in trail] == [("protect-default", "applied")]
    assert trail[0].before["enforcement"] == "disabled" and trail[0].after == RULESET

    # GitHub tells Moko of its own PUT; that starts no new round.
    org.reset_calls()
    own = org.event("repository_ruleset", "edited", owner=ORG, repo="app",
                    ruleset=by_name(org, "app")["protect-default"], sender=org.bot_login)
    await moko.deliver("repository_ruleset", own)
    assert org.calls == [] or ruleset_calls(org, "app") == []


async def test_a_deleted_ruleset_is_made_again(org, moko):
    compliant_repo(org, "core")
    made = org.add_ruleset(ORG, "core", RULESET)
    del org.state.get_repo(ORG, "core").rulesets[made["id"]]
    deleted = org.event("repository_ruleset", "deleted", owner=ORG, repo="core", ruleset=made)
    await moko.deliver("repository_ruleset", deleted)
    assert by_name(org, "core")["protect-default"]["rules"] == RULESET["rules"]
    assert ruleset_calls(org, "core") == [("GET", f"/repos/{ORG}/core/rulesets"),
                                          ("POST", f"/repos/{ORG}/core/rulesets")]


async def test_a_compliant_ruleset_and_unmanaged_ones_are_left_alone(org, moko):
    compliant_repo(org, "steady")
    # GitHub's answer holds more than the policy names (ids, links, dates, other order).
    reordered = {**copy.deepcopy(RULESET), "rules": list(reversed(RULESET["rules"])),
                 "bypass_actors": []}
    org.add_ruleset(ORG, "steady", reordered)
    org.add_ruleset(ORG, "steady", UNMANAGED)
    org.add_org_ruleset(ORG, {**UNMANAGED, "name": "protect-default",
                              "conditions": {**UNMANAGED["conditions"],
                                             "repository_name": {"include": ["~ALL"], "exclude": []}}})
    before = copy.deepcopy(org.rulesets(ORG, "steady"))
    created = org.event("repository_ruleset", "created", owner=ORG, repo="steady",
                        ruleset=by_name(org, "steady")["team-tags"])
    await moko.deliver("repository_ruleset", created)
    assert org.rulesets(ORG, "steady") == before
    # The same event where the managed ruleset drifted does change it.
    compliant_repo(org, "moved")
    org.add_ruleset(ORG, "moved", {**RULESET, "rules": RULESET["rules"][:2]})
    await moko.deliver("repository_ruleset", org.event(
        "repository_ruleset", "created", owner=ORG, repo="moved", ruleset=by_name(org, "moved")["protect-default"]))
    assert len(by_name(org, "moved")["protect-default"]["rules"]) == 3
    assert [c for c in org.calls if c.path.startswith(f"/repos/{ORG}/steady/rulesets") and c.method != "GET"] == []
    assert [r for r in await records(moko, "steady") if r.policy == "rulesets"] == []


async def test_without_a_rulesets_section_no_ruleset_is_read_or_written(org, moko):
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\n")
    compliant_repo(org, "plain")
    made = org.add_ruleset(ORG, "plain", {**RULESET, "enforcement": "disabled"})
    edited = org.event("repository_ruleset", "edited", owner=ORG, repo="plain", ruleset=made)
    await moko.deliver("repository_ruleset", edited)
    assert ruleset_calls(org, "plain") == []
    assert by_name(org, "plain")["protect-default"]["enforcement"] == "disabled"
    # Once the policy names it, pushing the policy file puts it in line.
    org.put_file(ORG, ".github", ".github/moko.yml", POLICY)
    await moko.deliver("push", org.event("push", owner=ORG, repo=".github", ref="refs/heads/main",
                                         modified=[".github/moko.yml"]))
    assert by_name(org, "plain")["protect-default"]["enforcement"] == "active"


async def test_a_created_ruleset_is_deleted_when_a_later_step_fails(org, moko):
    org.put_file(ORG, ".github", ".github/moko.yml", POLICY + (
        "  - name: second\n    enforcement: active\n"
        "    conditions: {ref_name: {include: ['~ALL'], exclude: []}}\n"
        "    rules: [{type: required_linear_history}]\n"))
    org.add_repo(ORG, "fragile", **COMPLIANT)
    payload = org.event("repository", "created", owner=ORG, repo="fragile")
    # Someone made a ruleset of the second one's name after GitHub sent the event: the new
    # repository's first POST succeeds, its second is refused (names are unique).
    theirs = org.add_ruleset(ORG, "fragile", {**UNMANAGED, "name": "second"})
    await moko.deliver("repository", payload)
    assert list(by_name(org, "fragile")) == ["second"]
    assert by_name(org, "fragile")["second"] == theirs
    trail = [(r.field, r.outcome) for r in await records(moko, "fragile") if r.policy == "rulesets"]
    assert trail == [("protect-default", "applied"), ("second", "failed"),
                     ("protect-default", "rolled-back")]
    assert ruleset_calls(org, "fragile") == [
        ("POST", f"/repos/{ORG}/fragile/rulesets"), ("POST", f"/repos/{ORG}/fragile/rulesets"),
        ("DELETE", f"/repos/{ORG}/fragile/rulesets/{theirs['id'] + 1}")]


async def test_dry_run_writes_no_ruleset_and_records_it(org, moko):
    org.put_file(ORG, ".github", ".github/moko.yml", "mode: dry-run\n" + POLICY)
    org.add_repo(ORG, "trial", **COMPLIANT)
    await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="trial"))
    assert org.rulesets(ORG, "trial") == []
    assert org.count("POST", r"/rulesets") == 0 and org.count("PUT", r"/rulesets") == 0
    trail = [(r.field, r.outcome) for r in await records(moko, "trial") if r.policy == "rulesets"]
    assert trail == [("protect-default", "dry-run")]


def check_config(tmp_path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "moko.yml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "handlers.wiring.cli", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_check_config_checks_rulesets_against_githubs_schema(tmp_path):
    ok = check_config(tmp_path, POLICY)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = POLICY.replace("type: deletion", "type: deletoin").replace(
        "required_approving_review_count: 1", "required_approving_review_count: 11").replace(
        "exclude: []", "exclude: []\n        excluded: []")
    result = check_config(tmp_path, bad + "  - name: protect-default\n    enforcement: active\n")
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    path = tmp_path / "moko.yml"
    assert f"{path}:10: rulesets[0].conditions.ref_name.excluded: unknown key (allowed: include, exclude)" in lines
    assert any(line.startswith(f"{path}:12: rulesets[0].rules[0].type: must be one of") for line in lines)
    assert f"{path}:16: rulesets[0].rules[2].parameters.required_approving_review_count: must be at most 10, not 11" in lines
    assert f"{path}:21: rulesets[1].name: 'protect-default' already names a ruleset (rulesets[0])" in lines


# --- sweeps and the continuous reconciliation (the batched GraphQL read) -------------------


async def test_a_sweep_tells_compliant_rulesets_from_the_batched_read_and_fixes_drift(org, env):
    from tests.test_sweep import sweep

    for name in ("alpha", "beta", "gamma"):
        compliant_repo(org, name)
        org.add_ruleset(ORG, name, RULESET)
        org.add_ruleset(ORG, name, UNMANAGED)
    drifted = by_name(org, "beta")["protect-default"]
    drifted["enforcement"] = "evaluate"  # changed by hand; GitHub sends no event to a sweep
    del org.state.get_repo(ORG, "gamma").rulesets[by_name(org, "gamma")["protect-default"]["id"]]
    org.reset_calls()
    code, doc, err = await sweep(env)
    assert code == 0, err
    outcomes = {r["repo"]: r["outcome"] for r in doc["results"]}
    assert outcomes == {f"{ORG}/.github": "fixed", f"{ORG}/alpha": "compliant",
                        f"{ORG}/beta": "fixed", f"{ORG}/gamma": "fixed"}
    assert by_name(org, "beta")["protect-default"]["enforcement"] == "active"
    assert by_name(org, "gamma")["protect-default"]["rules"] == RULESET["rules"]
    assert all(r["team-tags"]["enforcement"] == "evaluate" for r in map(lambda n: by_name(org, n),
                                                                         ("alpha", "beta", "gamma")))
    # The compliant repository costs no REST read of its rulesets: the batched read told.
    assert ruleset_calls(org, "alpha") == []
    # The drifted one is read with REST (what the PUT, and its undo, rest on), then put back;
    # the missing one is created from the batched read alone.
    assert ruleset_calls(org, "beta") == [
        ("GET", f"/repos/{ORG}/beta/rulesets"),
        ("GET", f"/repos/{ORG}/beta/rulesets/{drifted['id']}"),
        ("PUT", f"/repos/{ORG}/beta/rulesets/{drifted['id']}"),
    ]
    assert ruleset_calls(org, "gamma") == [("POST", f"/repos/{ORG}/gamma/rulesets")]
    queries = [c.graphql_query for c in org.calls if c.graphql_query and "MokoOwnerRepositories" in c.graphql_query]
    assert queries and all("rulesets(first:" in q for q in queries)

    # Dry-run: the drift is found and recorded, nothing is written.
    by_name(org, "alpha")["protect-default"]["rules"] = [{"type": "deletion"}]
    org.reset_calls()
    code, doc, err = await sweep(env, "--dry-run")
    assert {r["repo"]: r["outcome"] for r in doc["results"]}[f"{ORG}/alpha"] == "planned"
    assert [c for c in org.calls if "/rulesets" in c.path and c.method != "GET"] == []


async def test_the_continuous_reconciliation_puts_a_drifted_ruleset_back(org, tmp_path):
    from tests.support.harness import moko_environ, start_moko_process
    from tests.support.waiting import wait_until
    from tests.test_reconciliation import SHORT

    compliant_repo(org, "svc")
    made = org.add_ruleset(ORG, "svc", RULESET)
    env = moko_environ(org, f"sqlite:///{tmp_path}/moko.db", **SHORT)
    moko = await start_moko_process(env, tmp_path / "moko.log")
    try:
        await wait_until(lambda: any("MokoOwnerRepositories" in (c.graphql_query or "") for c in org.calls))
        made["enforcement"] = "disabled"  # changed by hand, and the event was lost
        await wait_until(lambda: by_name(org, "svc")["protect-default"]["enforcement"] == "active")
    finally:
        assert await moko.stop() == 0, moko.log()
    assert org.count("PUT", rf"^/repos/{ORG}/svc/rulesets/{made['id']}$") == 1


async def test_status_and_plan_show_the_policys_rulesets(org, moko):
    import re

    compliant_repo(org, "widgets")
    org.set_permission(ORG, "widgets", "alice", "triage")
    made = org.add_ruleset(ORG, "widgets", RULESET)
    made["enforcement"] = "disabled"

    def answer() -> str:
        bodies = [c["body"] for c in org.comments(ORG, "widgets", 1) if c["user"]["login"] == org.bot_login]
        return re.sub(r"<!--[^>]*-->", "", bodies[-1])

    for body in ("/moko status", "/moko plan"):
        event = org.event("issue_comment", "created", owner=ORG, repo="widgets", body=body, sender="alice")
        await moko.deliver("issue_comment", event)
        if body == "/moko status":
            assert "| rulesets | protect-default | active, 3 rules | differs in enforcement | no |" in answer()
        else:
            assert "- update ruleset protect-default: differs in enforcement" in answer()
    assert [c for c in org.calls if "/rulesets" in c.path and c.method != "GET"] == []


async def test_an_updated_ruleset_is_put_back_when_a_later_step_fails(org, moko):
    org.put_file(ORG, ".github", ".github/moko.yml", POLICY + (
        "  - name: second\n    enforcement: active\n"
        "    conditions: {ref_name: {include: ['~ALL'], exclude: []}}\n"
        "    rules: [{type: required_linear_history}]\n"))
    compliant_repo(org, "app")
    made = org.add_ruleset(ORG, "app", {**RULESET, "enforcement": "evaluate"})
    held = {k: copy.deepcopy(made[k]) for k in ("name", "target", "enforcement", "conditions", "rules",
                                                  "bypass_actors")}
    org.fail("POST", rf"^/repos/{ORG}/app/rulesets$", 422, times=1)
    edited = org.event("repository_ruleset", "edited", owner=ORG, repo="app", ruleset=made)
    await moko.deliver("repository_ruleset", edited)
    now = by_name(org, "app")
    assert list(now) == ["protect-default"]
    assert {k: now["protect-default"][k] for k in held} == held  # as it was before the run
    puts = [c.body for c in org.calls_to("PUT", rf"^/repos/{ORG}/app/rulesets/{made['id']}$")]
    assert puts == [RULESET, held]
    trail = [(r.field, r.outcome) for r in await records(moko, "app") if r.policy == "rulesets"]
    assert trail == [("protect-default", "applied"), ("second", "failed"),
                     ("protect-default", "rolled-back")]


async def test_a_server_without_graphql_rulesets_is_read_with_rest(org, env):
    from tests.test_sweep import sweep

    org.serve_schema(without_fields={"Repository": ["rulesets"]})
    compliant_repo(org, "old")
    made = org.add_ruleset(ORG, "old", {**RULESET, "enforcement": "disabled"})
    code, doc, err = await sweep(env, "--repo", "old")
    assert code == 0, err
    assert by_name(org, "old")["protect-default"]["enforcement"] == "active"
    assert ruleset_calls(org, "old") == [
        ("GET", f"/repos/{ORG}/old/rulesets"), ("GET", f"/repos/{ORG}/old/rulesets/{made['id']}"),
        ("PUT", f"/repos/{ORG}/old/rulesets/{made['id']}")]


async def test_a_policy_naming_bypass_actors_is_still_told_by_the_batched_read(org, env):
    from tests.test_sweep import sweep

    org.put_file(ORG, ".github", ".github/moko.yml", POLICY.replace(
        "    rules:", "    bypass_actors: []\n    rules:", 1))
    compliant_repo(org, "calm")
    org.add_ruleset(ORG, "calm", {**RULESET, "bypass_actors": []})
    compliant_repo(org, "loose")
    loose = org.add_ruleset(ORG, "loose", {**RULESET, "bypass_actors": [
        {"actor_id": 1, "actor_type": "OrganizationAdmin", "bypass_mode": "always"}]})
    code, doc, err = await sweep(env, "--repo", "calm", "--repo", "loose")
    assert code == 0, err
    assert {r["repo"]: r["outcome"] for r in doc["results"]} == {
        f"{ORG}/calm": "compliant", f"{ORG}/loose": "fixed"}
    assert ruleset_calls(org, "calm") == []
    assert by_name(org, "loose")["protect-default"]["bypass_actors"] == []
    assert org.count("PUT", rf"^/repos/{ORG}/loose/rulesets/{loose['id']}$") == 1


async def test_a_repository_may_replace_the_rulesets_only_when_the_organization_allows_it(org, moko):
    org.put_file(ORG, ".github", ".github/moko.yml", POLICY + "overrides: [rulesets.protect-default]\n")
    own = POLICY.replace("enforcement: active", "enforcement: evaluate", 1) + (
        "  - name: extra\n    enforcement: active\n"
        "    conditions: {ref_name: {include: ['~ALL'], exclude: []}}\n"
        "    rules: [{type: required_linear_history}]\n")
    org.add_repo(ORG, "custom", **COMPLIANT)
    org.put_file(ORG, "custom", ".github/moko.yml", own)
    await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo="custom"))
    # Its own protect-default applies; "extra" is not among the keys it may override.
    assert {name: r["enforcement"] for name, r in by_name(org, "custom").items()} == {
        "protect-default": "evaluate"}



async def test_overrides_rulesets_lets_a_repository_manage_none(org, moko):
    org.put_file(ORG, ".github", ".github/moko.yml", POLICY + "overrides: [rulesets]\n")
    org.add_repo(ORG, "bare", **COMPLIANT)
    org.put_file(ORG, "bare", ".github/moko.yml", "rulesets: []\n")
    org.add_repo(ORG, "usual", **COMPLIANT)
    for name in ("bare", "usual"):
        await moko.deliver("repository", org.event("repository", "created", owner=ORG, repo=name))
    assert org.rulesets(ORG, "bare") == []
    assert list(by_name(org, "usual")) == ["protect-default"]
