"""The built-in default policy, used for every section no moko.yml sets."""

from __future__ import annotations

from policies.model import BranchRule, Policy, Scope

DEFAULT_BRANCH_RULE = "default"  # a rule with this name applies to the repository's default branch

DEFAULT_REPOSITORY: dict[str, bool] = {"has_issues": True, "has_wiki": False, "has_projects": False}

DEFAULT_PROTECTION: dict[str, object] = {
    "required_status_checks": None,
    "enforce_admins": False,
    "required_pull_request_reviews": {"required_approving_review_count": 1},
    "restrictions": None,
}

DEFAULT_POLICY = Policy(
    version=1,
    mode="enforce",
    repository=DEFAULT_REPOSITORY,
    branches=(BranchRule(name=DEFAULT_BRANCH_RULE, protection=DEFAULT_PROTECTION),),
    scope=Scope(include=("*",), exclude=(), archived=False),
    overrides=(),
    apply_permission="maintain",
    source="built-in default",
)


def default_policy() -> Policy:
    """The built-in default (it is immutable, so the same object is returned every time)."""
    return DEFAULT_POLICY
