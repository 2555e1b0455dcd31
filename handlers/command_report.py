"""The answers to `status`, `plan`, `apply` and `audit` as Markdown: pure, from the engine's
results and the audit trail. Every value not written by Moko is escaped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bot.store.base import AuditRecord
from handlers import command_text as text
from handlers.command_markdown import (
    COMMENT_BUDGET,
    escape,
    escape_settings,
    render_words,
    show,
    table,
)
from policies.apply import ChangeOutcome
from policies.branch_rules import RulesetRule
from policies.model import Change, Held, Plan, Policy
from policies.registry import KINDS_BY_NAME, POLICY_KINDS
from policies.words import ReportContext

STATUS_CELL_LIMIT = 200
AUDIT_VALUE_LIMIT = 160
RULESETS_BUDGET = 8_000  # of the comment, for the table of ruleset rules


def describe_change(change: Change, policy: Policy | None, default_branch: str | None) -> str:
    """One change as a line of text (escaped), as its kind describes it."""
    describe = KINDS_BY_NAME[change.policy].describe
    if describe is None:
        return escape(f"{change.policy} {change.field}")
    return render_words(describe(change, policy, default_branch))


def status_rows(
    policy: Policy, plan: Plan, default_branch: str | None, ruleset_branches: frozenset[str] = frozenset()
) -> list[tuple[str, ...]]:
    """policy, field, wanted, actual, compliant: each kind's rows, one per field, branch or
    entry the policy names. ``ruleset_branches``: branches without classic protection that
    rulesets protect."""
    context = ReportContext(default_branch, ruleset_branches)
    verdicts = {True: text.YES, False: text.NO, None: text.UNKNOWN}
    return [
        (escape(kind.name), render_words(row.name), render_words(row.wanted), render_words(row.actual),
         verdicts[row.compliant])
        for kind in POLICY_KINDS if kind.status is not None
        for row in kind.status(policy, plan, context)
    ]


def ruleset_rows(rulesets: Mapping[str, Sequence[RulesetRule] | None]) -> list[tuple[str, ...]]:
    """branch, rule, ruleset, where it is defined: one row per rule."""
    return [
        (
            escape(branch),
            escape(rule.type),
            escape(text.RULESET_ID.format(id=rule.ruleset_id)),
            escape(f"{rule.source_type.lower()} {rule.source}".strip()),
        )
        for branch, rules in rulesets.items()
        for rule in rules or ()
    ]


def render_status(
    repo: str,
    policy: Policy,
    plan: Plan,
    default_branch: str | None,
    rulesets: Mapping[str, Sequence[RulesetRule] | None] | None = None,
) -> str:
    """The status table; with ``rulesets`` (branch -> its ruleset rules, None when they could
    not be read), the rules rulesets put on branches without classic protection."""
    rulesets = rulesets or {}
    covered = frozenset(branch for branch, rules in rulesets.items() if rules)
    rows = status_rows(policy, plan, default_branch, covered)
    drifted = sum(1 for row in rows if row[-1] == text.NO)
    unknown = sum(1 for row in rows if row[-1] == text.UNKNOWN)
    verdicts = []
    if unknown:
        verdicts.append(text.STATUS_UNKNOWN.format(count=unknown, total=len(rows)))
    if drifted:
        verdicts.append(text.STATUS_DRIFT.format(count=drifted, total=len(rows)))
    verdict = "\n\n".join(verdicts) or text.STATUS_COMPLIANT
    title = text.STATUS_TITLE.format(repo=escape(repo))
    extra = ruleset_rows(rulesets)
    budget = COMMENT_BUDGET - (RULESETS_BUDGET if extra else 0)
    body = f"{title}\n\n{verdict}\n\n{table(text.STATUS_HEADERS, rows, budget=budget)}"
    if extra:
        rules_table = table(text.RULESETS_HEADERS, extra, budget=RULESETS_BUDGET)
        body += f"\n\n{text.RULESETS_TITLE}\n\n{rules_table}"
    unreadable = [branch for branch, rules in rulesets.items() if rules is None]
    if unreadable:
        body += "\n\n" + text.RULESETS_UNREADABLE.format(branches=", ".join(escape(b) for b in unreadable))
    return body


def duration_text(seconds: float) -> str:
    """A duration as people say it: 45 s, 12 min, 4 h 10 min."""
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def render_stretched_interval(interval: float, configured: float) -> str:
    return text.STATUS_STRETCHED.format(interval=duration_text(interval), configured=duration_text(configured))


def render_status_summary(repo: str, plan: Plan) -> str:
    """Status for those below the role that sees details: compliant or not, nothing more."""
    if plan.compliant:
        verdict = text.STATUS_COMPLIANT
    elif plan.unknown and not (plan.changes or plan.deferred or plan.held):
        verdict = text.STATUS_UNKNOWN_SUMMARY
    else:
        verdict = text.STATUS_NOT_COMPLIANT
    return f"{text.STATUS_TITLE.format(repo=escape(repo))}\n\n{verdict}"


def _bullets(lines: Sequence[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def unknown_lines(unknown: Sequence[tuple[str, str]]) -> list[str]:
    """One line per value Moko could not read, and why."""
    return [text.CHANGE_UNKNOWN.format(key=escape(key), why=escape(why, 300)) for key, why in unknown]


def render_plan(repo: str, policy: Policy, plan: Plan, default_branch: str | None) -> str:
    lines = [describe_change(change, policy, default_branch) for change in plan.changes]
    lines += [
        text.CHANGE_DEFERRED.format(
            branch=escape(change.target or text.NO_DEFAULT_BRANCH),
            after=escape_settings(change.after, STATUS_CELL_LIMIT),
        )
        for change in plan.deferred
    ]
    lines += held_lines(plan.held)
    lines += unknown_lines(plan.unknown)
    title = text.PLAN_TITLE.format(repo=escape(repo))
    return f"{title}\n\n{_bullets(lines) if lines else text.PLAN_NOTHING}"


def outcome_text(outcome: ChangeOutcome) -> str:
    template = text.OUTCOMES.get(outcome.outcome, "{outcome}")
    return template.format(outcome=escape(outcome.outcome), error=escape(outcome.error or "", 300))


def held_lines(held: Sequence[Held]) -> list[str]:
    return [text.CHANGE_HELD.format(branch=escape(h.field), reason=escape(h.reason, 300)) for h in held]


def render_apply(
    repo: str,
    policy: Policy | None,
    outcomes: Sequence[ChangeOutcome],
    default_branch: str | None,
    dry_run: bool,
    held: Sequence[Held] = (),
    unknown: Sequence[tuple[str, str]] = (),
) -> str:
    title = text.APPLY_TITLE.format(repo=escape(repo))
    if not outcomes and not held and not unknown:
        return f"{title}\n\n{text.APPLY_NOTHING}"
    lines = [
        f"{describe_change(o.change, policy, default_branch)} — **{outcome_text(o)}**" for o in outcomes
    ] + held_lines(held) + unknown_lines(unknown)
    body = f"{title}\n\n{_bullets(lines)}"
    return f"{body}\n\n{text.APPLY_DRY_RUN}" if dry_run else body


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return escape(value if isinstance(value, str) else show(value), AUDIT_VALUE_LIMIT)


def audit_row(record: AuditRecord) -> tuple[str, ...]:
    return (
        escape(record.time.strftime("%Y-%m-%d %H:%M:%SZ")),
        escape(record.actor),
        escape(record.trigger),
        escape(record.policy),
        escape(record.field),
        _cell(record.before),
        _cell(record.after),
        escape(record.outcome),
        escape(record.error or "", AUDIT_VALUE_LIMIT),
    )


def render_audit(repo: str, records: Sequence[AuditRecord]) -> str:
    if not records:
        return text.AUDIT_NOTHING.format(repo=escape(repo))
    title = text.AUDIT_TITLE.format(count=len(records), repo=escape(repo))
    return f"{title}\n\n{table(text.AUDIT_HEADERS, [audit_row(r) for r in records])}"


def render_problems(lines: Sequence[str]) -> str:
    """Error lines (e.g. a policy file's ``FILE:LINE: message``), escaped, as a list."""
    return _bullets([escape(line, 300) for line in lines])


def policy_problems(error: Any) -> list[str]:
    problems = getattr(error, "problems", None)
    if problems:
        return [str(problem) for problem in problems]
    return [line for line in str(error).splitlines() if line.strip()] or [str(error)]


def default_branch_of(repo: Mapping[str, Any]) -> str | None:
    branch = repo.get("default_branch")
    return str(branch) if branch else None
