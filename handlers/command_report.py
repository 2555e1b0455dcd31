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
    escape_value,
    show,
    table,
)
from policies.apply import ChangeOutcome
from policies.branch_protection import diff_protection, normalize_written, resolve_branch_rules
from policies.branch_rules import RulesetRule
from policies.defaults import DEFAULT_BRANCH_RULE
from policies.model import BRANCH_PROTECTION, REPOSITORY, Change, Held, Plan, Policy
from policies.registry import KINDS_BY_NAME, POLICY_KINDS
from policies.server_fields import PROTECTION_KEYS

STATUS_CELL_LIMIT = 200
AUDIT_VALUE_LIMIT = 160
RULESETS_BUDGET = 8_000  # of the comment, for the table of ruleset rules


def _drift_keys(change: Change, policy: Policy | None, default_branch: str | None) -> str:
    """Which keys of a protected branch differ from its rule, e.g. ``enforce_admins``."""
    rule = resolve_branch_rules(policy, default_branch).get(change.field) if policy else None
    if rule is None or rule.protection is None:
        return escape_settings(change.after, STATUS_CELL_LIMIT)
    drift = diff_protection(normalize_written(change.before), rule.protection).drift
    return escape(", ".join(drift) or "protection", STATUS_CELL_LIMIT)


def describe_change(change: Change, policy: Policy | None, default_branch: str | None) -> str:
    """One change as a line of text (escaped)."""
    kind = KINDS_BY_NAME.get(change.policy)
    if kind is not None and kind.describe is not None:
        what, detail = kind.describe(change)
        return escape(what) + ("" if detail is None else ": " + escape(detail, STATUS_CELL_LIMIT))
    if change.policy == REPOSITORY:
        return text.CHANGE_SETTING.format(
            field=escape(change.field), before=escape_value(change.before), after=escape_value(change.after)
        )
    branch = escape(change.target or change.field)
    if change.target is None and change.field == DEFAULT_BRANCH_RULE:
        branch = escape(text.NO_DEFAULT_BRANCH)
    if change.method == "DELETE":
        return text.CHANGE_UNPROTECT.format(branch=branch)
    if change.before is None:
        return text.CHANGE_PROTECT.format(branch=branch, after=escape_settings(change.after, STATUS_CELL_LIMIT))
    keys = text.DIFFERS_IN.format(keys=_drift_keys(change, policy, default_branch))
    return text.CHANGE_REPROTECT.format(branch=branch, keys=keys)


def _by_field(changes: Sequence[Change], policy: str) -> dict[str, Change]:
    return {change.field: change for change in changes if change.policy == policy}


def status_rows(
    policy: Policy, plan: Plan, default_branch: str | None, ruleset_branches: frozenset[str] = frozenset()
) -> list[tuple[str, ...]]:
    """policy, field, wanted, actual, compliant: one row per field and branch the policy names.
    ``ruleset_branches``: branches without classic protection that rulesets protect."""
    rows: list[tuple[str, ...]] = []
    settings = _by_field(plan.changes, REPOSITORY)
    unread = set(plan.settings_to_read)
    unknown = plan.unknown_of(REPOSITORY)
    for field, wanted in policy.repository.items():
        if field in settings:
            actual, compliant = escape_value(settings[field].before), text.NO
        elif field in unknown:
            actual, compliant = _unknown_cell(unknown[field]), text.UNKNOWN
        elif field in unread:
            actual, compliant = text.UNKNOWN, text.UNKNOWN
        else:
            # Compliant means equal as the engine compares (e.g. "" and null descriptions).
            actual, compliant = escape_value(wanted), text.YES
        rows.append((escape(REPOSITORY), escape(field), escape_value(wanted), actual, compliant))
    protections = _by_field(plan.changes, BRANCH_PROTECTION)
    deferred = _by_field(plan.deferred, BRANCH_PROTECTION)
    held = {h.field: h for h in plan.held if h.policy == BRANCH_PROTECTION}
    unread = set(plan.branches_to_read) | set(plan.rules_to_read)
    unknown = plan.unknown_of(BRANCH_PROTECTION)
    rules = resolve_branch_rules(policy, default_branch)
    if default_branch is None and any(rule.name == DEFAULT_BRANCH_RULE for rule in policy.branches):
        rule = next(rule for rule in policy.branches if rule.name == DEFAULT_BRANCH_RULE)
        rules = {DEFAULT_BRANCH_RULE: rule, **rules}
    for branch, rule in rules.items():
        if branch == DEFAULT_BRANCH_RULE and default_branch is None:
            label = text.NO_DEFAULT_BRANCH
        elif branch == default_branch:
            label = text.DEFAULT_BRANCH.format(branch=branch)
        else:
            label = branch
        if rule.protection is None:
            wanted = text.NOT_PROTECTED
        else:
            wanted = text.PROTECTED + ": " + escape_settings(rule.protection, STATUS_CELL_LIMIT)
        if branch in deferred:
            actual, compliant = text.BRANCH_MISSING, text.NO
        elif branch in unknown:
            actual, compliant = _unknown_cell(unknown[branch]), text.UNKNOWN
        elif branch in held:
            actual, compliant = escape(held[branch].reason, STATUS_CELL_LIMIT), text.NO
        elif branch in unread or (branch == DEFAULT_BRANCH_RULE and default_branch is None):
            actual, compliant = text.UNKNOWN, text.UNKNOWN
        elif branch in protections:
            change = protections[branch]
            if change.before is None:
                actual = text.NOT_PROTECTED
            elif change.method == "DELETE":
                actual = text.PROTECTED
            else:
                actual = text.DIFFERS_IN.format(keys=_drift_keys(change, policy, default_branch))
            compliant = text.NO
        elif lacking := _rule_keys_unknown(unknown, rule.name):
            # As wanted in all the server can do; the keys it lacks cannot be told.
            actual, compliant = _unknown_cell("; ".join(lacking)), text.UNKNOWN
        else:
            actual, compliant = text.AS_WANTED, text.YES
        if branch in ruleset_branches:
            actual = text.RULESETS_APPLY.format(actual=actual)
        rows.append((escape(BRANCH_PROTECTION), escape(label), wanted, actual, compliant))
    for kind in POLICY_KINDS:
        if kind.status is not None:
            for name, wanted, actual, ok in kind.status(policy, plan):
                verdict = text.UNKNOWN if ok is None else (text.YES if ok else text.NO)
                rows.append((escape(kind.name), escape(name), escape(wanted), escape(actual, STATUS_CELL_LIMIT), verdict))
    return rows


def _rule_keys_unknown(unknown: Mapping[str, str], rule_name: str) -> list[str]:
    """Why keys of one rule's protection body are unknown (``<rule>.<key>``: keys a server
    lacks), one reason a key."""
    prefix = f"{rule_name}."
    return [why for key, why in unknown.items() if key.startswith(prefix) and key[len(prefix):] in PROTECTION_KEYS]


def _unknown_cell(why: str) -> str:
    return text.UNKNOWN_BECAUSE.format(why=escape(why, STATUS_CELL_LIMIT))


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
