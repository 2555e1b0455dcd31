"""The rules GitHub's rulesets put on a branch, besides classic branch protection.

A branch protected only by a repository or organization ruleset answers ``404 Branch not
protected`` on the classic endpoint, yet GitHub enforces the ruleset's rules on it. Moko
manages classic protection (both apply on GitHub, so the policy's classic protection is
still put on), and shows in ``/moko status`` which rules come from rulesets, read from
``GET /repos/{owner}/{repo}/rules/branches/{branch}`` (active rulesets only, at every level).
Sweeps do not need them to decide compliance, so the batched read does not ask for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gidgethub import BadRequest

from bot.github_protocol import GitHub
from policies.model import BRANCH_PROTECTION, BRANCH_PROTECTION_RULE, BranchRule, Plan


@dataclass(frozen=True)
class RulesetRule:
    """One rule a ruleset puts on a branch, and where the ruleset is defined."""

    type: str  # e.g. "pull_request", "deletion", "non_fast_forward"
    ruleset_id: int | None
    source_type: str  # "Repository" or "Organization"
    source: str  # the repository's full name or the organization's login


async def ruleset_rules(gh: GitHub, owner: str, repo: str, branch: str) -> tuple[RulesetRule, ...] | None:
    """The rules of the active rulesets that apply to the branch; None when GitHub does not
    let Moko read them."""
    url_vars = {"owner": owner, "repo": repo, "branch": branch}
    rules: list[RulesetRule] = []
    try:
        async for rule in gh.getiter("/repos/{owner}/{repo}/rules/branches/{branch}", url_vars=url_vars):
            rules.append(
                RulesetRule(
                    type=str(rule.get("type") or "?"),
                    ruleset_id=rule.get("ruleset_id"),
                    source_type=str(rule.get("ruleset_source_type") or ""),
                    source=str(rule.get("ruleset_source") or ""),
                )
            )
    except BadRequest as exc:
        if exc.status_code in (403, 404):
            return None
        raise
    return tuple(rules)


def classically_unprotected(plan: Plan, rules: Mapping[str, BranchRule]) -> list[str]:
    """The branches the policy names whose classic read said "not protected": those about to
    be protected, and those that must stay unprotected and are."""
    changing = {c.field for c in plan.changes + plan.deferred if c.policy == BRANCH_PROTECTION}
    waiting = set(plan.to_read(BRANCH_PROTECTION)) | set(plan.to_read(BRANCH_PROTECTION_RULE)) | {h.field for h in plan.held}
    found = [
        c.field for c in plan.changes if c.policy == BRANCH_PROTECTION and c.method == "PUT" and c.before is None
    ]
    found += [
        branch
        for branch, rule in rules.items()
        if rule.protection is None and branch not in changing and branch not in waiting
    ]
    return list(dict.fromkeys(found))
