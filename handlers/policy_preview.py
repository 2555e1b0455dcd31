"""The policy preview: a pull request in an organization's `.github` repository that changes
`.github/moko.yml` gets the file at its head validated and planned against every repository,
reported as the check run `Moko policy preview` on its head commit. Nothing is written to
any repository, and the file at the head is never taken as the organization's policy."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gidgethub import BadRequest

from bot.github_protocol import GitHub
from bot.logs import get_logger
from handlers.preview_report import CHECK_NAME, CheckOutput, invalid_output, preview_output
from policies.apply import github_error
from policies.defaults import DEFAULT_POLICY
from policies.engine import PolicyEngine
from policies.loader import policy_of
from policies.preview import preview_policy
from policies.source import POLICY_PATH, POLICY_REPO, read_file

log = get_logger("moko.preview")


@dataclass(frozen=True)
class PolicyChange:
    """How a pull request changes the policy file: edits it, or removes it (renamed away too)."""

    removed: bool = False


@dataclass(frozen=True)
class PreviewRun:
    """The check run a preview made."""

    conclusion: str
    title: str
    check_run_id: int | None
    html_url: str | None


def is_policy_repository(repo: dict[str, Any]) -> bool:
    return str(repo.get("name") or "").lower() == POLICY_REPO


async def policy_change(gh: GitHub, owner: str, repo: str, number: int) -> PolicyChange | None:
    """Whether the pull request changes the policy file, from its files list (100 a page,
    stopping at the file): one request for most pull requests, whatever their size."""
    async for entry in gh.getiter(
        "/repos/{owner}/{repo}/pulls/{pull_number}/files{?per_page}",
        url_vars={"owner": owner, "repo": repo, "pull_number": str(number), "per_page": "100"},
    ):
        if entry.get("filename") == POLICY_PATH:
            return PolicyChange(removed=entry.get("status") == "removed")
        if entry.get("previous_filename") == POLICY_PATH:
            return PolicyChange(removed=True)
    return None


async def run_preview(
    gh: GitHub, engine: PolicyEngine, installation: int | None, owner: str, repo: str, head_sha: str,
    change: PolicyChange,
) -> PreviewRun:
    """Validate and plan the policy file at ``head_sha`` and report it as a check run.

    The file is read from the base repository at the head's SHA: GitHub serves a pull
    request's head commit there (refs/pull/N/head), a fork's too, and the App may not be
    installed on the fork."""
    source = f"{owner}/{repo}/{POLICY_PATH}@{head_sha[:7]}"
    file = None if change.removed else await read_file(gh, owner, repo, POLICY_PATH, ref=head_sha)
    if file is None:  # removed: once merged, the built-in default applies
        output = preview_output(await preview_policy(engine, gh, installation, owner, DEFAULT_POLICY), head_sha)
    else:
        loaded = await engine.source.parsed.load(file, source)
        if loaded.valid:
            proposed = policy_of(loaded)
            output = preview_output(await preview_policy(engine, gh, installation, owner, proposed), head_sha)
        else:
            output = invalid_output(loaded.problems, head_sha)
    try:
        run = await post_check_run(gh, owner, repo, head_sha, output)
    except BadRequest as exc:
        if exc.status_code != 403:
            raise
        # An installation made before the App asked for checks: write has to accept it first;
        # sending the delivery again would not help.
        log.error("policy_preview_not_reported", repo=f"{owner}/{repo}", head_sha=head_sha,
                  conclusion=output.conclusion, error=github_error(exc),
                  fix="accept the App's new permission (checks: write) in the installation's settings")
        return PreviewRun(output.conclusion, output.title, None, None)
    log.info("policy_previewed", repo=f"{owner}/{repo}", head_sha=head_sha, conclusion=output.conclusion,
             title=output.title, check_run=run.check_run_id)
    return run


async def post_check_run(gh: GitHub, owner: str, repo: str, head_sha: str, output: CheckOutput) -> PreviewRun:
    """One completed check run; annotations beyond the first 50 go with updates, 50 each."""
    batches = output.annotation_batches() or [()]
    url_vars = {"owner": owner, "repo": repo}
    created = await gh.post(
        "/repos/{owner}/{repo}/check-runs",
        url_vars=url_vars,
        data={
            "name": CHECK_NAME,
            "head_sha": head_sha,
            "status": "completed",
            "conclusion": output.conclusion,
            "completed_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "output": output.output(batches[0]),
        },
    )
    check_run_id = int(created["id"]) if isinstance(created, dict) and "id" in created else None
    if check_run_id is not None:
        for batch in batches[1:]:
            await gh.patch(
                "/repos/{owner}/{repo}/check-runs/{check_run_id}",
                url_vars={**url_vars, "check_run_id": str(check_run_id)},
                data={"output": output.output(batch)},
            )
    html_url = created.get("html_url") if isinstance(created, dict) else None
    return PreviewRun(output.conclusion, output.title, check_run_id, html_url)
