"""Which repositories a policy manages: shell-style globs on the repository name."""

from __future__ import annotations

from fnmatch import fnmatchcase

from policies.model import Policy


def _matches(name: str, pattern: str) -> bool:
    # Repository names are case-insensitive on GitHub, so the globs are too.
    return fnmatchcase(name.lower(), pattern.lower())


def skip_reason(policy: Policy, repo_name: str, archived: bool) -> str | None:
    """Why the policy leaves this repository alone, or None when it manages it.

    ``repo_name`` is the repository's name; an ``owner/name`` is reduced to its name.
    """
    name = repo_name.rsplit("/", 1)[-1]
    if archived and not policy.scope.archived:
        return "archived (scope.archived is false)"
    if not any(_matches(name, pattern) for pattern in policy.scope.include):
        return f"not in scope.include ({', '.join(policy.scope.include) or 'empty'})"
    excluded = next((pattern for pattern in policy.scope.exclude if _matches(name, pattern)), None)
    if excluded is not None:
        return f"excluded by scope.exclude {excluded!r}"
    return None


def in_scope(policy: Policy, repo_name: str, archived: bool) -> bool:
    """True when the policy manages this repository."""
    return skip_reason(policy, repo_name, archived) is None
