"""The policy kinds, each with the same shape, in the order their changes apply."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from policies.branch_protection import plan_protection_kind
from policies.model import BRANCH_PROTECTION, REPOSITORY, KindPlan, Policy, RepoState
from policies.repository_settings import plan_settings_kind


@dataclass(frozen=True)
class PolicyKind:
    """A kind of policy: its name (the audit record's ``policy``) and its pure planner."""

    name: str
    plan: Callable[[Policy, RepoState], KindPlan]


# Settings first: a protection rule such as required_linear_history can depend on them.
POLICY_KINDS: tuple[PolicyKind, ...] = (
    PolicyKind(REPOSITORY, plan_settings_kind),
    PolicyKind(BRANCH_PROTECTION, plan_protection_kind),
)
