"""Branch protection's part of the batched GraphQL read (``policies.batch_read``): each
repository's classic protection rules (one page) and whether the named branches exist.

A rule GraphQL cannot decide (a wildcard applies, or an exact rule may be on a page not read)
leaves the branch's protection unknown: the planner reads it with REST.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from bot.github_schema import ServerSchema
from policies.defaults import DEFAULT_BRANCH_RULE
from policies.model import Policy, RepoState
from policies.permissions import protection_unreadable
from policies.protection_shapes import (
    GRAPHQL_RULE_FIELDS,
    ProtectionUnknown,
    covering_pattern,
    protection_from_graphql_rules,
)
from policies.protection_state import with_protection
from policies.server_fields import rule_selection

RULES_PAGE = 20  # branch protection rules per repository; a repository with more may need REST


@dataclass(frozen=True)
class ProtectionRead:
    """What to ask of each repository: its protection rules, and whether each named branch
    (besides the default one) exists, as protection cannot be put on a branch that does not."""

    rules: bool
    branches: tuple[str, ...] = ()


def protection_wanted(policy: Policy, granted: Mapping[str, str] | None) -> ProtectionRead | None:
    """The policy's branches and those a repository may override; the rules only when the
    installation may read them. None: nothing to ask."""
    branches = [rule.name for rule in policy.branches if rule.name != DEFAULT_BRANCH_RULE]
    rules = bool(policy.branches)
    for key in policy.overrides:
        section, _, name = key.partition(".")
        if section == "branches":
            rules = True
            if name and name != DEFAULT_BRANCH_RULE:
                branches.append(name)
    rules = rules and protection_unreadable(granted) is None
    if not rules and not branches:
        return None
    return ProtectionRead(rules, tuple(dict.fromkeys(branches)))


def protection_selection(read: ProtectionRead, schema: ServerSchema | None) -> tuple[str, ...]:
    """The Repository fields that answer ``read``: with ``schema``, rule fields the server has."""
    parts: list[str] = []
    if read.rules:
        rule = rule_selection(GRAPHQL_RULE_FIELDS.splitlines(), schema)
        parts.append(f"branchProtectionRules(first: {RULES_PAGE}) {{ totalCount nodes {{ {rule} }} }}")
    for index, branch in enumerate(read.branches):
        parts.append(f"branch{index}: ref(qualifiedName: {json.dumps('refs/heads/' + branch)}) {{ name }}")
    return tuple(parts)


def protection_from_node(node: Mapping[str, Any], read: ProtectionRead | None, known: RepoState) -> RepoState:
    """The branches known to exist, and the protection (and covering rule's pattern) of each
    branch the rules read decide; nothing when nothing was asked."""
    if read is None:
        return known
    ref = node.get("defaultBranchRef")
    default = ref.get("name") if isinstance(ref, Mapping) else None
    existing: frozenset[str] | None = None
    if read.branches:
        found = {node[f"branch{i}"]["name"] for i in range(len(read.branches)) if node.get(f"branch{i}")}
        existing = frozenset(found | ({default} if default else set()))
    protections: dict[str, Any] = {}
    patterns: dict[str, str | None] = {}
    if read.rules and not known.empty:
        connection = node.get("branchProtectionRules") or {}
        rules = list(connection.get("nodes") or ())
        complete = int(connection.get("totalCount") or 0) <= len(rules)
        for branch in [default, *read.branches]:
            if not branch or (existing is not None and branch not in existing):
                continue
            exact = any(rule.get("pattern") == branch for rule in rules)
            if not exact and not complete:
                continue  # an exact rule could be on a page not read: let REST say
            patterns[branch] = covering_pattern(rules, branch)
            try:
                protections[branch] = protection_from_graphql_rules(rules, branch)
            except ProtectionUnknown:
                continue  # a wildcard rule applies: its settings as GitHub reads them, via REST
    return replace(with_protection(known, protections=protections, rule_patterns=patterns), existing_branches=existing)
