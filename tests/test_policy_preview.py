"""The policy preview, from outside: a pull request in the organization's `.github` repository
that changes `.github/moko.yml` is sent to `moko serve`, and the check run `Moko policy
preview` on its head commit says what merging it would change; nothing is written anywhere,
and the merged file alone is enforced."""

from __future__ import annotations

import io
import json
import time

import pytest

from bot.config import load_settings
from handlers.wiring import cli
from handlers.wiring.cli_sweep import sweep_command
from tests.support.harness import moko_environ
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG
from tests.test_hostile_policies import serve_and_send

MERGED = "version: 1\nrepository:\n  has_issues: true\n  has_wiki: false\n  has_projects: false\n"
# Wikis on, and the sandbox left alone: .github and alpha would change, beta has its wiki on.
PROPOSED = (
    "version: 1\nrepository:\n  has_issues: true\n  has_wiki: true\n  has_projects: false\n"
    "scope:\n  exclude: [sandbox]\n"
)
INVALID = "version: 1\nrepository:\n  has_issues: true\n  has_wikki: true\n"
WRITES = ("PATCH", "PUT", "DELETE")


@pytest.fixture
def org(fake_github):
    fake = fake_github
    fake.add_installation(INSTALLATION, ORG)
    for name, fields in ((".github", {}), ("alpha", {}), ("beta", {"has_wiki": True}), ("sandbox", {})):
        fake.add_repo(ORG, name, **{**COMPLIANT, **fields})
        fake.set_protection(ORG, name, "main", DEFAULT_PROTECTION)
    fake.put_file(ORG, ".github", ".github/moko.yml", MERGED)
    return fake


def repository_writes(fake) -> list[str]:
    """Every write to a repository's settings, protection, rulesets or issues."""
    return [f"{c.method} {c.path}" for c in fake.calls
            if c.path.startswith("/repos/") and (c.method in WRITES or "/issues" in c.path and c.method == "POST")]


def preview_runs(fake) -> list[dict]:
    return [run for run in fake.check_runs(ORG, ".github") if run["name"] == "Moko policy preview"]


async def test_a_valid_change_gets_a_neutral_check_run_listing_what_would_change(org, tmp_path):
    pull = org.add_pull_request(ORG, ".github", {".github/moko.yml": PROPOSED, "README.md": "policy\n"})
    opened = org.event("pull_request", "opened", owner=ORG, repo=".github", number=pull["number"])
    await serve_and_send(org, tmp_path, ("pull_request", opened, "preview-1"))

    [run] = preview_runs(org)
    assert run["head_sha"] == pull["head"]["sha"]
    assert (run["status"], run["conclusion"]) == ("completed", "neutral")
    output = run["output"]
    assert output["title"] == "2 of 3 repositories would change"
    # Changes per field, and the table of planned changes: exactly .github and alpha's wiki.
    assert "| repository.has\\_wiki | 2 |" in output["summary"]
    assert "1 more repositories are out of its scope" in output["summary"]
    rows = [line for line in output["text"].splitlines() if line.startswith("| acme/")]
    assert rows == [
        "| acme/.github | has\\_wiki: false → true |",
        "| acme/alpha | has\\_wiki: false → true |",
    ]
    # A preview writes nothing, and reads the file at the head from the base repository.
    assert repository_writes(org) == []
    [read] = org.calls_to("GET", rf"^/repos/{ORG}/\.github/contents/\.github/moko\.yml$")
    assert read.query == {"ref": pull["head"]["sha"]}
    assert org.repo(ORG, "alpha")["has_wiki"] is False


async def test_an_invalid_file_fails_with_an_annotation_on_its_line(org, tmp_path):
    pull = org.add_pull_request(ORG, ".github", {".github/moko.yml": INVALID})
    opened = org.event("pull_request", "opened", owner=ORG, repo=".github", number=pull["number"])
    await serve_and_send(org, tmp_path, ("pull_request", opened, "invalid-1"))

    [run] = preview_runs(org)
    assert (run["conclusion"], run["head_sha"]) == ("failure", pull["head"]["sha"])
    assert run["output"]["title"] == "The policy file is invalid (1 error)"
    assert "line 4: repository.has\\_wikki" in run["output"]["summary"]
    [annotation] = org.check_run_annotations(ORG, ".github", run["id"])
    assert annotation["path"] == ".github/moko.yml"
    assert (annotation["start_line"], annotation["end_line"], annotation["annotation_level"]) == (4, 4, "failure")
    assert "has_wikki" in annotation["message"] and "did you mean 'has_wiki'" in annotation["message"]
    assert repository_writes(org) == []
    # No GraphQL read: an invalid file is not planned.
    assert org.count("POST", "^/graphql$") == 0


async def test_more_than_50_errors_are_annotated_50_a_request(org, tmp_path):
    lines = "".join(f"  has_wiki{i}: true\n" for i in range(120))
    pull = org.add_pull_request(ORG, ".github", {".github/moko.yml": "version: 1\nrepository:\n" + lines})
    opened = org.event("pull_request", "opened", owner=ORG, repo=".github", number=pull["number"])
    written: list[float] = []
    org.on_request(lambda call: written.append(time.monotonic()) if "/check-runs" in call.path else None)
    await serve_and_send(org, tmp_path, ("pull_request", opened, "many-1"))

    [run] = preview_runs(org)
    annotations = org.check_run_annotations(ORG, ".github", run["id"])
    assert [a["start_line"] for a in annotations] == list(range(3, 123))
    assert run["output"]["annotations_count"] == 120
    assert org.count("POST", rf"^/repos/{ORG}/\.github/check-runs$") == 1
    assert org.count("PATCH", rf"^/repos/{ORG}/\.github/check-runs/\d+$") == 2  # 50 + 50 + 20
    # A preview is bulk work (it reads the whole organization): its writes go a second apart,
    # as GitHub asks of a run of mutating requests.
    assert len(written) == 3
    assert written[1] - written[0] >= 0.9 and written[2] - written[1] >= 0.9


async def test_a_forks_pull_request_gets_a_preview_and_its_file_is_never_enforced(org, tmp_path):
    pull = org.add_pull_request(ORG, ".github", {".github/moko.yml": PROPOSED}, user="mallory", fork=True)
    assert pull["head"]["repo"]["full_name"] == "mallory/.github"
    opened = org.event("pull_request", "opened", owner=ORG, repo=".github", number=pull["number"],
                       sender="mallory")
    # Alpha's wiki drifts on; a person's edit brings its event after the preview.
    org.repo(ORG, "alpha")["has_wiki"] = True
    edited = org.event("repository", "edited", owner=ORG, repo="alpha",
                       changes={"description": {"from": None}})
    await serve_and_send(org, tmp_path, ("pull_request", opened, "fork-1"))

    [run] = preview_runs(org)
    assert run["conclusion"] == "neutral" and run["head_sha"] == pull["head"]["sha"]
    assert "acme/.github" in run["output"]["text"]
    assert repository_writes(org) == []
    assert not [c for c in org.calls if c.path.startswith("/repos/mallory/")]

    # The merged file still rules: the wiki the fork's file would allow is turned off.
    await serve_and_send(org, tmp_path, ("repository", edited, "edit-1"), log_name="serve-2.log")
    [patch] = org.calls_to("PATCH", f"^/repos/{ORG}/alpha$")
    assert patch.body == {"has_wiki": False}


async def test_a_change_that_changes_nothing_succeeds(org, tmp_path):
    org.repo(ORG, "beta")["has_wiki"] = False  # every repository complies with the merged file
    same = MERGED + "# reworded, same policy\n"
    pull = org.add_pull_request(ORG, ".github", {".github/moko.yml": same})
    opened = org.event("pull_request", "reopened", owner=ORG, repo=".github", number=pull["number"])
    await serve_and_send(org, tmp_path, ("pull_request", opened, "same-1"))

    [run] = preview_runs(org)
    assert run["conclusion"] == "success"
    assert run["output"]["title"] == "No repository would change"
    assert "the 4 repositories in its scope already comply" in run["output"]["summary"]
    assert not run["output"]["text"]


async def test_pull_requests_that_do_not_touch_the_policy_file_cost_one_request(org, tmp_path):
    docs = org.add_pull_request(ORG, ".github", {"README.md": "docs\n"})
    elsewhere = org.add_pull_request(ORG, "alpha", {".github/moko.yml": PROPOSED})
    await serve_and_send(
        org, tmp_path,
        ("pull_request", org.event("pull_request", "opened", owner=ORG, repo=".github", number=docs["number"]), "d-1"),
        ("pull_request", org.event("pull_request", "opened", owner=ORG, repo="alpha",
                                   number=elsewhere["number"]), "d-2"),
    )
    assert preview_runs(org) == [] and org.check_runs(ORG, "alpha") == []
    installation_calls = [f"{c.method} {c.path}" for c in org.calls if c.installation_id is not None]
    assert installation_calls == [f"GET /repos/{ORG}/.github/pulls/{docs['number']}/files"]


async def test_a_preview_costs_no_more_than_a_dry_run_sweep_plus_its_own_two_requests(org, tmp_path):
    for i in range(230):
        org.add_repo(ORG, f"svc-{i:03d}", **{**COMPLIANT, "has_wiki": i % 3 == 0})
        org.set_protection(ORG, f"svc-{i:03d}", "main", DEFAULT_PROTECTION)
    env = moko_environ(org, f"sqlite:///{tmp_path}/sweep.db")
    # The dry-run sweep of the merged policy, as the operator runs it.
    args = cli.build_parser().parse_args(["sweep", "--org", ORG, "--json", "--dry-run"])
    out = io.StringIO()
    assert await sweep_command(args, load_settings(env), out=out, err=io.StringIO()) == 0
    sweep_calls = [c for c in org.calls if c.installation_id is not None]
    assert json.loads(out.getvalue())["repositories"] == 234
    org.reset_calls()

    pull = org.add_pull_request(ORG, ".github", {".github/moko.yml": PROPOSED})
    opened = org.event("pull_request", "opened", owner=ORG, repo=".github", number=pull["number"])
    await serve_and_send(org, tmp_path, ("pull_request", opened, "cost-1"))
    preview_calls = [c for c in org.calls if c.installation_id is not None]
    [run] = preview_runs(org)
    assert run["conclusion"] == "neutral"
    # The same batched reads (100 repositories a GraphQL query); the preview adds the pull
    # request's files and the check run, the sweep read the merged file as the preview reads
    # the proposed one.
    graphql = [c for c in preview_calls if c.path == "/graphql"]
    assert len(graphql) == len([c for c in sweep_calls if c.path == "/graphql"])
    assert len(preview_calls) <= len(sweep_calls) + 2, [f"{c.method} {c.path}" for c in preview_calls]
    # 155 repositories would change: the text lists the first 100, within GitHub's limits.
    changed = 1 + len([i for i in range(230) if i % 3]) + 1  # .github, alpha, the svc ones with wikis off
    assert run["output"]["title"] == f"{changed} of 233 repositories would change"
    assert run["output"]["text"].startswith(f"### Planned changes (100 of {changed})")
    assert len([line for line in run["output"]["text"].splitlines() if line.startswith("| acme/")]) == 100
    assert len(run["output"]["summary"]) <= 65_535 and len(run["output"]["text"]) <= 65_535
    print(f"requests: dry-run sweep {len(sweep_calls)}, preview {len(preview_calls)}")
    assert repository_writes(org) == []


async def test_moko_plan_on_the_pull_request_runs_the_preview_again(org, tmp_path):
    pull = org.add_pull_request(ORG, ".github", {".github/moko.yml": PROPOSED})
    opened = org.event("pull_request", "opened", owner=ORG, repo=".github", number=pull["number"])
    org.set_permission(ORG, ".github", "alice", "triage")
    org.set_permission(ORG, ".github", "eve", "read")
    await serve_and_send(org, tmp_path, ("pull_request", opened, "plan-0"))
    org.repo(ORG, "beta")["has_wiki"] = False  # beta's wiki went off meanwhile: now it would change too
    command = org.event("issue_comment", "created", owner=ORG, repo=".github", issue_number=pull["number"],
                        body="/moko plan", user="alice")
    await serve_and_send(org, tmp_path, ("issue_comment", command, "plan-1"), log_name="serve-2.log")

    first, again = preview_runs(org)
    assert (first["output"]["title"], again["output"]["title"]) == (
        "2 of 3 repositories would change", "3 of 3 repositories would change")
    assert again["head_sha"] == pull["head"]["sha"]
    [answer] = [c["body"] for c in org.comments(ORG, ".github", pull["number"]) if c["user"]["login"] == "moko[bot]"]
    assert "Moko ran the policy preview again" in answer and "**neutral**" in answer
    # The answer and its reactions; no repository changed.
    assert [w for w in repository_writes(org) if not w.endswith(("/comments", "/reactions"))] == []

    # Below triage, no preview runs.
    denied = org.event("issue_comment", "created", owner=ORG, repo=".github", issue_number=pull["number"],
                       body="/moko plan", user="eve")
    await serve_and_send(org, tmp_path, ("issue_comment", denied, "plan-2"), log_name="serve-3.log")
    assert len(preview_runs(org)) == 2


async def test_repositories_own_files_apply_on_top_of_the_proposed_file(org, tmp_path):
    # Alpha keeps its wiki off in its own file, which the proposed file lets it decide.
    org.put_file(ORG, "alpha", ".github/moko.yml", "version: 1\nrepository:\n  has_wiki: false\n")
    proposed = PROPOSED + "overrides: [repository.has_wiki]\n"
    pull = org.add_pull_request(ORG, ".github", {".github/moko.yml": proposed})
    opened = org.event("pull_request", "opened", owner=ORG, repo=".github", number=pull["number"])
    await serve_and_send(org, tmp_path, ("pull_request", opened, "own-1"))

    [run] = preview_runs(org)
    assert run["output"]["title"] == "1 of 3 repositories would change"
    rows = [line for line in run["output"]["text"].splitlines() if line.startswith("| acme/")]
    assert rows == ["| acme/.github | has\\_wiki: false → true |"]
    # Read with the batch, not one by one.
    assert org.count("GET", rf"^/repos/{ORG}/alpha/contents/") == 0


async def test_a_new_push_to_the_pull_request_is_previewed_on_its_new_head(org, tmp_path):
    pull = org.add_pull_request(ORG, ".github", {".github/moko.yml": INVALID})
    opened = org.event("pull_request", "opened", owner=ORG, repo=".github", number=pull["number"])
    first_head = pull["head"]["sha"]
    pushed = org.push_to_pull_request(ORG, ".github", pull["number"], {".github/moko.yml": PROPOSED})
    synchronize = org.event("pull_request", "synchronize", owner=ORG, repo=".github", number=pull["number"])
    assert synchronize["after"] == pushed["head"]["sha"] != first_head
    await serve_and_send(org, tmp_path, ("pull_request", opened, "sync-0"), ("pull_request", synchronize, "sync-1"))

    runs = {run["head_sha"]: run for run in preview_runs(org)}
    assert (runs[first_head]["conclusion"], runs[pushed["head"]["sha"]]["conclusion"]) == ("failure", "neutral")


async def test_an_installation_without_checks_write_gets_no_check_run_and_a_clear_log_line(fake_github, tmp_path):
    fake = fake_github
    # Installed before the App asked for checks: write, and not yet accepted.
    fake.add_installation(INSTALLATION, ORG)
    fake.state.installations[INSTALLATION].permissions.pop("checks")
    fake.add_repo(ORG, ".github", **COMPLIANT)
    fake.put_file(ORG, ".github", ".github/moko.yml", MERGED)
    pull = fake.add_pull_request(ORG, ".github", {".github/moko.yml": PROPOSED})
    opened = fake.event("pull_request", "opened", owner=ORG, repo=".github", number=pull["number"])
    log = await serve_and_send(fake, tmp_path, ("pull_request", opened, "nochecks-1"))
    assert preview_runs(fake) == []
    assert "policy_preview_not_reported" in log and "checks: write" in log
    assert repository_writes(fake) == []
