"""What the GitHub server can do, as its GraphQL schema tells: which policy fields it has.

GitHub Enterprise Server lags github.com: an older server has neither the newer GraphQL
fields nor the REST fields they stand for (``lock_branch`` in a protection body,
``allow_update_branch`` in a repository's settings). Moko learns the server's fields once
per process (``bot.github_schema``), queries only those, writes only those, and a policy
that names a field the server lacks is ``unknown`` with that reason, never compliant.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from bot.github_protocol import GitHub
from bot.github_schema import ServerSchema, known_schema, server_schema
from policies.model import BRANCH_PROTECTION, REPOSITORY, BranchRule, Change, Plan, Policy, thaw
from policies.repository_settings import GRAPHQL_FIELDS

REPOSITORY_TYPE = "Repository"
RULE_TYPE = "BranchProtectionRule"
REF_TYPE = "Ref"  # a branch (stale branches): whether the server has its rulesets' rules
# The GraphQL types whose fields the batched reads name.
QUERIED_TYPES: tuple[str, ...] = (REPOSITORY_TYPE, RULE_TYPE, REF_TYPE)

# Branch protection keys (the PUT body's) -> the BranchProtectionRule field that tells
# whether the server has them.
PROTECTION_FIELDS: Mapping[str, str] = {
    "required_linear_history": "requiresLinearHistory",
    "allow_force_pushes": "allowsForcePushes",
    "allow_deletions": "allowsDeletions",
    "block_creations": "blocksCreations",
    "required_conversation_resolution": "requiresConversationResolution",
    "lock_branch": "lockBranch",
    "allow_fork_syncing": "lockAllowsFetchAndMerge",
}
REVIEW_FIELDS: Mapping[str, str] = {
    "dismiss_stale_reviews": "dismissesStaleReviews",
    "require_code_owner_reviews": "requiresCodeOwnerReviews",
    "require_last_push_approval": "requireLastPushApproval",
}
# Every key (``required_pull_request_reviews.<key>`` for a review's) a server may lack.
PROTECTION_KEYS = frozenset(PROTECTION_FIELDS) | {f"required_pull_request_reviews.{k}" for k in REVIEW_FIELDS}

# The fields newer than the oldest GitHub Enterprise Server Moko meets. A policy naming one
# of them makes Moko ask the server's schema even where nothing else would (a webhook's
# REST-only work); the older fields every server has cost no question.
NEWER_REPOSITORY_FIELDS = frozenset({
    "allow_update_branch", "allow_auto_merge", "allow_forking", "web_commit_signoff_required",
    "use_squash_pr_title_as_default", "squash_merge_commit_title", "squash_merge_commit_message",
    "merge_commit_title", "merge_commit_message", "has_discussions",
})
NEWER_PROTECTION_FIELDS = frozenset({
    "block_creations", "required_conversation_resolution", "lock_branch", "allow_fork_syncing",
})
NEWER_REVIEW_FIELDS = frozenset({"require_last_push_approval"})


def repository_graphql_field(setting: str) -> str | None:
    """The Repository field that reads a REST setting (None when GraphQL has none)."""
    selection = GRAPHQL_FIELDS.get(setting)
    return None if selection is None else selection.split(" ", 1)[0]


def asks_newer_fields(policy: Policy) -> bool:
    """Whether the policy names a field some servers lack (so the schema must be asked)."""
    if NEWER_REPOSITORY_FIELDS & set(policy.repository):
        return True
    for rule in policy.branches:
        body = rule.protection or {}
        reviews = body.get("required_pull_request_reviews")
        if NEWER_PROTECTION_FIELDS & set(body) or (
            isinstance(reviews, Mapping) and NEWER_REVIEW_FIELDS & set(reviews)
        ):
            return True
    return False


def _lacking(type_name: str, field: str) -> str:
    return (
        f"this GitHub server has no {field} (its GraphQL {type_name} lacks it: "
        "an older GitHub Enterprise Server)"
    )


def unsupported(policy: Policy, schema: ServerSchema) -> dict[str, str]:
    """The policy's keys the server cannot do, with why: ``repository.<field>`` and
    ``branch_protection.<rule>.<key>`` (``…required_pull_request_reviews.<key>``)."""
    found: dict[str, str] = {}
    for setting in policy.repository:
        graphql = repository_graphql_field(setting)
        if graphql is not None and not schema.has(REPOSITORY_TYPE, graphql):
            found[f"{REPOSITORY}.{setting}"] = _lacking(REPOSITORY_TYPE, setting)
    for rule in policy.branches:
        for key in _protection_keys_lacking(rule.protection or {}, schema):
            found[f"{BRANCH_PROTECTION}.{rule.name}.{key}"] = _lacking(RULE_TYPE, key.rsplit(".", 1)[-1])
    return found


def _protection_keys_lacking(body: Mapping[str, Any], schema: ServerSchema) -> list[str]:
    keys = [k for k in body if k in PROTECTION_FIELDS and not schema.has(RULE_TYPE, PROTECTION_FIELDS[k])]
    reviews = body.get("required_pull_request_reviews")
    if isinstance(reviews, Mapping):
        keys += [
            f"required_pull_request_reviews.{k}"
            for k in reviews
            if k in REVIEW_FIELDS and not schema.has(RULE_TYPE, REVIEW_FIELDS[k])
        ]
    return keys


def without_unsupported(policy: Policy, schema: ServerSchema) -> Policy:
    """The policy less what the server cannot do (that part is reported, not planned)."""
    repository = {
        k: v
        for k, v in policy.repository.items()
        if (graphql := repository_graphql_field(k)) is None or schema.has(REPOSITORY_TYPE, graphql)
    }
    rules = tuple(
        BranchRule(rule.name, None if rule.protection is None else supported_body(rule.protection, schema))
        for rule in policy.branches
    )
    return replace(policy, repository=repository, branches=rules)


def supported_body(body: Mapping[str, Any], schema: ServerSchema) -> dict[str, Any]:
    """A protection PUT body less the keys the server does not have."""
    out = {k: thaw(v) for k, v in body.items() if k not in PROTECTION_FIELDS or schema.has(RULE_TYPE, PROTECTION_FIELDS[k])}
    reviews = out.get("required_pull_request_reviews")
    if isinstance(reviews, Mapping):
        out["required_pull_request_reviews"] = {
            k: v for k, v in reviews.items() if k not in REVIEW_FIELDS or schema.has(RULE_TYPE, REVIEW_FIELDS[k])
        }
    return out


def rule_selection(lines: Iterable[str], schema: ServerSchema | None) -> str:
    """A BranchProtectionRule selection less the fields the server lacks (one field a line)."""
    kept = [
        line
        for line in (line.strip() for line in lines)
        if line and (schema is None or schema.has(RULE_TYPE, line.split(" ", 1)[0].split("(", 1)[0]))
    ]
    return " ".join(kept)


async def schema_for(gh: GitHub, policy: Policy) -> ServerSchema | None:
    """The server's schema when the policy names a field some servers lack (asked once per
    process), or when it is known already; None otherwise (nothing asked)."""
    url = getattr(gh, "graphql_url", None)
    if url is None:
        return None
    if asks_newer_fields(policy):
        return await server_schema(gh, QUERIED_TYPES)
    return known_schema(str(url), QUERIED_TYPES)


def for_server(plan: Plan, schema: ServerSchema) -> Plan:
    """The plan's protection bodies less the keys the server does not have."""

    def fit(change: Change) -> Change:
        if change.policy != BRANCH_PROTECTION or change.method != "PUT":
            return change
        before = None if change.before is None else supported_body(change.before, schema)
        return replace(change, before=before, after=supported_body(change.after, schema))

    return replace(
        plan,
        changes=tuple(fit(c) for c in plan.changes),
        deferred=tuple(fit(c) for c in plan.deferred),
    )
