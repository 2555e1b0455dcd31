"""The `branch_cleanup:` section from outside: sweeps (`moko sweep`, the continuous
reconciliation of `moko serve`) delete stale branches, dry-run lists them, and nothing else
ever deletes one; what is always kept; the audit trail; `/moko plan` and `status`; the file's
checks and overrides; what it costs."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG
from tests.test_sweep import BulkTime, sweep, trail

POLICY = """version: 1
branch_cleanup:
  after: 90d
  keep: ["release/*"]
"""
GUARD = {  # a ruleset that forbids deleting guard/* branches
    "name": "guard", "target": "branch", "enforcement": "active",
    "conditions": {"ref_name": {"include": ["refs/heads/guard/*"], "exclude": []}},
    "rules": [{"type": "deletion"}],
}


def ago(days: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def org(fake_github):
    # Deleting a branch is writing the repository's contents.
    fake_github.add_installation(INSTALLATION, ORG, permissions={"contents": "write"})
    fake_github.add_repo(ORG, ".github", **COMPLIANT)
    fake_github.set_protection(ORG, ".github", "main", DEFAULT_PROTECTION)
    fake_github.put_file(ORG, ".github", ".github/moko.yml", POLICY)
    return fake_github


def compliant_repo(fake, name: str) -> None:
    fake.add_repo(ORG, name, **COMPLIANT)
    fake.set_protection(ORG, name, "main", DEFAULT_PROTECTION)


def stale_branches(fake, name: str = "app") -> dict[str, str]:
    """A repository with one branch of each kind; returns the heads of those that must go."""
    compliant_repo(fake, name)
    fake.push(ORG, name, "main", committed=ago(400))  # the default branch: old, and kept
    heads = {}
    for branch in ("old-merged", "feature/a#b"):  # its head is in the default branch
        fake.add_branch(ORG, name, branch, committed=ago(200))
        fake.merge_branch(ORG, name, branch)
        heads[branch] = fake.branches(ORG, name)[branch]
    fake.add_branch(ORG, name, "old-squashed", committed=ago(120))  # its pull request was merged
    fake.add_branch_pull_request(ORG, name, "old-squashed", state="merged")
    heads["old-squashed"] = fake.branches(ORG, name)["old-squashed"]
    fake.add_branch(ORG, name, "old-unmerged", committed=ago(300))
    fake.add_branch(ORG, name, "old-closed", committed=ago(300))  # closed, never merged
    fake.add_branch_pull_request(ORG, name, "old-closed", state="closed")
    # Merged and old, but kept: an open pull request, a keep glob, a classic rule, a ruleset.
    for branch in ("old-open", "release/1.0", "protected", "guard/x"):
        fake.add_branch(ORG, name, branch, committed=ago(200))
        fake.merge_branch(ORG, name, branch)
    fake.add_branch_pull_request(ORG, name, "old-open", state="open")
    fake.set_protection(ORG, name, "protected", DEFAULT_PROTECTION)
    fake.add_ruleset(ORG, name, GUARD)
    fake.add_branch(ORG, name, "fresh", committed=ago(3))  # merged, but recent
    fake.merge_branch(ORG, name, "fresh")
    return heads


def cleanup_changes(doc, repo: str = "app") -> list[tuple[str, str]]:
    result = next(r for r in doc["results"] if r["repo"] == f"{ORG}/{repo}")
    return [(c["field"], c["outcome"]) for c in result["changes"] if c["policy"] == "branch_cleanup"]


def ref_deletions(fake) -> list[str]:
    return [c.path for c in fake.calls if c.method == "DELETE" and "/git/refs/" in c.path]


async def test_a_sweep_lists_stale_branches_in_dry_run_then_deletes_them(org, env):
    heads = stale_branches(org)
    kept = set(org.branches(ORG, "app")) - set(heads)
    org.reset_calls()
    code, doc, err = await sweep(env, "--dry-run")
    assert code == 0, err
    assert cleanup_changes(doc) == [("feature/a#b", "dry-run"), ("old-merged", "dry-run"),
                                    ("old-squashed", "dry-run")]
    assert ref_deletions(org) == [] and set(org.branches(ORG, "app")) == kept | set(heads)

    org.reset_calls()
    time = BulkTime()
    code, doc, err = await sweep(env, time=time)
    assert code == 0, err
    assert {r["repo"]: r["outcome"] for r in doc["results"]} == {
        f"{ORG}/.github": "compliant", f"{ORG}/app": "fixed"}
    assert cleanup_changes(doc) == [("feature/a#b", "applied"), ("old-merged", "applied"),
                                    ("old-squashed", "applied")]
    assert set(org.branches(ORG, "app")) == kept
    # Exactly these requests: the batched read, the repository's own query, the question
    # whether the default branch holds the heads no merged pull request accounts for, and one
    # DELETE per branch (a branch's slashes as they are, a # escaped: sent as it is, it would
    # end the path there), spaced as bulk writes.
    assert [f"{c.method} {c.path}" for c in org.calls if c.path.startswith(f"/repos/{ORG}/app")] == [
        f"DELETE /repos/{ORG}/app/git/refs/heads/feature/a#b",
        f"DELETE /repos/{ORG}/app/git/refs/heads/old-merged",
        f"DELETE /repos/{ORG}/app/git/refs/heads/old-squashed",
    ]
    assert time.sleeps.count(1.0) >= 2
    names = [re.search(r"query (\w+)", c.graphql_query).group(1) for c in org.calls if c.graphql_query]
    assert names.count("MokoOwnerRepositories") == 1
    assert names.count("MokoBranchCleanup") == 1  # app; .github has nothing old enough
    assert names.count("MokoBranchesMerged") == 1
    merged_query = next(c.graphql_query for c in org.calls if "MokoBranchesMerged" in (c.graphql_query or ""))
    # Asked only for the old ones no merged pull request settled, nothing kept anyway.
    assert sorted(re.findall(r'headRef: "([^"]+)"', merged_query)) == [
        "feature/a#b", "old-closed", "old-merged", "old-unmerged"]

    # Each deletion's record holds the head it had: enough to make the branch again.
    records = [r for r in (await trail(env, repo=f"{ORG}/app")) if r.policy == "branch_cleanup"]
    applied = {r.field: r.before["sha"] for r in records if r.outcome == "applied"}
    assert applied == heads
    assert all(r.after is None for r in records)

    # The next sweep finds nothing to delete and writes nothing; what keeps the old branches
    # that stay was found by the last read, and is not asked again for a day.
    org.reset_calls()
    code, doc, err = await sweep(env)
    assert code == 0, err
    assert cleanup_changes(doc) == [] and ref_deletions(org) == []
    assert not any("MokoBranch" in (c.graphql_query or "") for c in org.calls)
    # A kept branch whose head moves is asked about again.
    org.push(ORG, "app", "old-unmerged", committed=ago(100))
    org.reset_calls()
    code, doc, err = await sweep(env)
    assert code == 0, err
    assert any("MokoBranchCleanup" in (c.graphql_query or "") for c in org.calls)
    assert "old-unmerged" in org.branches(ORG, "app")


async def test_merged_only_false_deletes_old_unmerged_branches_too(org, env):
    org.put_file(ORG, ".github", ".github/moko.yml", POLICY.replace("  keep:", "  merged_only: false\n  keep:"))
    compliant_repo(org, "lab")
    org.add_branch(ORG, "lab", "spike", committed=ago(100))
    org.add_branch(ORG, "lab", "release/2", committed=ago(100))
    org.add_branch(ORG, "lab", "draft", committed=ago(100))
    org.add_branch_pull_request(ORG, "lab", "draft", state="open")
    org.reset_calls()
    code, doc, err = await sweep(env)
    assert code == 0, err
    assert cleanup_changes(doc, "lab") == [("spike", "applied")]
    assert set(org.branches(ORG, "lab")) == {"main", "release/2", "draft"}
    # Whether the default branch holds a head is not asked: it does not matter here.
    assert not any("MokoBranchesMerged" in (c.graphql_query or "") for c in org.calls)


async def test_without_the_section_no_branch_is_read_or_deleted(org, env):
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\n")
    compliant_repo(org, "plain")
    org.add_branch(ORG, "plain", "ancient", committed=ago(1000))
    org.merge_branch(ORG, "plain", "ancient")
    org.reset_calls()
    code, doc, err = await sweep(env)
    assert code == 0, err
    assert {r["repo"]: r["outcome"] for r in doc["results"]}[f"{ORG}/plain"] == "compliant"
    assert "ancient" in org.branches(ORG, "plain") and ref_deletions(org) == []
    queries = [c.graphql_query for c in org.calls if c.graphql_query]
    # The batched read asks for no branch: a sweep costs what it cost before the section existed.
    assert not any("refs(" in q or "MokoBranch" in q for q in queries)
    assert [q for q in queries if "MokoOwnerRepositories" in q] and len(queries) == 2  # schema, batch


async def test_a_branch_already_gone_counts_as_deleted(org, env):
    compliant_repo(org, "racy")
    org.add_branch(ORG, "racy", "done", committed=ago(200))
    org.merge_branch(ORG, "racy", "done")
    # Someone deletes it between Moko's read and its DELETE.
    org.fail("DELETE", rf"^/repos/{ORG}/racy/git/refs/heads/done$", 422,
             body={"message": "Reference does not exist",
                   "documentation_url": "https://docs.github.com/rest/git/refs#delete-a-reference"})
    code, doc, err = await sweep(env, "--repo", "racy")
    assert code == 0, err
    assert cleanup_changes(doc, "racy") == [("done", "applied")]


async def test_a_refused_deletion_fails_the_repository_and_the_others_still_go(org, env):
    compliant_repo(org, "mixed")
    for branch in ("a-old", "b-old"):
        org.add_branch(ORG, "mixed", branch, committed=ago(200))
        org.merge_branch(ORG, "mixed", branch)
    org.fail("DELETE", rf"^/repos/{ORG}/mixed/git/refs/heads/a-old$", 403)
    code, doc, err = await sweep(env, "--repo", "mixed")
    assert code == 1
    assert cleanup_changes(doc, "mixed") == [("a-old", "failed"), ("b-old", "applied")]
    assert set(org.branches(ORG, "mixed")) == {"main", "a-old"}


async def test_a_refused_deletion_leaves_a_protection_waiting_for_its_branch_recorded(org, env):
    # hotfix does not exist yet: its protection waits for it, and that wait is recorded (its
    # time is when the wait began) even though a branch deletion of the same sweep failed.
    org.put_file(ORG, ".github", ".github/moko.yml", POLICY + (
        "branches:\n  - name: hotfix\n    protection:\n      required_status_checks: null\n"
        "      enforce_admins: true\n      required_pull_request_reviews: null\n      restrictions: null\n"))
    compliant_repo(org, "waits")
    org.add_branch(ORG, "waits", "a-old", committed=ago(200))
    org.merge_branch(ORG, "waits", "a-old")
    org.fail("DELETE", rf"^/repos/{ORG}/waits/git/refs/heads/a-old$", 403)
    code, doc, _ = await sweep(env, "--repo", "waits")
    assert code == 1
    result = next(r for r in doc["results"] if r["repo"] == f"{ORG}/waits")
    assert [(c["policy"], c["field"], c["outcome"]) for c in result["changes"]] == [
        ("branch_cleanup", "a-old", "failed"), ("branch_protection", "hotfix", "deferred")]
    assert "a-old" in org.branches(ORG, "waits")


async def test_webhooks_and_apply_never_delete_a_branch_and_plan_and_status_show_them(org, moko):
    heads = stale_branches(org, "web")
    org.set_permission(ORG, "web", "alice", "maintain")

    def answer() -> str:
        bodies = [c["body"] for c in org.comments(ORG, "web", 1) if c["user"]["login"] == org.bot_login]
        return re.sub(r"<!--[^>]*-->", "", bodies[-1])

    org.add_issue(ORG, "web", "Questions")
    await moko.deliver("repository", org.event("repository", "edited", owner=ORG, repo="web",
                                               changes={"description": {"from": "old"}}))
    await moko.deliver("installation", org.event("installation", "created", owner=ORG))
    await moko.deliver("push", org.event("push", owner=ORG, repo=".github", ref="refs/heads/main",
                                         modified=[".github/moko.yml"]))
    for body in ("/moko plan", "/moko status", "/moko apply"):
        event = org.event("issue_comment", "created", owner=ORG, repo="web", body=body, sender="alice")
        await moko.deliver("issue_comment", event)
        if body == "/moko plan":
            for branch, sha in heads.items():
                assert f"- delete branch {branch}: head {sha[:12]}" in answer().replace("&#8203;", "")
        if body == "/moko status":
            row = next(line for line in answer().splitlines() if "| stale branches |" in line)
            assert row.replace("&#8203;", "").endswith(
                "| the next sweep deletes feature/a#b, old-merged, old-squashed | no |")
    assert ref_deletions(org) == []
    assert set(heads) <= set(org.branches(ORG, "web"))
    records = await moko.services.store.audit_records(repo=f"{ORG}/web")
    assert [r for r in records if r.policy == "branch_cleanup"] == []


async def test_the_continuous_reconciliation_deletes_stale_branches(org, tmp_path):
    from tests.support.harness import moko_environ, start_moko_process
    from tests.support.waiting import wait_until
    from tests.test_reconciliation import SHORT

    compliant_repo(org, "svc")
    org.add_branch(ORG, "svc", "old", committed=ago(200))
    org.merge_branch(ORG, "svc", "old")
    env = moko_environ(org, f"sqlite:///{tmp_path}/moko.db", **SHORT)
    moko = await start_moko_process(env, tmp_path / "moko.log")
    try:
        await wait_until(lambda: "old" not in org.branches(ORG, "svc"))
    finally:
        assert await moko.stop() == 0, moko.log()
    assert ref_deletions(org) == [f"/repos/{ORG}/svc/git/refs/heads/old"]


def check_config(tmp_path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "moko.yml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "handlers.wiring.cli", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_check_config_rejects_a_bad_section_with_its_lines(tmp_path):
    ok = check_config(tmp_path, POLICY)
    assert ok.returncode == 0
    # app.yml asks for contents: read; deleting a branch needs write.
    assert f"{tmp_path / 'moko.yml'}:2: warning: branch_cleanup.branches: writing it needs the contents: write" in ok.stdout
    bad = check_config(tmp_path, "version: 1\nbranch_cleanup:\n  after: 3 months\n  merged_only: yes please\n"
                       "  keep: [\"release/[0-9\", \"\"]\n  keep_open: true\n")
    assert bad.returncode == 2
    path = tmp_path / "moko.yml"
    assert bad.stdout.splitlines() == [
        f"{path}:3: branch_cleanup.after: must be a duration such as 90d, 12h or 30m, not '3 months'",
        f"{path}:4: branch_cleanup.merged_only: must be true or false, not 'yes please'",
        f"{path}:5: branch_cleanup.keep[0]: 'release/[0-9': a [ is not closed",
        f"{path}:5: branch_cleanup.keep[1]: must be a non-empty glob such as release/*",
        f"{path}:6: branch_cleanup.keep_open: unknown key (allowed: after, merged_only, keep)",
    ]
    missing = check_config(tmp_path, "branch_cleanup: {merged_only: false}\n")
    assert missing.stdout.splitlines() == [
        f"{path}:1: branch_cleanup: after: missing (how long a branch has had no commits, e.g. 90d)"]


async def test_a_repository_may_enable_deletion_only_when_the_organization_lists_branch_cleanup(org, env):
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\noverrides: [repository]\n")
    compliant_repo(org, "own")
    org.put_file(ORG, "own", ".github/moko.yml", "branch_cleanup: {after: 30d, merged_only: false}\n")
    org.add_branch(ORG, "own", "old", committed=ago(60))
    code, doc, err = await sweep(env, "--repo", "own")
    assert code == 0, err
    assert "old" in org.branches(ORG, "own") and ref_deletions(org) == []
    # Listed by name, the repository's own section applies.
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\noverrides: [repository, branch_cleanup]\n")
    code, doc, err = await sweep(env, "--repo", "own")
    assert code == 0, err
    assert cleanup_changes(doc, "own") == [("old", "applied")]
    assert "old" not in org.branches(ORG, "own")


async def test_what_a_sweep_of_301_repositories_costs_with_and_without_the_section(org, env):
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\n")
    for i in range(300):
        name = f"repo-{i:03d}"
        compliant_repo(org, name)
        for branch in ("feature/x", "fix"):  # recent work: nothing old enough to go
            org.add_branch(ORG, name, branch, committed=ago(5))
    org.add_branch(ORG, "repo-007", "stale", committed=ago(200))
    org.merge_branch(ORG, "repo-007", "stale")

    async def points(policy: str) -> tuple[int, list[str], int]:
        org.put_file(ORG, ".github", ".github/moko.yml", policy)
        org.reset_calls()
        before = org.rate_limit(INSTALLATION, "graphql")["used"]
        code, doc, err = await sweep(env)
        assert code == 0, err
        names = [re.search(r"query (\w+)", c.graphql_query).group(1) for c in org.calls if c.graphql_query]
        rest = len([c for c in org.calls if not c.graphql_query and c.path.startswith("/repos/")])
        return org.rate_limit(INSTALLATION, "graphql")["used"] - before, names, rest

    without, names_without, rest_without = await points("version: 1\n")
    with_section, names_with, rest_with = await points(POLICY)
    # 4 pages of 100 repositories; each asks for their branches as one more connection (about
    # a point a page, as GitHub rounds). Only the repository with an old branch costs a query
    # of its own (3 points: its branches' pull requests and rules), the question of its merge
    # (1) and a DELETE.
    assert names_without.count("MokoOwnerRepositories") == names_with.count("MokoOwnerRepositories") == 4
    assert [n for n in names_with if n.startswith("MokoBranch")] == ["MokoBranchCleanup", "MokoBranchesMerged"]
    assert rest_with == rest_without + 1
    assert (without, with_section) == (5, 12)


# --- planning, without I/O ------------------------------------------------------------------


def test_planning_is_pure_and_keeps_what_it_cannot_tell():
    from policies.branch_cleanup import Branches, BranchInfo, plan_cleanup_kind
    from policies.engine import ALL, SWEEP
    from policies.loader import parse_policy
    from policies.model import RepoState

    policy = parse_policy(POLICY)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    old, young = now - timedelta(days=91), now - timedelta(days=89)

    def plan(*branches: BranchInfo, detailed: bool = True, empty: bool = False, chosen=policy):
        state = Branches(now, "main", branches, detailed)
        repo = RepoState({"full_name": f"{ORG}/x", "default_branch": "main"}, empty=empty,
                         kinds={"branch_cleanup": state})
        return plan_cleanup_kind(chosen, repo)

    def branch(name: str, when: datetime = old, **kw) -> BranchInfo:
        return BranchInfo(name, "a" * 40, when, kw.pop("protected", False), **{"open_pulls": 0, "merged": True, **kw})

    going = plan(branch("main"), branch("gone"), branch("young", young), branch("release/1"),
                 branch("open", open_pulls=1), branch("unmerged", merged=False), branch("unasked", merged=None),
                 branch("guarded", protected=True), branch("undated", None))
    assert [(c.field, c.method, c.before["sha"]) for c in going.changes] == [("gone", "DELETE", "a" * 40)]
    # Names and dates alone: an old branch asks for the details first; none old: nothing more.
    assert plan(branch("gone"), detailed=False).needs_read == ("branch_cleanup.*",)
    assert plan(branch("young", young), detailed=False) == type(going)()
    assert plan(branch("gone"), empty=True).changes == ()
    # Only sweeps (and /moko plan, status) plan it: an event's remediation leaves it out.
    assert ALL.restrict(policy).branch_cleanup is None
    assert SWEEP.restrict(policy).branch_cleanup == policy.branch_cleanup


async def test_a_pull_request_adding_the_section_previews_the_branches_it_would_delete(org, tmp_path):
    from tests.test_hostile_policies import serve_and_send

    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\n")
    compliant_repo(org, "alpha")
    org.add_branch(ORG, "alpha", "done", committed=ago(200))
    org.merge_branch(ORG, "alpha", "done")
    compliant_repo(org, "beta")
    org.add_branch(ORG, "beta", "recent", committed=ago(2))
    pull = org.add_pull_request(ORG, ".github", {".github/moko.yml": POLICY})
    opened = org.event("pull_request", "opened", owner=ORG, repo=".github", number=pull["number"])
    await serve_and_send(org, tmp_path, ("pull_request", opened, "preview-cleanup"))
    [run] = [r for r in org.check_runs(ORG, ".github") if r["name"] == "Moko policy preview"]
    rows = [line for line in run["output"]["text"].splitlines() if line.startswith("| acme/")]
    assert len(rows) == 1 and rows[0].startswith("| acme/alpha | delete branch done: head ")
    assert ref_deletions(org) == [] and "done" in org.branches(ORG, "alpha")
    # Read as a dry-run sweep reads: the branches in the batched read, and a query of its own
    # only for the repository with an old branch.
    names = [re.search(r"query (\w+)", c.graphql_query).group(1) for c in org.calls if c.graphql_query]
    assert names.count("MokoBranchCleanup") == 1


async def test_a_server_without_ref_rules_is_not_asked_for_them(org, env):
    org.serve_schema(without_fields={"Ref": ["rules"]})  # an older GitHub Enterprise Server
    compliant_repo(org, "old")
    for branch in ("done", "guard/x"):
        org.add_branch(ORG, "old", branch, committed=ago(200))
        org.merge_branch(ORG, "old", branch)
    org.add_ruleset(ORG, "old", GUARD)
    code, doc, err = await sweep(env, "--repo", "old")
    # The query names no field the server lacks; the branch only a ruleset guards is not known
    # to be guarded, and GitHub refuses its deletion.
    queries = [c.graphql_query for c in org.calls if "MokoBranchCleanup" in (c.graphql_query or "")]
    assert queries and not any("rules(" in q for q in queries)
    assert code == 1
    assert cleanup_changes(doc, "old") == [("done", "applied"), ("guard/x", "failed")]
    assert set(org.branches(ORG, "old")) == {"main", "guard/x"}
