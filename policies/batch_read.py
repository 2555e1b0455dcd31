"""Reading many repositories at once: GraphQL, 100 a query.

A sweep or a reconcile asks GitHub, 100 repositories per query, for what each policy kind
asks of a repository for the policy (its ``BatchPart`` in ``policies.registry``), and turns
each node into the ``RepoState`` that the planner plans from (its REST-shaped repository
object, and each kind's state as the kind says the node tells it). Whatever GraphQL cannot decide (a field the
server does not have, a wildcard rule, more than one page) is left unknown, and the planner
reads it with REST.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from gidgethub import QueryError

from bot.github_protocol import GitHub
from bot.github_schema import ServerSchema, server_schema
from policies.loader import MAX_FILE_BYTES
from policies.model import OpenIssue, Policy, RepoState
from policies.registry import KINDS_BY_NAME, POLICY_KINDS, BatchPart
from policies.server_fields import QUERIED_TYPES
from policies.source import CONTENT_LIMIT, PolicyFile, too_large

PAGE_SIZE = 100  # GitHub's most per connection page, and the most aliases Moko puts in a query
NOTICES_PAGE = 10  # open issues by Moko per repository: it opens one
_ALWAYS = ("name", "nameWithOwner", "isArchived", "isEmpty", "defaultBranchRef { name }", "owner { login }")
# Every query is named, so GitHub's logs (and the fake's) say what Moko was asking for.
# rateLimit costs nothing and says what the query cost: reconciliation keeps to a budget.
_OWNER_QUERY = """
query MokoOwnerRepositories($owner: String!, $after: String) {
  rateLimit { cost remaining resetAt limit }
  repositoryOwner(login: $owner) {
    login
    repositories(first: %(page)d, after: $after, ownerAffiliations: [OWNER],
                 orderBy: {field: NAME, direction: ASC}) {
      totalCount
      pageInfo { hasNextPage endCursor }
      nodes { %(selection)s }
    }
  }
}
"""
_VIEWER_QUERY = "query MokoViewer { viewer { login } }"
# A repository's own policy file, when the organization's policy allows overrides.
_OWN_POLICY = 'ownPolicy: object(expression: "HEAD:.github/moko.yml") { ... on Blob { oid text byteSize isBinary isTruncated } }'


class OwnerNotFound(LookupError):
    """GitHub knows no such account, or the credentials cannot see it."""


@dataclass(frozen=True)
class ReadFields:
    """What to ask GitHub about each repository: what each policy kind asks (its
    ``BatchPart``), in the registry's order, and the policy file and notices."""

    parts: tuple[tuple[str, Any], ...] = ()  # (kind name, what it asks)
    own_policy: bool = False  # each repository's .github/moko.yml (the policy allows overrides)
    notices_by: str | None = None  # the login whose open issues to list (the policy notifies)

    @classmethod
    def for_policy(
        cls, policy: Policy, granted: Mapping[str, str] | None = None, *, sweep: bool = False
    ) -> ReadFields:
        """What the organization policy's kinds ask, with what a repository may override, less
        what the installation's ``granted`` permissions may not read. Kinds that only sweeps
        apply (stale branches) are asked only with ``sweep``."""
        parts = tuple(
            (kind.name, wanted) for kind in POLICY_KINDS
            if kind.batch is not None and (sweep or not kind.sweeps_only)
            and (wanted := kind.batch.wanted(policy, granted)) is not None
        )
        return cls(parts, bool(policy.overrides))

    def wanted(self, kind: str) -> Any:
        """What the kind named ``kind`` asks (None: nothing)."""
        return dict(self.parts).get(kind)

    def selection(self, schema: ServerSchema | None = None) -> str:
        """The selection set of one ``Repository`` node: with ``schema``, only the fields the
        server has (a query naming one it lacks would fail whole)."""
        wanted = dict.fromkeys(_ALWAYS)
        for name, asked in self.parts:
            wanted.update(dict.fromkeys(_batch_part(name).selection(asked, schema)))
        parts = list(wanted)
        if self.own_policy:
            parts.append(_OWN_POLICY)
        if self.notices_by:
            # Whether Moko has an issue open there: a repository that complies again gets it closed.
            parts.append(
                f"openNotices: issues(first: {NOTICES_PAGE}, states: [OPEN], "
                f"filterBy: {{createdBy: {json.dumps(self.notices_by)}}}) {{ nodes {{ number title body }} }}"
            )
        return " ".join(parts)


def _batch_part(name: str) -> BatchPart:
    part = KINDS_BY_NAME[name].batch
    assert part is not None, f"{name} has no part of the batched read"
    return part


def snapshot_of(node: Mapping[str, Any], fields: ReadFields) -> RepoState:
    """Turn one GraphQL ``Repository`` node (queried with ``fields.selection()``) into what
    is known of the repository: each kind says what the node tells, given what it asked."""
    asked = dict(fields.parts)
    known = RepoState(empty=bool(node.get("isEmpty")))
    for kind in POLICY_KINDS:
        if kind.batch is not None:
            known = kind.batch.from_node(node, asked.get(kind.name), known)
    owner = (node.get("owner") or {}).get("login") or str(node["nameWithOwner"]).split("/", 1)[0]
    ref = node.get("defaultBranchRef")
    repo = {
        **known.repository,
        "full_name": node["nameWithOwner"],
        "name": node["name"],
        "archived": bool(node.get("isArchived")),
        "default_branch": ref.get("name") if isinstance(ref, Mapping) else None,
        "owner": {"login": owner},
    }
    own_read, own_file = False, None
    if fields.own_policy:
        blob = node.get("ownPolicy")
        own_file = None if blob is None else _own_policy_file(blob)
        # What the blob cannot tell (a binary file) is left to the REST read, which reports it.
        own_read = blob is None or own_file is not None
    open_issues: tuple[OpenIssue, ...] | None = None
    if fields.notices_by and isinstance(node.get("openNotices"), dict):
        open_issues = tuple(
            OpenIssue(int(n["number"]), str(n.get("title") or ""), str(n.get("body") or ""))
            for n in node["openNotices"].get("nodes") or () if n
        )
    return replace(known, repository=repo, own_policy_read=own_read, own_policy=own_file, open_issues=open_issues)


def _own_policy_file(blob: Mapping[str, Any]) -> PolicyFile | None:
    """A repository's own policy file as a GraphQL Blob gives it, or None when the blob cannot
    tell what the contents API would (so that the REST read decides, with the same error)."""
    text, sha = blob.get("text"), blob.get("oid")
    if blob.get("isBinary") or text is None:
        return None
    data = str(text).encode("utf-8", "surrogatepass")
    if blob.get("isTruncated"):
        size = blob.get("byteSize")
        if isinstance(size, int) and size > CONTENT_LIMIT:
            # The contents API gives no content: the file is refused as too large, whatever
            # the cut text holds.
            return too_large(size, sha)
        if len(data) <= MAX_FILE_BYTES:
            return None  # cut short of the file limit: only the whole file can say
        # Cut past the file limit: the loader refuses it at the same line as the whole file.
    return PolicyFile(data, sha)


async def read_owner(gh: GitHub, owner: str, fields: ReadFields) -> AsyncIterator[tuple[int, list[RepoState]]]:
    """Every repository the credentials see in an organization (or user account), in pages of
    100 ordered by name: yields (total count, the page's snapshots). One query per page."""
    schema = await server_schema(gh, QUERIED_TYPES)
    query = _OWNER_QUERY % {"page": PAGE_SIZE, "selection": fields.selection(schema)}
    after: str | None = None
    while True:
        try:
            data = await gh.graphql(query, owner=owner, after=after)
        except QueryError as exc:
            if _only_not_found(exc):
                raise OwnerNotFound(owner) from exc
            raise
        account = data.get("repositoryOwner")
        if account is None:
            raise OwnerNotFound(owner)
        connection = account["repositories"]
        nodes = [n for n in connection["nodes"] or () if n is not None]
        # An account's repositories, not ones it only collaborates on.
        page = [snapshot_of(n, fields) for n in nodes if str(n["nameWithOwner"]).lower().startswith(owner.lower() + "/")]
        yield int(connection["totalCount"]), page
        info = connection["pageInfo"]
        if not info["hasNextPage"]:
            return
        after = info["endCursor"]


async def read_repositories(
    gh: GitHub, full_names: Iterable[str], fields: ReadFields
) -> tuple[list[RepoState], list[str]]:
    """Named repositories (``owner/name``), 100 per query as aliased ``repository`` fields:
    returns the snapshots, and the names GitHub could not resolve."""
    names = list(dict.fromkeys(full_names))
    snapshots: list[RepoState] = []
    missing: list[str] = []
    selection = fields.selection(await server_schema(gh, QUERIED_TYPES))
    for start in range(0, len(names), PAGE_SIZE):
        chunk = names[start : start + PAGE_SIZE]
        aliases = " ".join(
            f"r{i}: repository(owner: {json.dumps(n.split('/', 1)[0])}, name: {json.dumps(n.split('/', 1)[1])})"
            f" {{ {selection} }}"
            for i, n in enumerate(chunk)
        )
        try:
            data = await gh.graphql(f"query MokoRepositories {{ {aliases} }}")
        except QueryError as exc:
            if not _only_not_found(exc):
                raise
            data = exc.response.get("data") or {}
        for i, name in enumerate(chunk):
            node = data.get(f"r{i}")
            if node is None:
                missing.append(name)
            else:
                snapshots.append(snapshot_of(node, fields))
    return snapshots, missing


async def viewer_login(gh: GitHub) -> str:
    """Who the credentials act as (a personal token's user), in one GraphQL query."""
    data = await gh.graphql(_VIEWER_QUERY)
    return str(data["viewer"]["login"])


def _only_not_found(exc: QueryError) -> bool:
    errors = exc.response.get("errors") if isinstance(exc.response, dict) else None
    return bool(errors) and all(isinstance(e, dict) and e.get("type") == "NOT_FOUND" for e in errors)
