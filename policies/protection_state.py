"""Branch protection's state of a repository (its part of ``RepoState.kinds``): what is known
of the protection of the branches the policy names, and of the classic rules that give it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from policies.model import BRANCH_PROTECTION, FrozenDict, RepoState, freeze


@dataclass(frozen=True)
class ProtectionState:
    """- ``protections``: for the branches the policy names (already resolved: "default" is
      the default branch's name), the GET …/protection answer, a ``NormalizedProtection``
      (from GraphQL), an ``Unreadable``, or None when the branch is not protected. A branch
      missing here is unknown.
    - ``rule_patterns``: for branches whose classic protection rule is known, that rule's
      pattern (the branch's own name, or a wildcard such as ``release/*`` that other branches
      share), or None when no classic rule covers the branch.
    """

    protections: Mapping[str, Any] = field(default_factory=FrozenDict)
    rule_patterns: Mapping[str, str | None] = field(default_factory=FrozenDict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "protections", freeze(self.protections))
        object.__setattr__(self, "rule_patterns", freeze(self.rule_patterns))


def protection_state(state: RepoState) -> ProtectionState:
    """What ``state`` knows of branch protection (nothing: an empty ProtectionState)."""
    known = state.kind(BRANCH_PROTECTION)
    return known if isinstance(known, ProtectionState) else ProtectionState()


def with_protection(state: RepoState, **changes: Any) -> RepoState:
    """A new state, with these fields of its ProtectionState changed."""
    return state.with_kind(BRANCH_PROTECTION, replace(protection_state(state), **changes))


def unprotected(branch: str | None) -> ProtectionState | None:
    """A branch just created (or a new repository's default one): not protected."""
    return ProtectionState({branch: None}) if branch else None
