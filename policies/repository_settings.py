"""Policy kind "repository": fields of PATCH /repos/{owner}/{repo}, compared and planned."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bot.github_protocol import GitHub
from policies.checks import Checker, Path, Problem
from policies.model import (
    REPOSITORY,
    Change,
    KindPlan,
    Plan,
    Policy,
    RepoState,
    Unreadable,
    freeze,
    is_unreadable,
    thaw,
)
from policies.permissions import unreadable_settings
from policies.words import UNKNOWN, ReportContext, Shown, StatusRow, Words, show, unknown_because

# The request body of PATCH /repos/{owner}/{repo} (operation repos/update in GitHub's REST
# description): field -> "bool" | "str" | "security_and_analysis" | tuple of allowed values.
PATCH_FIELDS: Mapping[str, Any] = {
    "name": "str",
    "description": "str",
    "homepage": "str",
    "private": "bool",
    "visibility": ("public", "private"),
    "security_and_analysis": "security_and_analysis",
    "has_issues": "bool",
    "has_projects": "bool",
    "has_wiki": "bool",
    "has_pull_requests": "bool",
    "pull_request_creation_policy": ("all", "collaborators_only"),
    "is_template": "bool",
    "default_branch": "str",
    "allow_squash_merge": "bool",
    "allow_merge_commit": "bool",
    "allow_rebase_merge": "bool",
    "allow_auto_merge": "bool",
    "delete_branch_on_merge": "bool",
    "allow_update_branch": "bool",
    "use_squash_pr_title_as_default": "bool",
    "squash_merge_commit_title": ("PR_TITLE", "COMMIT_OR_PR_TITLE"),
    "squash_merge_commit_message": ("PR_BODY", "COMMIT_MESSAGES", "BLANK"),
    "merge_commit_title": ("PR_TITLE", "MERGE_MESSAGE"),
    "merge_commit_message": ("PR_BODY", "PR_TITLE", "BLANK"),
    "archived": "bool",
    "allow_forking": "bool",
    "web_commit_signoff_required": "bool",
}

# PATCH fields a policy may not set, and why (the loader reports the reason).
REFUSED_FIELDS: Mapping[str, str] = {
    "name": "renaming repositories is not a policy (every repository would get the same name)",
    "archived": (
        "archiving is a decision about one repository, not a policy "
        "(use scope.archived to choose whether archived repositories are managed)"
    ),
}

# Fields that change who can see or change a repository. A repository's own file may set one
# only when the organization lists it by its full name (``overrides: [repository.visibility]``);
# ``overrides: [repository]`` never covers them. ``name`` and ``archived`` are refused outright
# (REFUSED_FIELDS). The others (issues, wiki, merge buttons, templates…) give no one access.
SENSITIVE_FIELDS: Mapping[str, str] = {
    "visibility": "it changes who can see the repository",
    "private": "it changes who can see the repository",
    "default_branch": "it changes which branch the organization's default-branch rules protect",
    "allow_forking": "it changes who can copy a private repository",
    "security_and_analysis": "it changes the repository's security features",
    "pull_request_creation_policy": "it changes who can open pull requests",
}

SECURITY_FEATURES: tuple[str, ...] = (
    "advanced_security",
    "code_security",
    "secret_scanning",
    "secret_scanning_push_protection",
    "secret_scanning_ai_detection",
    "secret_scanning_non_provider_patterns",
    "secret_scanning_delegated_alert_dismissal",
    "secret_scanning_delegated_bypass",
)
SECURITY_BYPASS_OPTIONS = "secret_scanning_delegated_bypass_options"

# GitHub needs the title with the message: "Required when using …_commit_message".
COMPANION_FIELDS: Mapping[str, str] = {
    "squash_merge_commit_message": "squash_merge_commit_title",
    "merge_commit_message": "merge_commit_title",
}

# GitHub may store an emptied text field as null; "" and null are the same value here,
# or Moko would PATCH them forever.
_TEXT_FIELDS = frozenset({"description", "homepage"})

# REST field -> GraphQL Repository field, for the batched organization sweep.
GRAPHQL_FIELDS: Mapping[str, str] = {
    "name": "name",
    "full_name": "nameWithOwner",
    "description": "description",
    "homepage": "homepageUrl",
    "private": "isPrivate",
    "visibility": "visibility",
    "archived": "isArchived",
    "is_template": "isTemplate",
    "has_issues": "hasIssuesEnabled",
    "has_projects": "hasProjectsEnabled",
    "has_wiki": "hasWikiEnabled",
    "has_discussions": "hasDiscussionsEnabled",
    "allow_squash_merge": "squashMergeAllowed",
    "allow_merge_commit": "mergeCommitAllowed",
    "allow_rebase_merge": "rebaseMergeAllowed",
    "allow_auto_merge": "autoMergeAllowed",
    "allow_update_branch": "allowUpdateBranch",
    "delete_branch_on_merge": "deleteBranchOnMerge",
    "allow_forking": "forkingAllowed",
    "web_commit_signoff_required": "webCommitSignoffRequired",
    "use_squash_pr_title_as_default": "squashPrTitleUsedAsDefault",
    "squash_merge_commit_title": "squashMergeCommitTitle",
    "squash_merge_commit_message": "squashMergeCommitMessage",
    "merge_commit_title": "mergeCommitTitle",
    "merge_commit_message": "mergeCommitMessage",
    "default_branch": "defaultBranchRef { name }",
}


def check_settings_section(value: Any, path: Path) -> list[Problem]:
    """The ``repository`` section's problems: each field a PATCH field with a valid value,
    private or visibility (not both), a message field with its title."""
    checker = Checker()
    if not checker.mapping(value, path, "a mapping of PATCH /repos/{owner}/{repo} fields"):
        return checker.problems
    for field, setting in value.items():
        if field not in PATCH_FIELDS:
            close = difflib.get_close_matches(str(field), list(PATCH_FIELDS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            checker.report(
                path + (field,), f"not a field of PATCH /repos/{{owner}}/{{repo}}{hint}"
            )
            continue
        problem = check_setting(field, setting)
        if problem:
            checker.report(path + (field,), problem)
    if "private" in value and "visibility" in value:
        checker.report(path + ("visibility",), "set either private or visibility, not both")
    for message, title in COMPANION_FIELDS.items():
        if message in value and title not in value:
            checker.report(path + (message,), f"GitHub needs {title} whenever {message} is set")
    return checker.problems


def settings_from_section(value: Any) -> Mapping[str, Any]:
    """The ``repository`` section of a valid file (null: no field managed)."""
    return value or {}


def merge_settings(
    org: Mapping[str, Any], value: Any, allowed: set[str], ignore: Callable[..., None]
) -> Mapping[str, Any]:
    """A repository's own ``repository`` fields over the organization's: those ``allowed``
    lists (``repository`` covers every field but the sensitive ones); ``ignore`` the others."""
    repository = dict(org)
    for name, setting in (value or {}).items():
        explicit = f"repository.{name}" in allowed
        if name in SENSITIVE_FIELDS and not explicit and "repository" in allowed:
            ignore(
                ("repository", name),
                f"{SENSITIVE_FIELDS[name]}, so the organization's overrides must list "
                f"repository.{name} by name ('repository' does not cover it)",
            )
        elif explicit or "repository" in allowed:
            # private and visibility say the same thing: the repository's one wins.
            twin = {"private": "visibility", "visibility": "private"}.get(name)
            if twin:
                repository.pop(twin, None)
            repository[name] = setting
        else:
            ignore(("repository", name))
    return repository


def check_setting(field: str, value: Any) -> str | None:
    """Why ``value`` is not valid for PATCH field ``field``, or None when it is."""
    if field in REFUSED_FIELDS:
        return f"may not be set by a policy: {REFUSED_FIELDS[field]}"
    kind = PATCH_FIELDS.get(field)
    if kind is None:
        return "not a field of PATCH /repos/{owner}/{repo}"
    if kind == "bool":
        return None if isinstance(value, bool) else f"must be true or false, not {_show(value)}"
    if kind == "str":
        if not isinstance(value, str):
            return f"must be a string, not {_show(value)}"
        if field == "default_branch" and not value:
            return "must be a branch name"
        return None
    if isinstance(kind, tuple):
        if value in kind and isinstance(value, str):
            return None
        return f"must be one of {', '.join(kind)}, not {_show(value)}"
    return _check_security_and_analysis(value)


def _check_security_and_analysis(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return "must be a mapping of features, e.g. {secret_scanning: {status: enabled}}"
    for feature, setting in value.items():
        if feature == SECURITY_BYPASS_OPTIONS:
            if not isinstance(setting, Mapping) or set(setting) - {"reviewers"}:
                return f"{feature} must be a mapping with only 'reviewers'"
            continue
        if feature not in SECURITY_FEATURES:
            return f"unknown feature {feature!r}; known: {', '.join(SECURITY_FEATURES)}"
        if (
            not isinstance(setting, Mapping)
            or set(setting) != {"status"}
            or setting["status"] not in ("enabled", "disabled")
        ):
            return f"{feature} must be {{status: enabled}} or {{status: disabled}}"
    return None


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else type(value).__name__


_UNKNOWN = object()


def _current_value(current: Mapping[str, Any], field: str) -> Any:
    """The current value of a PATCH field, or ``_UNKNOWN`` when ``current`` does not say.

    GitHub's repository object names two fields differently from the PATCH body:
    ``private`` and ``visibility`` describe the same thing, so one is derived from the other
    when only one is present ("internal" repositories are private; ``private: true`` alone
    cannot tell "private" from "internal", so it leaves ``visibility`` unknown).
    """
    if field in current:
        return current[field]
    if field == "visibility" and current.get("private") is False:
        return "public"
    if field == "private" and current.get("visibility") in ("public", "private", "internal"):
        return current["visibility"] != "public"
    return _UNKNOWN


def missing_fields(current: Mapping[str, Any], desired: Mapping[str, Any]) -> set[str]:
    """Fields the policy names that ``current`` does not hold (a read is needed to compare)."""
    return {field for field in desired if _current_value(current, field) is _UNKNOWN}


def _same(field: str, have: Any, want: Any) -> bool:
    if field in _TEXT_FIELDS:
        return (have or "") == (want or "")
    if field == "security_and_analysis":
        return _security_subset(have, want) == freeze(want)
    return freeze(have) == freeze(want)


def _security_subset(have: Any, want: Mapping[str, Any]) -> Any:
    """The current security_and_analysis, reduced to the features the policy names."""
    have = have if isinstance(have, Mapping) else {}
    subset = {}
    for feature in want:
        now = have.get(feature)
        if feature != SECURITY_BYPASS_OPTIONS and isinstance(now, Mapping):
            now = {"status": now.get("status")}
        subset[feature] = now
    return freeze(subset)


def plan_repository_settings(
    current: Mapping[str, Any], desired: Mapping[str, Any]
) -> list[Change]:
    """One Change per field whose current value differs; fields ``current`` lacks are skipped
    (see ``missing_fields``). Values are exact."""
    changes = []
    for field, want in desired.items():
        have = _current_value(current, field)
        if have is _UNKNOWN or is_unreadable(have) or _same(field, have, want):
            continue
        if field == "security_and_analysis":
            have = _security_subset(have, want)
        changes.append(Change(REPOSITORY, field, thaw(have), thaw(want), "PATCH"))
    return changes


def patch_body(
    changes: Iterable[Change], desired: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ONE PATCH /repos/{owner}/{repo} body for the repository changes.

    With ``desired`` (the values planned against, or for a rollback the previous values),
    a message field is sent with its title field, as GitHub requires.
    """
    body = {c.field: c.after for c in changes if c.policy == REPOSITORY}
    for message, title in COMPANION_FIELDS.items():
        if message in body and title not in body and desired and desired.get(title) is not None:
            body[title] = thaw(desired[title])
    return body


LEFT_OUT = (
    "GitHub's answer to GET /repos/{owner}/{repo} left it out "
    "(a permission these credentials lack, or a field this server does not have)"
)


def mark_unreadable_settings(policy: Policy, state: RepoState, granted: Mapping[str, str] | None) -> RepoState:
    """The fields the policy sets that ``granted`` may not read and the event did not bring,
    as ``Unreadable``."""
    present = state.repository
    hidden = {name: why for name, why in unreadable_settings(policy.repository, granted).items() if name not in present}
    if not hidden:
        return state
    return state.with_repository({name: Unreadable(why) for name, why in hidden.items()})


def check_override_field(key: str, field: str) -> str | None:
    """Why ``repository.<field>`` (``key``) cannot be listed in ``overrides``, or None."""
    if field in REFUSED_FIELDS:
        return f"{field} cannot be overridden: a policy may not set it"
    if field not in PATCH_FIELDS:
        close = difflib.get_close_matches(field, list(PATCH_FIELDS), n=1)
        hint = f"; did you mean 'repository.{close[0]}'?" if close else ""
        return f"{key!r}: {field!r} is not a field of PATCH /repos/{{owner}}/{{repo}}{hint}"
    return None


async def read_settings(
    gh: GitHub, owner: str, repo: str, policy: Policy, needs: tuple[str, ...], state: RepoState
) -> RepoState:
    """GET /repos/{owner}/{repo} for the fields the plan needs (``repository.<field>``)."""
    answer = await gh.getitem("/repos/{owner}/{repo}", url_vars={"owner": owner, "repo": repo})
    settings = {**state.repository, **answer}
    # What the answer left out will not be in the next one either.
    for name in missing_fields(settings, dict.fromkeys(key.split(".", 1)[1] for key in needs)):
        settings[name] = Unreadable(LEFT_OUT)
    return state.with_repository(settings)


async def send_settings(gh: GitHub, owner: str, repo: str, changes: tuple[Change, ...]) -> tuple[Change, ...]:
    """Every settings change of a repository in ONE PATCH /repos/{owner}/{repo}."""
    body = patch_body(changes, {c.field: c.after for c in changes})
    await gh.patch("/repos/{owner}/{repo}", url_vars={"owner": owner, "repo": repo}, data=body)
    return changes


def decides_setting(policy: Policy, field: str) -> bool:
    """Whether the policy sets the field."""
    return field in policy.repository


def inverse_setting(change: Change) -> Change:
    """The change that undoes one: the field's value before, PATCHed back."""
    return Change(REPOSITORY, change.field, change.after, change.before, "PATCH", change.target)


def describe_setting(change: Change, policy: Policy | None, default_branch: str | None) -> Words:
    """``field: before → after``."""
    return (Shown(change.field), ": ", Shown(show(change.before)), " → ", Shown(show(change.after)))


def settings_status(policy: Policy, plan: Plan, context: ReportContext) -> list[StatusRow]:
    """One row per field the policy sets: as wanted (the engine compared them equal), its value
    now, or unknown."""
    changes = {c.field: c for c in plan.changes if c.policy == REPOSITORY}
    unread = set(plan.to_read(REPOSITORY))
    unknown = plan.unknown_of(REPOSITORY)
    rows = []
    for field, wanted in policy.repository.items():
        actual: Words
        if field in changes:
            actual, compliant = (Shown(show(changes[field].before)),), False
        elif field in unknown:
            actual, compliant = unknown_because(unknown[field]), None
        elif field in unread:
            actual, compliant = (UNKNOWN,), None
        else:
            # Compliant means equal as the engine compares (e.g. "" and null descriptions).
            actual, compliant = (Shown(show(wanted)),), True
        rows.append(StatusRow((Shown(field),), (Shown(show(wanted)),), actual, compliant))
    return rows


def rest_settings_from_graphql(node: Mapping[str, Any]) -> dict[str, Any]:
    """Map a GraphQL ``Repository`` node to REST field names (only the fields it holds).

    Enum values are lower-cased for ``visibility`` (PUBLIC -> public) and kept for the
    commit title/message enums, which use the same names in both APIs.
    """
    settings: dict[str, Any] = {}
    for rest, graphql in GRAPHQL_FIELDS.items():
        key = graphql.split(" ", 1)[0]
        if key not in node:
            continue
        value = node[key]
        if rest == "default_branch":
            value = value.get("name") if isinstance(value, Mapping) else None
        elif rest == "visibility" and isinstance(value, str):
            value = value.lower()
        settings[rest] = value
    return settings


def plan_settings_kind(policy: Policy, repo: RepoState) -> KindPlan:
    """The "repository" policy kind for one repository."""
    missing = missing_fields(repo.repository, policy.repository)
    return KindPlan(
        changes=tuple(plan_repository_settings(repo.repository, policy.repository)),
        needs_read=tuple(
            f"{REPOSITORY}.{field}" for field in policy.repository if field in missing
        ),
        unknown=tuple(
            (f"{REPOSITORY}.{field}", repo.repository[field].reason)
            for field in policy.repository
            if is_unreadable(repo.repository.get(field))
        ),
    )
