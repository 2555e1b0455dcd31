"""Policy kind "branch_protection": compares a branch's protection with the policy, and plans.

GitHub's read, write and GraphQL shapes are brought to one ``NormalizedProtection`` by
``protection_shapes`` (re-exported here); this module decides compliance and the fix.

What "compliant" means
----------------------
A policy's protection body names keys; Moko owns exactly those and leaves the others alone,
as SPEC.md says ("keys it does not name are left alone"):

- a top-level key named in the body is compared (``null`` means "off");
- inside ``required_pull_request_reviews`` and ``required_status_checks`` each named sub-key is
  compared (``required_approving_review_count``, ``dismiss_stale_reviews``, ``strict``, the set
  of required contexts, …); actor lists (``restrictions``, ``dismissal_restrictions``,
  ``bypass_pull_request_allowances``) are compared whole, as sets of logins/slugs;
- a required check's app is compared only when the policy pins it with ``app_id``
  (``-1`` means "any app"); a bare context lets GitHub choose the app, and any choice complies;
- ``required_signatures`` has its own endpoint and is not part of the PUT body: ignored.

Because PUT replaces the whole protection, the body Moko writes is the CURRENT protection
(turned back into a PUT body) with the policy's named keys laid over it, so a fix never
resets a key the policy does not name; for an unprotected branch it is the policy's body
(missing required keys as null: GitHub's defaults). A compliant branch is never written
again, and the body written normalizes, when read back, to a compliant state.

``protection: null`` in a rule means "this branch must not be protected" (one DELETE);
a branch no rule names is not managed at all.

Classic rules have patterns. A branch covered only by a wildcard rule (``release/*``;
GitHub's ``*`` does not cross ``/``) reads as protected with that rule's settings; a PUT on
the branch makes it a rule of its own, so a fix never touches the shared rule. Removing
protection would mean removing a rule other branches share: Moko never does, and holds that
change (see ``Held``) instead; before any DELETE it learns which rule protects the branch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gidgethub import BadRequest, GitHubException

from bot.github_protocol import GitHub
from policies.defaults import DEFAULT_BRANCH_RULE
from policies.model import (
    BRANCH_PROTECTION,
    BRANCH_PROTECTION_RULE,
    BranchRule,
    Change,
    Held,
    KindPlan,
    Method,
    NotYetPossible,
    Policy,
    RepoState,
    Unreadable,
    is_unreadable,
    thaw,
)
from policies.permissions import protection_unreadable
from policies.protection_shapes import (
    ANY_APP,
    AUTO_APP,
    GRAPHQL_RULE_FIELDS,
    PROTECTION_KEYS,
    REQUIRED_KEYS,
    REVIEW_ACTOR_KEYS,
    REVIEW_KEYS,
    UNKNOWN,
    NormalizedProtection,
    ProtectionUnknown,
    Reviews,
    StatusChecks,
    Unknown,
    actors_body,
    as_normalized,
    normalize_written,
    parse_actors,
    protection_body,
    protection_from_graphql_rules,
    status_checks_body,
)
from policies.protection_state import protection_state, with_protection

__all__ = [
    "GRAPHQL_RULE_FIELDS",
    "BranchMissing",
    "ProtectionDiff",
    "ProtectionUnknown",
    "branches_to_check",
    "desired_protection_body",
    "decides_protection",
    "diff_protection",
    "inverse_protection",
    "learn_undo",
    "mark_unreadable_protection",
    "normalize_written",
    "plan_branch_protection",
    "plan_protection_kind",
    "protection_from_graphql_rules",
    "read_protection",
    "resolve_branch_rules",
    "rule_pattern",
    "send_protection",
]


SHARED_RULE = (
    "protected by the rule {pattern}, which other branches share: Moko does not remove it"
)

# --- comparing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProtectionDiff:
    """Where the current protection differs from what the policy names (dotted keys)."""

    drift: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()

    @property
    def compliant(self) -> bool:
        return not self.drift and not self.unknown


class _Differ:
    def __init__(self) -> None:
        self.drift: list[str] = []
        self.unknown: list[str] = []

    def compare(self, path: str, have: Any, want: Any) -> None:
        if have is UNKNOWN:
            self.unknown.append(path)
        elif have != want:
            self.drift.append(path)

    def status_checks(self, path: str, have: Any, want: StatusChecks | None, named: Any) -> None:
        if have is UNKNOWN or have is None or want is None:
            self.compare(path, have, want)
            return
        if "strict" in named:
            self.compare(f"{path}.strict", have.strict, want.strict)
        if "contexts" in named or "checks" in named:
            self.compare(f"{path}.contexts", have.contexts, want.contexts)
        if want.apps and want.apps is not UNKNOWN:
            if have.apps is UNKNOWN:
                self.unknown.append(f"{path}.checks")
            elif not set(want.apps) <= set(have.apps):
                self.drift.append(f"{path}.checks")

    def reviews(self, path: str, have: Any, want: Reviews | None, named: Any) -> None:
        if have is UNKNOWN or have is None or want is None:
            self.compare(path, have, want)
            return
        for key in REVIEW_KEYS:
            if key in named:
                self.compare(f"{path}.{key}", getattr(have, key), getattr(want, key))


def diff_protection(
    current: NormalizedProtection | None, desired_body: Mapping[str, Any] | None
) -> ProtectionDiff:
    """Compare the current protection with a policy's protection body (see module docstring)."""
    if desired_body is None or current is None:
        drifted = (desired_body is None) != (current is None)
        return ProtectionDiff(drift=("protection",) if drifted else ())
    want = normalize_written(desired_body)
    assert want is not None
    differ = _Differ()
    for key in PROTECTION_KEYS:
        if key not in desired_body:
            continue
        have, wanted = getattr(current, key), getattr(want, key)
        if key == "required_status_checks":
            differ.status_checks(key, have, wanted, desired_body[key])
        elif key == "required_pull_request_reviews":
            differ.reviews(key, have, wanted, desired_body[key])
        else:
            differ.compare(key, have, wanted)
    return ProtectionDiff(tuple(differ.drift), tuple(differ.unknown))


# --- writing ---------------------------------------------------------------------------


def _desired_status_checks(
    value: Mapping[str, Any], current: StatusChecks | None
) -> dict[str, Any]:
    strict = bool(value.get("strict", current.strict if current else False))
    pins = (
        dict(current.apps) if current is not None and not isinstance(current.apps, Unknown) else {}
    )
    if "contexts" not in value and "checks" not in value and current is not None:
        return status_checks_body(strict, [(c, pins.get(c, AUTO_APP)) for c in current.contexts])
    entries: dict[str, Any] = {}
    for context in value.get("contexts") or ():
        entries[context] = AUTO_APP
    for check in value.get("checks") or ():
        context = check["context"]
        if "app_id" in check:
            entries[context] = None if check["app_id"] == ANY_APP else check["app_id"]
        else:
            entries.setdefault(context, AUTO_APP)
    # A context the policy does not pin keeps the app it has now, so a fix does not re-pin it.
    resolved = [
        (c, pins[c] if pin is AUTO_APP and c in pins else pin) for c, pin in entries.items()
    ]
    return status_checks_body(strict, resolved)


def desired_protection_body(
    current: NormalizedProtection | None, desired_body: Mapping[str, Any]
) -> dict[str, Any]:
    """The PUT body that makes the branch comply: the current protection (as a PUT body) with
    the policy's named keys laid over it; for an unprotected branch, the policy's body with
    missing required keys as null."""
    base: dict[str, Any] = {} if current is None else protection_body(current)
    status = None if current is None else current.required_status_checks
    body = dict(base)
    for key in PROTECTION_KEYS:
        if key not in desired_body:
            continue
        value = desired_body[key]
        if value is None:
            body[key] = None
        elif key == "required_status_checks":
            assert not isinstance(status, Unknown)
            body[key] = _desired_status_checks(value, status)
        elif key == "required_pull_request_reviews":
            reviews = dict(base.get(key) or {})
            for sub in REVIEW_KEYS:
                if sub in value:
                    sub_value = value[sub]
                    reviews[sub] = (
                        actors_body(parse_actors(sub_value))
                        if sub in REVIEW_ACTOR_KEYS
                        else thaw(sub_value)
                    )
            body[key] = reviews
        elif key == "restrictions":
            body[key] = parse_actors(value).body()
        else:
            body[key] = thaw(value)
    for key in REQUIRED_KEYS:
        body.setdefault(key, None)
    return {key: body[key] for key in PROTECTION_KEYS if key in body}


# --- planning ----------------------------------------------------------------------------


def plan_branch_protection(
    branch: str,
    current_read: Mapping[str, Any] | NormalizedProtection | None,
    desired_body: Mapping[str, Any] | None,
    rule_pattern: str | None = None,
) -> list[Change]:
    """[] when the branch complies; otherwise ONE change that fixes everything for it.

    ``current_read``: the GET …/protection answer, None when unprotected, or a
    NormalizedProtection (GraphQL). ``desired_body``: the rule's protection; None means the
    branch must not be protected (DELETE). ``rule_pattern``: the pattern of the classic rule
    protecting the branch, when known (see ``Change.before_rule``). Raises ProtectionUnknown
    when a GraphQL state cannot be judged, or is not compliant (a fix needs the exact current
    state: read REST first).
    """
    current = as_normalized(current_read)
    diff = diff_protection(current, desired_body)
    if diff.compliant:
        return []
    if current is not None and not current.known:
        raise ProtectionUnknown(branch, diff.unknown or diff.drift)
    before = None if current is None else protection_body(current)
    if desired_body is None:
        return [Change(BRANCH_PROTECTION, branch, before, None, "DELETE", branch)]
    after = desired_protection_body(current, desired_body)
    rule = None if before is None else rule_pattern
    return [Change(BRANCH_PROTECTION, branch, before, after, "PUT", branch, before_rule=rule)]


def resolve_branch_rules(policy: Policy, default_branch: str | None) -> dict[str, BranchRule]:
    """Branch name -> rule. "default" names the default branch; a rule with the branch's exact
    name wins over it, unless it came from a repository that may not override the "default"
    rule. Without a known default branch the "default" rule is left out."""
    rules = {rule.name: rule for rule in policy.branches if rule.name != DEFAULT_BRANCH_RULE}
    default = next((rule for rule in policy.branches if rule.name == DEFAULT_BRANCH_RULE), None)
    if default is not None and default_branch:
        named = rules.get(default_branch)
        if named is None or not named.displaces_default:
            rules.pop(default_branch, None)
            return {default_branch: default, **rules}
    return rules


def branches_to_check(policy: Policy, default_branch: str | None) -> list[str]:
    """The branches whose protection the policy manages, default branch first."""
    return list(resolve_branch_rules(policy, default_branch))


def default_branch_rules(rules: tuple[BranchRule, ...]) -> tuple[BranchRule, ...]:
    """Of the ``branches`` section, the rule about the default branch (which moved)."""
    return tuple(rule for rule in rules if rule.name == DEFAULT_BRANCH_RULE)


def fields_waiting_for(branch: str, default_branch: str | None) -> tuple[str, ...]:
    """The fields of deferred protection changes that wait for ``branch``: the default
    branch rule waits for the default branch; a named rule for its branch."""
    return (branch, DEFAULT_BRANCH_RULE) if branch == default_branch else (branch,)


def plan_protection_kind(policy: Policy, repo: RepoState) -> KindPlan:
    """The "branch_protection" policy kind for one repository."""
    changes: list[Change] = []
    deferred: list[Change] = []
    needs_read: list[str] = []
    held: list[Held] = []
    unknown: list[tuple[str, str]] = []
    protections, patterns = protection_state(repo).protections, protection_state(repo).rule_patterns
    existing = repo.existing_branches
    if existing is None and repo.missing_branches:
        # GitHub named the branches it could not find; the others it answered for exist.
        default_name = repo.default_branch
        existing = frozenset(set(protections) | ({default_name} if default_name else set())) - repo.missing_branches
    default = next((rule for rule in policy.branches if rule.name == DEFAULT_BRANCH_RULE), None)
    if default is not None and not repo.default_branch:
        if not repo.empty:
            needs_read.append("repository.default_branch")
        elif default.protection is not None:
            body = desired_protection_body(None, default.protection)
            deferred.append(Change(BRANCH_PROTECTION, DEFAULT_BRANCH_RULE, None, body, "PUT", None))
    for branch, rule in resolve_branch_rules(policy, repo.default_branch).items():
        exists = not repo.empty and (
            existing is None or branch in existing
        )
        if not exists:
            # Protection needs the branch: it waits for the branch's first push.
            if rule.protection is not None:
                body = desired_protection_body(None, rule.protection)
                deferred.append(Change(BRANCH_PROTECTION, branch, None, body, "PUT", branch))
            continue
        if branch not in protections:
            needs_read.append(f"{BRANCH_PROTECTION}.{branch}")
            continue
        if is_unreadable(protections[branch]):
            unknown.append((f"{BRANCH_PROTECTION}.{branch}", protections[branch].reason))
            continue
        if rule.protection is None and protections[branch] is not None:
            pattern = patterns.get(branch, UNKNOWN)
            if pattern is UNKNOWN:
                needs_read.append(f"{BRANCH_PROTECTION_RULE}.{branch}")
                continue
            if pattern is not None and pattern != branch:
                held.append(Held(BRANCH_PROTECTION, branch, SHARED_RULE.format(pattern=pattern)))
                continue
        known_pattern = patterns.get(branch)
        try:
            changes.extend(
                plan_branch_protection(branch, protections[branch], rule.protection, known_pattern)
            )
        except ProtectionUnknown:
            needs_read.append(f"{BRANCH_PROTECTION}.{branch}")
    return KindPlan(tuple(changes), tuple(deferred), tuple(needs_read), tuple(held), tuple(unknown))


# --- writing (the transaction) -------------------------------------------------------------


class BranchMissing(NotYetPossible):
    """GitHub cannot protect a branch that does not exist (yet)."""

    reason = "branch does not exist yet"


_PROTECTION = "/repos/{owner}/{repo}/branches/{branch}/protection"
# Which classic rule protects a branch: REST cannot tell a branch's own rule from a wildcard
# rule that covers it, so this one GraphQL read comes before removing a branch's protection,
# and before a PUT that a later step's failure would have to undo.
_RULE_QUERY = """
query MokoBranchRule($owner: String!, $name: String!, $ref: String!) {
  repository(owner: $owner, name: $name) { ref(qualifiedName: $ref) { branchProtectionRule { pattern } } }
}
"""


async def rule_pattern(gh: GitHub, owner: str, name: str, branch: str) -> str | None:
    """The pattern of the classic rule protecting the branch (its own name, or a wildcard
    that other branches share), or None when none does."""
    data = await gh.graphql(_RULE_QUERY, owner=owner, name=name, ref=f"refs/heads/{branch}")
    ref = (data.get("repository") or {}).get("ref") or {}
    rule = ref.get("branchProtectionRule") or {}
    return rule.get("pattern")


def mark_unreadable_protection(policy: Policy, state: RepoState, granted: Mapping[str, str] | None) -> RepoState:
    """The branches the policy protects, when ``granted`` may not read protection, as
    ``Unreadable`` (those whose protection is known, e.g. a new repository's, excepted)."""
    why = protection_unreadable(granted)
    if why is None or not policy.branches:
        return state
    default = state.default_branch
    if is_unreadable(default):  # not given, and the settings may not read it either
        default = None
    protections = dict(protection_state(state).protections)
    for branch in branches_to_check(policy, default):
        protections.setdefault(branch, Unreadable(why))
    return with_protection(state, protections=protections)


async def read_protection(
    gh: GitHub, owner: str, repo: str, policy: Policy, needs: tuple[str, ...], state: RepoState
) -> RepoState:
    """The protection of the branches the plan needs (``branch_protection.<branch>``: GET
    …/protection), then the rules that protect them (``branch_protection_rule.<branch>``)."""
    known = protection_state(state)
    protections, missing = dict(known.protections), set(state.missing_branches)
    patterns = dict(known.rule_patterns)
    for key in needs:
        kind, branch = key.split(".", 1)
        if kind != BRANCH_PROTECTION:
            continue
        try:
            protections[branch] = await gh.getitem(
                _PROTECTION, url_vars={"owner": owner, "repo": repo, "branch": branch}
            )
        except BadRequest as exc:
            if exc.status_code != 404:
                raise
            # 404 is either "Branch not protected" or "Branch not found".
            if "branch not found" in str(exc).lower():
                missing.add(branch)
            protections[branch] = None
    for key in needs:
        kind, branch = key.split(".", 1)
        if kind == BRANCH_PROTECTION_RULE:
            patterns[branch] = await rule_pattern(gh, owner, repo, branch)
    return replace(
        with_protection(state, protections=protections, rule_patterns=patterns), missing_branches=frozenset(missing)
    )


async def send_protection(gh: GitHub, owner: str, repo: str, changes: tuple[Change, ...]) -> tuple[Change, ...]:
    """One branch's PUT or DELETE; raises BranchMissing when GitHub has no such branch."""
    [change] = changes
    url_vars = {"owner": owner, "repo": repo, "branch": change.target or change.field}
    try:
        if change.method == "DELETE":
            await gh.delete(_PROTECTION, url_vars=url_vars)
        else:
            await gh.put(_PROTECTION, url_vars=url_vars, data=change.after)
    except GitHubException as exc:
        if getattr(exc, "status_code", None) == 404 and "branch not found" in str(exc).lower():
            raise BranchMissing(change.target or change.field) from exc
        if change.method == "DELETE" and getattr(exc, "status_code", None) == 404:
            return changes  # already unprotected: what the step wanted
        raise
    return changes


async def learn_undo(gh: GitHub, owner: str, repo: str, change: Change) -> Change:
    """The change, knowing what undoing it needs: a PUT on a protected branch learns which
    rule protects the branch now (see ``Change.before_rule``)."""
    if change.method != "PUT" or change.before is None or change.before_rule is not None:
        return change
    pattern = await rule_pattern(gh, owner, repo, change.target or change.field)
    return replace(change, before_rule=pattern)


def decides_protection(policy: Policy, branch: str) -> bool:
    """Whether the policy says how branches are protected (a rule for the default branch may
    stand for the branch)."""
    return bool(policy.branches)


def inverse_protection(change: Change) -> Change:
    """The change that undoes one: the protection before written back, or removed."""
    branch = change.target or change.field
    # No rule of its own before: the PUT made one, and removing it restores the branch.
    own_rule_made = change.method == "PUT" and change.before_rule not in (None, branch)
    method: Method = "DELETE" if change.before is None or own_rule_made else "PUT"
    after = None if method == "DELETE" else change.before
    return Change(change.policy, change.field, change.after, after, method, change.target)
