"""What is known of a repository before (and between) the planner's reads: from a webhook's
payload, a batched read, or the REST reads a policy kind makes when a plan needs them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class OpenIssue:
    """An open issue that Moko opened in a repository, as a batched read saw it."""

    number: int
    title: str
    body: str


@dataclass
class Known:
    """State known without asking GitHub: from the payload, or a batched read. A kind's read
    returns a new Known with what it learned (see ``PolicyKind.read``)."""

    settings: Mapping[str, Any] | None = None
    protections: dict[str, Any] = field(default_factory=dict)
    empty: bool = False
    existing_branches: frozenset[str] | None = None
    missing_branches: set[str] = field(default_factory=set)
    rule_patterns: dict[str, str | None] = field(default_factory=dict)
    open_issues: tuple[OpenIssue, ...] | None = None  # the open issues Moko opened; None: not read
    kind_state: dict[str, Any] = field(default_factory=dict)  # see RepoState.kind_state
