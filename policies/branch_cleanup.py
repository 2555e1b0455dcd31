"""Policy kind "branch_cleanup": branches with no commits for a while, deleted by sweeps.

The section (``after: 90d``, ``merged_only: true``, ``keep: [globs]``) names which branches go:
those whose head commit is older than ``after``, merged (their head commit is in the default
branch, or their latest merged pull request had that head) unless ``merged_only`` is false,
and no ``keep`` glob matches. The default branch, branches a classic rule or a ruleset
protects, and branches with an open pull request are always kept.

Deleting is destructive, so it happens in sweeps only (``moko sweep`` and the continuous
reconciliation), never on a webhook or ``/moko apply``; ``/moko plan`` and ``status`` show
what would go. Each deletion is its own step: one that fails does not undo the others, nor
the repository's other changes, and none is undone when something else fails. Its audit
record holds the branch's head SHA in ``before``, so a deleted branch can be made again by
hand (``git push origin SHA:refs/heads/NAME``).

Reading is in two steps: the batched read asks each repository's branches with their head
commit's date and classic rule (about 1 GraphQL point per 100 repositories); only a
repository with a branch old enough to go is read again, with one query of its own, for
open and merged pull requests, rulesets and whether the default branch holds the head.
What that read found keeping an old branch (an open pull request, no merge, a ruleset) is
remembered for ``KEPT_FOR`` while the branch's head stays the same, so a repository whose
old branches all stay costs that query once a day, not at every sweep; a branch is deleted
only on what a read of that very sweep found.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from cachetools import TTLCache
from gidgethub import BadRequest

from bot.github_protocol import GitHub
from bot.github_schema import server_schema
from policies.model import (
    BRANCH_CLEANUP,
    BranchCleanup,
    Change,
    KindPlan,
    Plan,
    Policy,
    RepoState,
    is_unreadable,
    shown_in_error,
)
from policies.server_fields import QUERIED_TYPES, REF_TYPE
from policies.words import LONG, ReportContext, Shown, StatusRow, Words

Path = tuple[str | int, ...]
Problem = tuple[Path, str]

KEYS: tuple[str, ...] = ("after", "merged_only", "keep")
READ_KEY = f"{BRANCH_CLEANUP}.*"
# Durations as Moko's settings write them (MOKO_SWEEP_INTERVAL): a number and s, m, h or d.
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
REFS_PAGE = 100  # branches per repository in one query; more: the next page (or REST says)
# The ref path of DELETE …/git/refs/{ref}: GitHub takes a branch's slashes as they are, so
# each part between them is escaped on its own (``#`` or ``%`` in a name must not be taken
# for the URL's).
_DELETE = "/repos/{owner}/{repo}/git/refs/{+ref}"
GONE = "reference does not exist"
# How long what keeps an old branch is trusted without asking again: a pull request closed,
# a merge or a ruleset removed meanwhile delays its deletion by as much, never more.
KEPT_FOR = 24 * 3600


# --- the section ------------------------------------------------------------------------------


def parse_after(value: Any) -> float | None:
    """``after`` in seconds, or None when it is not a duration such as 90d."""
    if not isinstance(value, str):
        return None
    match = _DURATION.match(value)
    if match is None:
        return None
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    return seconds if seconds > 0 else None


def glob_problem(pattern: Any) -> str | None:
    """Why ``pattern`` is not a usable branch glob, or None."""
    if not isinstance(pattern, str) or not pattern:
        return "must be a non-empty glob such as release/*"
    if pattern.count("[") > pattern.count("]"):
        return f"{pattern!r}: a [ is not closed"
    try:
        re.compile(fnmatch.translate(pattern))
    except re.error as exc:
        return f"{pattern!r} is not a glob: {exc}"
    return None


def check_branch_cleanup(value: Any, path: Path) -> list[Problem]:
    """Problems of a ``branch_cleanup`` section (null: none; no branch is deleted)."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        return [(path, "must be a mapping {after, merged_only, keep}, not " + shown_in_error(value))]
    problems: list[Problem] = []
    for key in value:
        if key not in KEYS:
            problems.append((path + (key,), f"unknown key (allowed: {', '.join(KEYS)})"))
    if "after" not in value:
        problems.append((path, "after: missing (how long a branch has had no commits, e.g. 90d)"))
    elif parse_after(value["after"]) is None:
        problems.append((path + ("after",), f"must be a duration such as 90d, 12h or 30m, not {shown_in_error(value['after'])}"))
    if "merged_only" in value and not isinstance(value["merged_only"], bool):
        problems.append((path + ("merged_only",), f"must be true or false, not {shown_in_error(value['merged_only'])}"))
    keep = value.get("keep")
    if keep is not None and not isinstance(keep, list):
        problems.append((path + ("keep",), f"must be a list of branch globs, not {shown_in_error(keep)}"))
    for index, pattern in enumerate(keep if isinstance(keep, list) else ()):
        problem = glob_problem(pattern)
        if problem:
            problems.append((path + ("keep", index), problem))
    return problems


def section_from(value: Mapping[str, Any] | None) -> BranchCleanup | None:
    """The section of a VALID document (None: nothing is deleted)."""
    if value is None:
        return None
    seconds = parse_after(value["after"])
    assert seconds is not None  # validated
    return BranchCleanup(
        after=str(value["after"]).strip(), after_seconds=seconds,
        merged_only=bool(value.get("merged_only", True)), keep=tuple(value.get("keep") or ()),
    )


def merge_cleanup(
    org: BranchCleanup | None, value: Any, allowed: set[str], ignore: Callable[..., None]
) -> BranchCleanup | None:
    """A repository's own section, replacing the organization's whole, only when the overrides
    list ``branch_cleanup`` by name."""
    if "branch_cleanup" in allowed:
        return section_from(value)
    ignore(
        ("branch_cleanup",),
        "deleting branches cannot be undone by Moko, so the organization's overrides "
        "must list branch_cleanup by name",
    )
    return org


# --- what is known of a repository's branches --------------------------------------------------


@dataclass(frozen=True)
class BranchInfo:
    """One branch: its head, when that was committed, and what keeps it."""

    name: str
    sha: str
    committed_at: datetime | None  # None: its head is not a commit Moko can date: kept
    protected: bool  # a classic rule protects it (or, once detailed, a ruleset applies)
    open_pulls: int | None = None  # open pull requests from it; None: not read
    merged: bool | None = None  # None: not read (only asked for branches old enough to go)


@dataclass(frozen=True)
class Branches:
    """A repository's branches as read at ``as_of``; ``detailed``: pull requests, rulesets
    and merges are known too (else only names, heads, dates and classic rules)."""

    as_of: datetime
    default: str | None
    branches: tuple[BranchInfo, ...]
    detailed: bool = False


def kept_by(cleanup: BranchCleanup, name: str) -> str | None:
    """The ``keep`` glob that keeps a branch, or None."""
    return next((p for p in cleanup.keep if fnmatch.fnmatchcase(name, p)), None)


def old_enough(cleanup: BranchCleanup, branches: Branches) -> list[BranchInfo]:
    """The branches whose age alone would let them go: not the default, not protected, not
    kept by a glob, head older than ``after``."""
    limit = branches.as_of - timedelta(seconds=cleanup.after_seconds)
    return [
        b for b in branches.branches
        if b.name != branches.default and not b.protected and kept_by(cleanup, b.name) is None
        and b.committed_at is not None and b.committed_at < limit
    ]


def _goes(cleanup: BranchCleanup, branch: BranchInfo) -> bool:
    return branch.open_pulls == 0 and not branch.protected and (not cleanup.merged_only or branch.merged is True)


def _kept_as_known(cleanup: BranchCleanup, branch: BranchInfo) -> bool:
    """Whether what is known of the branch keeps it (an open pull request, or not merged
    where only merged branches go)."""
    if branch.open_pulls is None:
        return False
    return branch.open_pulls > 0 or (cleanup.merged_only and branch.merged is False)


def plan_cleanup_kind(policy: Policy, repo: RepoState) -> KindPlan:
    """The "branch_cleanup" kind for one repository (its state: ``Branches``)."""
    cleanup = policy.branch_cleanup
    if cleanup is None or repo.empty:
        return KindPlan()
    have = repo.kind(BRANCH_CLEANUP)
    if have is None:
        return KindPlan(needs_read=(READ_KEY,))
    if is_unreadable(have):
        return KindPlan(unknown=((BRANCH_CLEANUP, have.reason),))
    if repo.default_branch and have.default != repo.default_branch:
        have = Branches(have.as_of, repo.default_branch, have.branches, have.detailed)
    candidates = old_enough(cleanup, have)
    if not candidates:
        return KindPlan()
    if not have.detailed:
        # Deleting rests on a read of its own; a batched read's branches go no further than
        # "kept" (remembered from an earlier read, see KEPT_FOR).
        if all(_kept_as_known(cleanup, b) for b in candidates):
            return KindPlan()
        return KindPlan(needs_read=(READ_KEY,))
    changes = [
        Change(BRANCH_CLEANUP, b.name, head_record(b), None, "DELETE", b.name)
        for b in candidates if _goes(cleanup, b)
    ]
    return KindPlan(changes=tuple(changes))


def head_record(branch: BranchInfo) -> dict[str, Any]:
    """What the audit record keeps of a deleted branch: enough to make it again."""
    committed = branch.committed_at.isoformat().replace("+00:00", "Z") if branch.committed_at else None
    return {"sha": branch.sha, "committed_at": committed}


# --- reading (GraphQL) ------------------------------------------------------------------------

_REF_FIELDS = "name target { oid ... on Commit { committedDate } } branchProtectionRule { pattern }"


def graphql_selection(policy: Policy) -> str | None:
    """The batched read's part: each repository's branches, their heads' dates and classic
    rules (one connection: about a point per 100 repositories)."""
    if policy.branch_cleanup is None and BRANCH_CLEANUP not in policy.overrides:
        return None
    return (
        f'cleanupRefs: refs(refPrefix: "refs/heads/", first: {REFS_PAGE}) '
        f"{{ totalCount nodes {{ {_REF_FIELDS} }} }}"
    )


def _date(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _info(node: Mapping[str, Any], **more: Any) -> BranchInfo:
    target = node.get("target") or {}
    return BranchInfo(
        name=str(node["name"]), sha=str(target.get("oid") or ""),
        committed_at=_date(target.get("committedDate")),
        protected=node.get("branchProtectionRule") is not None, **more,
    )


# (repository, branch, head SHA) -> what a read found keeping that old branch.
_kept: TTLCache[tuple[str, str, str], BranchInfo] = TTLCache(maxsize=100_000, ttl=KEPT_FOR)


def forget() -> None:
    """Forget what kept old branches (a new process, or another GitHub, knows nothing)."""
    _kept.clear()


def _remembered(full_name: str, info: BranchInfo) -> BranchInfo:
    known = _kept.get((full_name.lower(), info.name, info.sha))
    if known is None:
        return info
    return replace(info, protected=info.protected or known.protected, open_pulls=known.open_pulls,
                   merged=known.merged)


def cleanup_from_graphql(repository: Mapping[str, Any]) -> Branches | None:
    """The branches a batched read saw (with what an earlier read found keeping an old one);
    None when it could not see them all."""
    connection = repository.get("cleanupRefs")
    if not isinstance(connection, Mapping):
        return None
    nodes = [n for n in connection.get("nodes") or () if n]
    if int(connection.get("totalCount") or 0) > len(nodes):
        return None
    default = (repository.get("defaultBranchRef") or {}).get("name")
    full_name = str(repository.get("nameWithOwner") or "")
    return Branches(datetime.now(UTC), default, tuple(_remembered(full_name, _info(n)) for n in nodes))


_DETAIL_QUERY = """
query MokoBranchCleanup($owner: String!, $name: String!, $after: String) {
  repository(owner: $owner, name: $name) {
    defaultBranchRef { name }
    refs(refPrefix: "refs/heads/", first: %(page)d, after: $after) {
      pageInfo { hasNextPage endCursor }
      nodes {
        %(fields)s
        %(rules)s
        openPulls: associatedPullRequests(states: [OPEN], first: 1) { totalCount }
        mergedPulls: associatedPullRequests(states: [MERGED], first: 1,
                                            orderBy: {field: UPDATED_AT, direction: DESC}) {
          nodes { headRefOid }
        }
      }
    }
  }
}
""".replace("%(page)d", str(REFS_PAGE)).replace("%(fields)s", _REF_FIELDS)
# Whether a ruleset applies to the branch. An older GitHub Enterprise Server has no Ref.rules
# (a query naming it would fail whole): there, a branch only a ruleset protects is not known
# to be protected, and GitHub refuses its DELETE when the ruleset forbids deleting it.
_RULES = "rules(first: 1) { totalCount }"
# Whether the default branch holds each head: its comparison with the branch (base: the
# default branch, head: the branch). Behind or identical: every commit of the branch is in it.
_CONTAINED = ("BEHIND", "IDENTICAL")
COMPARES_PAGE = 100


async def read_cleanup(gh: GitHub, owner: str, repo: str, policy: Policy) -> Branches:
    """Every branch of the repository with what decides whether it goes: one query per 100
    branches, then, when only merged branches go, one query per 100 branches old enough to
    go that no merged pull request accounts for (does the default branch hold the head?)."""
    default: str | None = None
    found: list[BranchInfo] = []
    after: str | None = None
    as_of = datetime.now(UTC)
    schema = await server_schema(gh, QUERIED_TYPES)
    query = _DETAIL_QUERY.replace("%(rules)s", _RULES if schema.has(REF_TYPE, "rules") else "")
    while True:
        data = await gh.graphql(query, owner=owner, name=repo, after=after)
        repository = data.get("repository") or {}
        default = (repository.get("defaultBranchRef") or {}).get("name")
        connection = repository.get("refs") or {}
        for node in connection.get("nodes") or ():
            if not node:
                continue
            merged_heads = [p.get("headRefOid") for p in (node.get("mergedPulls") or {}).get("nodes") or () if p]
            sha = str((node.get("target") or {}).get("oid") or "")
            found.append(_info(
                node, open_pulls=int((node.get("openPulls") or {}).get("totalCount") or 0),
                merged=True if sha and sha in merged_heads else None,
            ))
            if int((node.get("rules") or {}).get("totalCount") or 0) > 0:
                found[-1] = replace(found[-1], protected=True)  # a ruleset applies
        info = connection.get("pageInfo") or {}
        if not info.get("hasNextPage"):
            break
        after = info.get("endCursor")
    branches = Branches(as_of, default, tuple(found), detailed=True)
    cleanup = policy.branch_cleanup
    if cleanup is None or default is None:
        return branches
    if cleanup.merged_only:
        undecided = [b.name for b in old_enough(cleanup, branches) if b.merged is None and b.open_pulls == 0]
        contained: dict[str, bool] = {}
        for start in range(0, len(undecided), COMPARES_PAGE):
            contained.update(await _contained(gh, owner, repo, undecided[start:start + COMPARES_PAGE]))
        branches = Branches(as_of, default, tuple(
            replace(b, merged=contained.get(b.name, b.merged)) for b in found
        ), detailed=True)
    _remember_kept(f"{owner}/{repo}", cleanup, branches)
    return branches


def _remember_kept(full_name: str, cleanup: BranchCleanup, branches: Branches) -> None:
    """Remember, for the next batched reads, what keeps each old branch that stays: a ruleset,
    an open pull request, no merge."""
    limit = branches.as_of - timedelta(seconds=cleanup.after_seconds)
    for b in branches.branches:
        old = b.committed_at is not None and b.committed_at < limit and b.name != branches.default
        if old and kept_by(cleanup, b.name) is None and (b.protected or _kept_as_known(cleanup, b)):
            _kept[(full_name.lower(), b.name, b.sha)] = b


async def _contained(gh: GitHub, owner: str, repo: str, names: Sequence[str]) -> dict[str, bool]:
    """Branch name -> whether the default branch holds its head (one query; comparisons are
    not connections, so it costs a point whatever their number)."""
    aliases = " ".join(
        f"b{i}: compare(headRef: {json.dumps(name)}) {{ status }}" for i, name in enumerate(names)
    )
    query = (
        "query MokoBranchesMerged($owner: String!, $name: String!) { "
        f"repository(owner: $owner, name: $name) {{ defaultBranchRef {{ {aliases} }} }} }}"
    )
    data = await gh.graphql(query, owner=owner, name=repo)
    ref = (data.get("repository") or {}).get("defaultBranchRef") or {}
    return {
        name: (ref.get(f"b{i}") or {}).get("status") in _CONTAINED for i, name in enumerate(names)
    }


# --- deleting ---------------------------------------------------------------------------------


def ref_path(branch: str) -> str:
    """``heads/<branch>`` for DELETE …/git/refs/{ref}: slashes kept, every part escaped."""
    return "heads/" + "/".join(quote(part, safe="") for part in branch.split("/"))


def decides_deletion(policy: Policy, branch: str) -> bool:
    """Never: a deletion an earlier try left unanswered stays pending, for only sweeps plan
    deletions, and a delivery's plan (which leaves them out) would take it for made."""
    return False


async def delete_branch(gh: GitHub, owner: str, repo: str, change: Change) -> Change:
    """DELETE the branch; one already gone (422 "Reference does not exist") is what was wanted."""
    try:
        await gh.delete(_DELETE, url_vars={"owner": owner, "repo": repo, "ref": ref_path(change.field)})
    except BadRequest as exc:
        if getattr(exc, "status_code", None) == 422 and GONE in str(exc).lower():
            return change
        raise
    return change


# --- describing (status, plan) -------------------------------------------------------------


def describe_deletion(change: Change, policy: Policy | None, default_branch: str | None) -> Words:
    """One deletion, with the head it had."""
    before = change.before or {}
    sha = str(before.get("sha") or "")[:12]
    committed = str(before.get("committed_at") or "")[:10]
    detail = f"head {sha}, last commit {committed}; " if sha else ""
    return (Shown(f"delete branch {change.field}"), ": ", Shown(detail + "sweeps delete it, not /moko apply", LONG))


def cleanup_status(policy: Policy, plan: Plan, context: ReportContext) -> list[StatusRow]:
    """One row for the section: what it asks, and the branches that would go (by the next sweep)."""
    return [
        StatusRow((Shown(name),), (Shown(wanted),), (Shown(actual, LONG),), compliant)
        for name, wanted, actual, compliant in _cleanup_rows(policy, plan)
    ]


def _cleanup_rows(policy: Policy, plan: Plan) -> list[tuple[str, str, str, bool | None]]:
    cleanup = policy.branch_cleanup
    if cleanup is None:
        return []
    wanted = f"none without commits for {cleanup.after}" + (" (merged)" if cleanup.merged_only else "")
    going = [c.field for c in plan.changes if c.policy == BRANCH_CLEANUP]
    unknown = any(key.split(".", 1)[0] == BRANCH_CLEANUP for key, _ in plan.unknown) or READ_KEY in plan.needs_read
    if going:
        shown = ", ".join(going[:10]) + (f" and {len(going) - 10} more" if len(going) > 10 else "")
        return [("stale branches", wanted, f"the next sweep deletes {shown}", False)]
    if unknown:
        return [("stale branches", wanted, "unknown", None)]
    return [("stale branches", wanted, "none", True)]
