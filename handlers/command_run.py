"""Running one parsed `/moko` command: authorization, the policy engine or the audit trail,
and the answer it gives (its Markdown and the outcome of the command's audit record)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from bot.audit import settled
from bot.github_protocol import GitHub
from bot.outcomes import Outcome
from bot.store.base import AuditTrail, ReconciliationTurns
from handlers import command_text as text
from handlers.command_access import (
    AUDIT_PERMISSION,
    PLAN_PERMISSION,
    STATUS_DETAIL_PERMISSION,
    Access,
    at_least,
    commenter_access,
)
from handlers.command_markdown import escape, holds_secret, plain
from handlers.command_parsing import Command, InvalidCommand
from handlers.command_report import (
    default_branch_of,
    policy_problems,
    render_apply,
    render_audit,
    render_plan,
    render_problems,
    render_status,
    render_status_summary,
    render_stretched_interval,
)
from handlers.policy_preview import is_policy_repository, policy_change, run_preview
from policies.apply import Run
from policies.branch_protection import resolve_branch_rules
from policies.branch_rules import RulesetRule, classically_unprotected, ruleset_rules
from policies.engine import SWEEP, PolicyEngine, RepoResult
from policies.loader import PolicyError
from policies.model import Plan, Policy


class CommandStore(AuditTrail, ReconciliationTurns, Protocol):
    """What the commands read of the store: the audit trail (/moko audit) and the
    reconciliation turns (/moko status says when the budget stretched them)."""


@dataclass(frozen=True)
class Request:
    """One command to run, and what running it needs."""

    gh: GitHub
    engine: PolicyEngine
    store: CommandStore
    run: Run
    repo: Mapping[str, Any]  # the payload's repository: it holds the settings
    user: str
    command: Command | InvalidCommand
    sweep_interval: float = 0.0  # MOKO_SWEEP_INTERVAL: /moko status says when the budget stretched it
    pull_number: int | None = None  # the pull request the comment is on, if it is on one

    @property
    def full_name(self) -> str:
        return str(self.repo["full_name"])

    @property
    def owner_and_name(self) -> tuple[str, str]:
        owner, name = self.full_name.split("/", 1)
        return owner, name


@dataclass(frozen=True)
class Answer:
    """What Moko answers, and the outcome of the command's own audit record.

    ``outcome``: ``applied`` (the command was carried out), ``dry-run`` (an apply that only
    recorded), ``failed`` or ``denied``. ``broken``: the work itself failed (GitHub, the
    engine, an invalid policy file), so the delivery ends failed once answered.
    """

    body: str
    outcome: Outcome
    error: str | None = None
    broken: bool = False

    @property
    def done(self) -> bool:
        return self.outcome in (Outcome.APPLIED, Outcome.DRY_RUN)


def failed(error: str) -> Answer:
    return Answer(text.FAILED.format(error=escape(error, 500)), Outcome.FAILED, plain(error, 500), broken=True)


def invalid_policy(problems: list[str]) -> Answer:
    body = text.INVALID_POLICY.format(problems=render_problems(problems))
    return Answer(body, Outcome.FAILED, plain("; ".join(problems), 1000), broken=True)


def denied(command: str, needed: str, access: Access) -> Answer:
    name = access.role_name if access.custom else access.role
    body = text.DENIED.format(command=command, needed=escape(needed), role=escape(name))
    error = f"/moko {command} needs {needed} or higher; {plain(name, 40)} has not"
    if access.custom:
        template = text.CUSTOM_ROLE_FALLBACK if access.fallback else text.CUSTOM_ROLE
        body += " " + template.format(name=escape(name), role=escape(access.role))
        how = "its legacy permission, the organization's custom roles unreadable" if access.fallback else "its base role"
        error += f" ({how}: {access.role})"
    if command == "apply":
        body += " " + text.NOTHING_CHANGED
    return Answer(body, Outcome.DENIED, error)


def with_dry_run_note(answer: Answer, dry_run: bool) -> Answer:
    if not dry_run:
        return answer
    return Answer(f"{answer.body}\n\n{text.DRY_RUN_NOTE}", answer.outcome, answer.error, answer.broken)


def _unplanned(result: RepoResult) -> Answer | None:
    """The answer when the engine made no plan: an invalid policy, a failed read, or a
    repository out of the policy's scope."""
    if result.outcome == Outcome.FAILED and result.plan is None:
        if result.policy is None:  # the engine could not use the policy file
            return invalid_policy(policy_problems(result.error or ""))
        return failed(result.error or "")
    if result.outcome == Outcome.SKIPPED:
        reason = result.plan.skipped if result.plan else None
        body = text.SKIPPED.format(repo=escape(result.repo), reason=escape(reason or "out of scope"))
        return Answer(body, Outcome.APPLIED)
    return None


async def answer_help(request: Request) -> Answer:
    """Help, preceded by what was wrong when the command could not be run."""
    command = request.command
    if not isinstance(command, InvalidCommand):
        return with_dry_run_note(Answer(text.HELP, Outcome.APPLIED), request.engine.global_dry_run)
    secret = holds_secret(command.given)
    template = (text.PROBLEMS_UNSHOWN if secret else text.PROBLEMS)[command.problem]
    shown = template.format(given=escape(command.given, 80), command=escape(command.name))
    body = text.PROBLEM.format(problem=shown) + "\n\n" + text.HELP
    error = template.format(given=plain(command.given, 80), command=command.name)
    return Answer(body, Outcome.FAILED, error)


async def answer_status(request: Request) -> Answer:
    """Compliance for anyone who can comment; which fields differ only for triage and up (on
    a public repository anyone can comment, and the table shows what admins alone can read)."""
    access = await commenter_access(request.gh, *request.owner_and_name, request.user)
    # Stale branches too: sweeps delete them, and the answer says what the next one will.
    result = await request.engine.remediate(request.gh, request.run, request.repo, apply=False, scope=SWEEP)
    unplanned = _unplanned(result)
    if unplanned is not None or result.plan is None or result.policy is None:
        return with_dry_run_note(unplanned or failed("no plan"), result.dry_run)
    if not at_least(access.role, STATUS_DETAIL_PERMISSION):
        body = render_status_summary(result.repo, result.plan)
    else:
        default_branch = default_branch_of(request.repo)
        rulesets = await _ruleset_rules(request, result.plan, result.policy, default_branch)
        body = render_status(result.repo, result.policy, result.plan, default_branch, rulesets)
    # How often the repository is checked is no secret: everyone hears when it was stretched.
    stretched = await _stretched_interval(request)
    if stretched is not None:
        body += "\n\n" + render_stretched_interval(stretched, request.sweep_interval)
    return with_dry_run_note(Answer(body, Outcome.APPLIED), result.dry_run)


async def _ruleset_rules(
    request: Request, plan: Plan, policy: Policy, default_branch: str | None
) -> dict[str, tuple[RulesetRule, ...] | None]:
    """The ruleset rules on each branch the policy names whose classic read said unprotected
    (a branch protected only by rulesets reads so): one request per such branch."""
    branches = classically_unprotected(plan, resolve_branch_rules(policy, default_branch))
    return {branch: await ruleset_rules(request.gh, *request.owner_and_name, branch) for branch in branches}


async def _stretched_interval(request: Request) -> float | None:
    """The interval the installation's budget allowed, when longer than MOKO_SWEEP_INTERVAL."""
    installation = request.run.installation
    if request.sweep_interval <= 0 or installation is None:
        return None
    for turn in await request.store.reconcile_turns():
        if turn.installation_id == installation and turn.interval and turn.interval > request.sweep_interval:
            return turn.interval
    return None


async def answer_plan(request: Request) -> Answer:
    """What apply would change, for triage or higher (it names protection details)."""
    access = await commenter_access(request.gh, *request.owner_and_name, request.user)
    if not at_least(access.role, PLAN_PERMISSION):
        return denied("plan", PLAN_PERMISSION, access)
    if request.pull_number is not None and is_policy_repository(request.repo):
        rerun = await _rerun_preview(request, request.pull_number)
        if rerun is not None:
            return rerun
    # Stale branches too: sweeps delete them, and the answer says what the next one will.
    result = await request.engine.remediate(request.gh, request.run, request.repo, apply=False, scope=SWEEP)
    unplanned = _unplanned(result)
    if unplanned is not None or result.plan is None or result.policy is None:
        return with_dry_run_note(unplanned or failed("no plan"), result.dry_run)
    body = render_plan(result.repo, result.policy, result.plan, default_branch_of(request.repo))
    return with_dry_run_note(Answer(body, Outcome.APPLIED), result.dry_run)


async def _rerun_preview(request: Request, number: int) -> Answer | None:
    """On an open pull request of the `.github` repository that changes the policy file: its
    preview again, on its current head (None: no such pull request, plan as usual)."""
    owner, name = request.owner_and_name
    pull = await request.gh.getitem(
        "/repos/{owner}/{repo}/pulls/{pull_number}", url_vars={"owner": owner, "repo": name, "pull_number": str(number)}
    )
    if pull.get("state") != "open":
        return None
    change = await policy_change(request.gh, owner, name, number)
    if change is None:
        return None
    head_sha = str(pull["head"]["sha"])
    run = await run_preview(request.gh, request.engine, request.run.installation, owner, name, head_sha, change)
    body = text.PREVIEW_RERUN.format(sha=escape(head_sha[:7]), conclusion=escape(run.conclusion), title=escape(run.title))
    return Answer(body, Outcome.APPLIED)


async def answer_apply(request: Request) -> Answer:
    """Remediate now, if the commenter's role reaches the policy's apply_permission."""
    try:
        policy = await request.engine.policy_for(request.gh, request.run, request.full_name)
    except PolicyError as exc:
        return invalid_policy(policy_problems(exc))
    access = await commenter_access(request.gh, *request.owner_and_name, request.user)
    if not at_least(access.role, policy.apply_permission):
        return denied("apply", policy.apply_permission, access)
    result = await request.engine.remediate(request.gh, request.run, request.repo)
    unplanned = _unplanned(result)
    if unplanned is not None:
        return with_dry_run_note(unplanned, result.dry_run)
    held = result.plan.held if result.plan is not None else ()
    body = render_apply(
        result.repo, result.policy, result.changes, default_branch_of(request.repo), result.dry_run, held,
        result.plan.unknown if result.plan else (),
    )
    if result.outcome == Outcome.FAILED:
        error = result.error or "a change failed"
        return Answer(body, Outcome.FAILED, plain(error, 500), broken=True)
    return with_dry_run_note(Answer(body, Outcome.DRY_RUN if result.dry_run else Outcome.APPLIED), result.dry_run)


async def answer_audit(request: Request) -> Answer:
    """The repository's last records, for triage or higher (the trail names people and values)."""
    access = await commenter_access(request.gh, *request.owner_and_name, request.user)
    if not at_least(access.role, AUDIT_PERMISSION):
        return denied("audit", AUDIT_PERMISSION, access)
    command = request.command
    limit = command.count if isinstance(command, Command) else None
    # A change's pending record is shown only while no outcome follows it: twice N records
    # hold at least N once the settled pending ones are left out.
    fetched = await request.store.audit_records(
        repo=request.full_name, newest_first=True, limit=None if limit is None else 2 * limit
    )
    records = settled(fetched)[:limit]
    answer = Answer(render_audit(request.full_name, records), Outcome.APPLIED)
    return with_dry_run_note(answer, request.engine.global_dry_run)


ANSWERS: dict[str, Callable[[Request], Awaitable[Answer]]] = {
    "help": answer_help,
    "status": answer_status,
    "plan": answer_plan,
    "apply": answer_apply,
    "audit": answer_audit,
}


async def run_command(request: Request) -> Answer:
    if isinstance(request.command, InvalidCommand):
        return await answer_help(request)
    return await ANSWERS[request.command.name](request)
