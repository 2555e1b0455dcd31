"""The repository settings' part of the batched GraphQL read (``policies.batch_read``): the
settings a policy names (and those a repository may override), as Repository fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.github_schema import ServerSchema
from policies.model import Policy, RepoState
from policies.permissions import unreadable_settings
from policies.repository_settings import GRAPHQL_FIELDS, rest_settings_from_graphql
from policies.server_fields import REPOSITORY_TYPE, repository_graphql_field


def settings_wanted(policy: Policy, granted: Mapping[str, str] | None) -> frozenset[str]:
    """The REST setting names to read: the policy's and those a repository may override, less
    what the installation's ``granted`` permissions may not read (GraphQL would refuse the
    whole repository for one such field; the planner says those are unknown)."""
    names = set(policy.repository)
    for key in policy.overrides:
        section, _, name = key.partition(".")
        if section == "repository":
            names.update([name] if name else GRAPHQL_FIELDS)
    return frozenset(names - set(unreadable_settings(names, granted)))


def settings_selection(names: frozenset[str], schema: ServerSchema | None) -> tuple[str, ...]:
    """The Repository fields that read ``names``: with ``schema``, only those the server has
    (a query naming one it lacks would fail whole)."""
    return tuple(
        GRAPHQL_FIELDS[name]
        for name in sorted(names)
        if name in GRAPHQL_FIELDS
        and (schema is None or schema.has(REPOSITORY_TYPE, repository_graphql_field(name) or ""))
    )


def settings_from_node(node: Mapping[str, Any], names: Any, known: RepoState) -> RepoState:
    """The settings a node holds, by their REST names; every node has some (its name, whether
    it is archived, its default branch), whatever was asked."""
    return known.with_repository(rest_settings_from_graphql(node))
