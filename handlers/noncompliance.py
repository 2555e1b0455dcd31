"""Telling a repository that it does not meet policy (`notify: issue`): after a remediation of
its whole policy leaves it non-compliant (a permission missing, GitHub refusing a value, a field
Moko cannot read, protection waiting for its branch for more than a day, a change held for a
person, or `mode: report`), one issue in it says what is wrong and why Moko could not fix it.
The issue is found again by its hidden marker among the open issues Moko opened, updated
only when what it says changes, and closed with a comment once the repository complies.

Nothing is told in dry-run (`MOKO_DRY_RUN` or `mode: dry-run`); a repository with issues
turned off is skipped (logged)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

from gidgethub import BadRequest, GitHubException

from bot.github_protocol import GitHub
from bot.logs import get_logger
from bot.outcomes import Outcome
from bot.redact import REDACTOR
from bot.store.base import AuditEntry
from handlers.command_markdown import escape, table
from handlers.command_report import describe_change
from policies.apply import Run, github_error
from policies.batch_read import NOTICES_PAGE
from policies.engine import PolicyEngine, RepoResult
from policies.model import Change, OpenIssue, RepoState

log = get_logger("moko.notice")

ISSUE_TITLE = "Moko: this repository does not meet policy"
MARKER = "<!-- moko:noncompliance -->"
WAIT_LIMIT = timedelta(days=1)  # protection waiting for its branch longer than this is reported
NOTICE_POLICY = "notify"  # the audit records of the issue: policy "notify", field "issue"
CELL_LIMIT = 300
# GitHub refuses issue bodies over 65,536 characters.
BODY_BUDGET = 60_000

HEADERS = ("field", "what is wrong", "why Moko could not fix it")
INTRO = (
    "Moko could not bring this repository in line with the organization's policy "
    "(`.github/moko.yml` in its `.github` repository). What is wrong:"
)
OUTRO = (
    "Moko updates this issue while the repository does not meet policy, and closes it once "
    "it does. `/moko status` in a comment shows the current state."
)
CLOSING = "The repository meets policy now, so Moko closes this issue."
WHY_REPORT = "the policy's `mode: report`: Moko changes nothing, it only reports"
WHY_ROLLED_BACK = "undone, because a later change of the same remediation failed"
WRONG_UNKNOWN = "Moko cannot tell whether it complies"
WRONG_HELD = "not changed"
WAITING = "protection of {branch} waits for the branch"
DEFAULT_BRANCH = "the default branch"
WAITING_WHY = "the branch does not exist yet (waiting since {since})"


def _key(change: Change) -> str:
    return escape(f"{change.policy}.{change.field}")


def _wrong(change: Change, result: RepoResult, default_branch: str | None) -> str:
    return describe_change(change, result.policy, default_branch)


async def findings(engine: PolicyEngine, result: RepoResult, repo: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """What is wrong with the repository after its remediation, and why Moko could not fix
    it, as escaped table rows; [] when it complies."""
    plan, policy = result.plan, result.policy
    if plan is None or policy is None or plan.skipped is not None:
        return []
    default_branch = repo.get("default_branch")
    rows: list[tuple[str, str, str]] = []
    for outcome in result.changes:
        if outcome.outcome in (Outcome.FAILED, Outcome.ROLLED_BACK):
            why = outcome.error if outcome.outcome == Outcome.FAILED else WHY_ROLLED_BACK
            rows.append((_key(outcome.change), _wrong(outcome.change, result, default_branch),
                         escape(why or "GitHub refused it", CELL_LIMIT)))
    if policy.report:
        for change in plan.changes + plan.deferred:
            rows.append((_key(change), _wrong(change, result, default_branch), escape(WHY_REPORT, None)))
    elif plan.deferred:
        since = await engine.waiting_since(result.repo, tuple(change.field for change in plan.deferred))
        now = engine.audit.now()
        for change in plan.deferred:
            began = since.get(change.field)
            if began is not None and now - began > WAIT_LIMIT:
                rows.append((
                    _key(change),
                    escape(WAITING.format(branch=f"branch {change.target}" if change.target else DEFAULT_BRANCH)),
                    escape(WAITING_WHY.format(since=began.strftime("%Y-%m-%d %H:%M UTC"))),
                ))
    for held in plan.held:
        rows.append((escape(f"{held.policy}.{held.field}"), escape(WRONG_HELD), escape(held.reason, CELL_LIMIT)))
    for key, why in plan.unknown:
        rows.append((escape(key), escape(WRONG_UNKNOWN), escape(why, CELL_LIMIT)))
    return rows


def issue_body(rows: list[tuple[str, str, str]]) -> str:
    return REDACTOR.text(f"{MARKER}\n{INTRO}\n\n{table(HEADERS, rows, budget=BODY_BUDGET)}\n\n{OUTRO}\n")


def _seen(known: RepoState | None) -> tuple[OpenIssue, ...] | None:
    """Moko's open issues as a batched read saw them; None when it did not read them, or when
    they filled its page (Moko acting as a user who opened issues of their own): the notice
    may be beyond it."""
    seen = None if known is None else known.open_issues
    return None if seen is not None and len(seen) >= NOTICES_PAGE else seen


def _may_have_issue(result: RepoResult, known: RepoState | None) -> bool:
    """Whether a repository that complies may still have Moko's issue open, so that looking
    for it is worth a request: when Moko just fixed something, or when a batched read saw it
    (or saw a full page of Moko's issues). A repository found compliant without a change, and
    not batch-read, costs nothing."""
    if known is not None and known.open_issues is not None:
        seen = _seen(known)
        return seen is None or any(MARKER in issue.body for issue in seen)
    return result.outcome == Outcome.FIXED


class NonComplianceNotice:
    """The engine's ``notice`` hook. ``author`` says who Moko acts as (the App's bot login,
    or a token's user), so that only its own issues are looked through."""

    def __init__(self, author: Callable[[], Awaitable[str]]) -> None:
        self._author = author

    async def __call__(
        self, gh: GitHub, run: Run, repo: Mapping[str, Any], result: RepoResult, engine: PolicyEngine,
        known: RepoState | None = None,
    ) -> None:
        policy = result.policy
        if policy is None or policy.notify != "issue":
            return
        if engine.global_dry_run or (policy.dry_run and not policy.report):
            return  # dry-run opens no issue
        rows = await findings(engine, result, repo)
        owner, name = result.repo.split("/", 1)
        if not rows and result.outcome not in (Outcome.COMPLIANT, Outcome.FIXED):
            return  # not planned (a failed read, an invalid file): nothing can be said
        if repo.get("has_issues") is False:
            if rows:
                log.warning("notice_skipped", repo=result.repo, reason="issues are turned off")
            return
        if not rows and not _may_have_issue(result, known):
            return
        seen = _seen(known)
        try:
            # Under the repository's lock: two deliveries about it never open two issues.
            async with engine.store.repository_lock(result.repo):
                if rows:
                    await self._tell(gh, engine, run, owner, name, issue_body(rows), seen)
                else:
                    await self._close(gh, engine, run, owner, name, seen)
        except BadRequest as exc:
            if exc.status_code == 410:  # GitHub: "Issues are disabled for this repo"
                log.warning("notice_skipped", repo=result.repo, reason="issues are turned off")
                return
            raise

    async def _find(
        self, gh: GitHub, owner: str, name: str, seen: tuple[OpenIssue, ...] | None
    ) -> dict[str, Any] | None:
        """Moko's open non-compliance issue: among the open issues Moko opened, the one with
        the marker; as a batched read saw them (no request), or asked of GitHub (usually one
        request: Moko opens few issues)."""
        if seen is not None:
            found = next((issue for issue in seen if MARKER in issue.body), None)
            return None if found is None else {"number": found.number, "body": found.body}
        author = await self._author()
        async for issue in gh.getiter(
            "/repos/{owner}/{repo}/issues{?creator,state,per_page}",
            url_vars={"owner": owner, "repo": name, "creator": author, "state": "open", "per_page": "100"},
        ):
            if MARKER in str(issue.get("body") or "") and "pull_request" not in issue:
                return issue
        return None

    async def _tell(
        self, gh: GitHub, engine: PolicyEngine, run: Run, owner: str, name: str, body: str,
        seen: tuple[OpenIssue, ...] | None,
    ) -> None:
        issue = await self._find(gh, owner, name, seen)
        if issue is None and seen is not None:
            # What a batched read saw may be older than another delivery's issue: ask first.
            issue = await self._find(gh, owner, name, None)
        url_vars = {"owner": owner, "repo": name}
        audit = _Record(engine, run, f"{owner}/{name}")
        if issue is None:

            async def already_opened() -> Any:
                # A try whose answer was lost may have opened it.
                return await self._find(gh, owner, name, None)

            await audit.intend(None, "open")
            try:
                created = await gh.post(
                    "/repos/{owner}/{repo}/issues", url_vars=url_vars, data={"title": ISSUE_TITLE, "body": body},
                    already_done=already_opened,
                )
            except GitHubException as exc:
                await audit.failed(None, "open", exc)
                raise
            await audit.done(None, created.get("number"))
            log.info("notice_opened", repo=f"{owner}/{name}", issue=created.get("number"))
        elif issue.get("body") != body:
            number = issue["number"]
            await audit.intend(number, number)
            try:
                await gh.patch(
                    "/repos/{owner}/{repo}/issues/{issue_number}",
                    url_vars={**url_vars, "issue_number": str(number)}, data={"body": body},
                )
            except GitHubException as exc:
                await audit.failed(number, number, exc)
                raise
            await audit.done(number, number)
            log.info("notice_updated", repo=f"{owner}/{name}", issue=number)

    async def _close(
        self, gh: GitHub, engine: PolicyEngine, run: Run, owner: str, name: str, seen: tuple[OpenIssue, ...] | None
    ) -> None:
        issue = await self._find(gh, owner, name, seen)
        if issue is None:
            return
        number = issue["number"]
        url_vars = {"owner": owner, "repo": name, "issue_number": str(number)}
        audit = _Record(engine, run, f"{owner}/{name}")
        await audit.intend(number, None)
        try:
            await gh.post("/repos/{owner}/{repo}/issues/{issue_number}/comments", url_vars=url_vars,
                          data={"body": f"{MARKER}\n{CLOSING}"})
            await gh.patch("/repos/{owner}/{repo}/issues/{issue_number}", url_vars=url_vars,
                           data={"state": "closed", "state_reason": "completed"})
        except GitHubException as exc:
            await audit.failed(number, None, exc)
            raise
        await audit.done(number, None)
        log.info("notice_closed", repo=f"{owner}/{name}", issue=number)


class _Record:
    """The audit records of the issue: ``pending`` before GitHub is asked, then its outcome.
    Policy ``notify``, field ``issue``; before and after are the open issue's number (None:
    none is open; ``open``: one is being opened)."""

    def __init__(self, engine: PolicyEngine, run: Run, repo: str) -> None:
        self._engine, self._run, self._repo = engine, run, repo

    async def _write(self, before: Any, after: Any, outcome: Outcome, error: str | None = None) -> None:
        run, audit = self._run, self._engine.audit
        await audit.write([
            AuditEntry(
                time=audit.now(), run_id=run.run_id, trigger=run.trigger, installation=run.installation,
                repo=self._repo, actor=run.actor, policy=NOTICE_POLICY, field="issue",
                before=before, after=after, outcome=outcome, error=error,
            )
        ])

    async def intend(self, before: Any, after: Any) -> None:
        await self._write(before, after, Outcome.PENDING)

    async def done(self, before: Any, after: Any) -> None:
        await self._write(before, after, Outcome.APPLIED)

    async def failed(self, before: Any, after: Any, exc: GitHubException) -> None:
        await self._write(before, after, Outcome.FAILED, github_error(exc))
