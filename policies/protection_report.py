"""How the branch protection kind reports: a change as a line (`/moko plan`, `/moko apply`, the
policy preview, the notice) and a branch's row of `/moko status`."""

from __future__ import annotations

from collections.abc import Mapping

from policies.branch_protection import diff_protection, normalize_written, resolve_branch_rules
from policies.defaults import DEFAULT_BRANCH_RULE
from policies.model import BRANCH_PROTECTION, BRANCH_PROTECTION_RULE, Change, Plan, Policy
from policies.server_fields import PROTECTION_KEYS
from policies.words import (
    LONG,
    UNKNOWN,
    ReportContext,
    Shown,
    StatusRow,
    Words,
    settings_text,
    unknown_because,
)

NO_DEFAULT_BRANCH = "default branch (none yet)"
DEFAULT_BRANCH = "{branch} (default branch)"
NOT_PROTECTED = "not protected"
PROTECTED = "protected"
AS_WANTED = "as wanted"
BRANCH_MISSING = "branch does not exist yet"
RULESETS_APPLY = "; rulesets apply (below)"


def _drift_keys(change: Change, policy: Policy | None, default_branch: str | None) -> Shown:
    """Which keys of a protected branch differ from its rule, e.g. ``enforce_admins``."""
    rule = resolve_branch_rules(policy, default_branch).get(change.field) if policy else None
    if rule is None or rule.protection is None:
        return Shown(settings_text(change.after), LONG)
    drift = diff_protection(normalize_written(change.before), rule.protection).drift
    return Shown(", ".join(drift) or "protection", LONG)


def describe_protection(change: Change, policy: Policy | None, default_branch: str | None) -> Words:
    """Protect, update the protection of, or remove the protection of a branch."""
    branch = Shown(change.target or change.field)
    if change.target is None and change.field == DEFAULT_BRANCH_RULE:
        branch = Shown(NO_DEFAULT_BRANCH)
    if change.method == "DELETE":
        return ("remove the protection of branch ", branch)
    if change.before is None:
        return ("protect branch ", branch, ": ", Shown(settings_text(change.after), LONG))
    return ("update the protection of branch ", branch, ": differs in ", _drift_keys(change, policy, default_branch))


def _rule_keys_unknown(unknown: Mapping[str, str], rule_name: str) -> list[str]:
    """Why keys of one rule's protection body are unknown (``<rule>.<key>``: keys a server
    lacks), one reason a key."""
    prefix = f"{rule_name}."
    return [why for key, why in unknown.items() if key.startswith(prefix) and key[len(prefix):] in PROTECTION_KEYS]


def protection_status(policy: Policy, plan: Plan, context: ReportContext) -> list[StatusRow]:
    """One row per branch the policy's rules name, the default branch first."""
    default_branch = context.default_branch
    protections = {c.field: c for c in plan.changes if c.policy == BRANCH_PROTECTION}
    deferred = {c.field: c for c in plan.deferred if c.policy == BRANCH_PROTECTION}
    held = {h.field: h for h in plan.held if h.policy == BRANCH_PROTECTION}
    unread = set(plan.to_read(BRANCH_PROTECTION)) | set(plan.to_read(BRANCH_PROTECTION_RULE))
    unknown = plan.unknown_of(BRANCH_PROTECTION)
    rules = resolve_branch_rules(policy, default_branch)
    if default_branch is None and any(rule.name == DEFAULT_BRANCH_RULE for rule in policy.branches):
        rule = next(rule for rule in policy.branches if rule.name == DEFAULT_BRANCH_RULE)
        rules = {DEFAULT_BRANCH_RULE: rule, **rules}
    rows = []
    for branch, rule in rules.items():
        if branch == DEFAULT_BRANCH_RULE and default_branch is None:
            label = NO_DEFAULT_BRANCH
        elif branch == default_branch:
            label = DEFAULT_BRANCH.format(branch=branch)
        else:
            label = branch
        wanted: Words = (
            (NOT_PROTECTED,) if rule.protection is None
            else (PROTECTED + ": ", Shown(settings_text(rule.protection), LONG))
        )
        actual: Words
        if branch in deferred:
            actual, compliant = (BRANCH_MISSING,), False
        elif branch in unknown:
            actual, compliant = unknown_because(unknown[branch]), None
        elif branch in held:
            actual, compliant = (Shown(held[branch].reason, LONG),), False
        elif branch in unread or (branch == DEFAULT_BRANCH_RULE and default_branch is None):
            actual, compliant = (UNKNOWN,), None
        elif branch in protections:
            change = protections[branch]
            if change.before is None:
                actual = (NOT_PROTECTED,)
            elif change.method == "DELETE":
                actual = (PROTECTED,)
            else:
                actual = ("differs in ", _drift_keys(change, policy, default_branch))
            compliant = False
        elif lacking := _rule_keys_unknown(unknown, rule.name):
            # As wanted in all the server can do; the keys it lacks cannot be told.
            actual, compliant = unknown_because("; ".join(lacking)), None
        else:
            actual, compliant = (AS_WANTED,), True
        if branch in context.ruleset_branches:
            actual = (*actual, RULESETS_APPLY)
        rows.append(StatusRow((Shown(label),), wanted, actual, compliant))
    return rows
