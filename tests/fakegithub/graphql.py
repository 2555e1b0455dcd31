"""Validate GraphQL queries against GitHub's schema and answer them from the fake's state."""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLSchema,
    GraphQLUnionType,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    build_ast_schema,
    execute_sync,
    get_named_type,
    parse,
    validate,
)
from graphql.utilities import value_from_ast_untyped

from .state import (
    MERGE_SETTINGS,
    Repo,
    State,
    blob_sha,
    branch_pattern_matches,
    fake_sha,
    grants,
    node_id,
)

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "fixtures" / "github-schema.graphql"
MAX_PAGE = 100
MAX_NODES = 500_000
# GitHub's Blob.text holds at most this many bytes of a file; past them it is cut there and
# isTruncated is true (GitHub does not document the figure; 512,000 bytes is what it does, as
# those whose files it cut have measured). byteSize is still the whole file's.
BLOB_TEXT_LIMIT = 512_000


@lru_cache(maxsize=1)
def _schema_document() -> DocumentNode:
    """GitHub's published SDL, parsed once per process (it takes a few seconds)."""
    return parse(SCHEMA_FILE.read_text(encoding="utf-8"))


def _build(document: DocumentNode) -> GraphQLSchema:
    # GitHub's published SDL defines two EnterpriseOwnerInfo fields twice and marks some
    # interface implementations deprecated where the interface is not; graphql-core rejects
    # both, GitHub's own server does not. Skip the SDL check and accept the schema as valid.
    schema = build_ast_schema(document, assume_valid_sdl=True)
    schema._validation_errors = []  # noqa: SLF001 - graphql-core caches the check here
    for named in schema.type_map.values():
        if isinstance(named, GraphQLInterfaceType | GraphQLUnionType):
            named.resolve_type = _resolve_type
    return schema


@lru_cache(maxsize=1)
def get_schema() -> GraphQLSchema:
    """GitHub's public schema, built once per process."""
    return _build(_schema_document())


Omitted = tuple[tuple[str, tuple[str, ...]], ...]  # (type name, its fields left out), sorted


@lru_cache(maxsize=4)
def older_schema(without: Omitted) -> GraphQLSchema:
    """GitHub's schema without some fields, as an older GitHub Enterprise Server has it."""
    if not without:
        return get_schema()
    leave_out = dict(without)
    definitions = []
    for definition in _schema_document().definitions:
        name = getattr(getattr(definition, "name", None), "value", None)
        if name in leave_out and getattr(definition, "fields", None) is not None:
            kept = tuple(f for f in definition.fields if f.name.value not in leave_out[name])
            missing = set(leave_out[name]) - {f.name.value for f in definition.fields}
            if missing:
                raise ValueError(f"{name} has no fields {sorted(missing)} to leave out")
            definition = definition.__class__(
                **{key: getattr(definition, key) for key in definition.keys if key != "fields"},
                fields=kept,
            )
        definitions.append(definition)
    unknown = set(leave_out) - {getattr(getattr(d, "name", None), "value", None) for d in definitions}
    if unknown:
        raise ValueError(f"no types {sorted(unknown)} in GitHub's schema")
    return _build(DocumentNode(definitions=tuple(definitions)))


def _resolve_type(value: Any, _info: Any, _type: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("__typename")
    return getattr(value, "typename", None)


@lru_cache(maxsize=512)
def parse_and_validate(query: str, without: Omitted = ()) -> tuple[DocumentNode | None, tuple[GraphQLError, ...]]:
    """Parse and validate a query once; the same query text is answered from the cache."""
    try:
        document = parse(query)
    except GraphQLError as error:
        return None, (error,)
    errors = validate(older_schema(without), document)
    return (None, tuple(errors)) if errors else (document, ())


class NotFound(Exception):
    """A GitHub NOT_FOUND error for a field that could not be resolved."""


class Forbidden(Exception):
    """A field the token's permissions do not reach: GitHub answers FORBIDDEN for it, and as
    the field is non-null, the nearest nullable parent (the repository) becomes null."""

    def __init__(self) -> None:
        super().__init__("Resource not accessible by integration")


class BadArgument(Exception):
    """A client error GitHub reports at execution time (e.g. an invalid cursor)."""


@dataclass
class Context:
    """Who is asking (an installation or a personal token) and what the query costs."""

    state: State
    installation_id: int | None
    personal_login: str | None
    rate: dict[str, Any]
    violations: list[str] = field(default_factory=list)
    permissions: dict[str, str] | None = None  # the token's; None for a personal token

    def require(self, permission: str, level: str) -> None:
        if not grants(self.permissions, permission, level):
            raise Forbidden()

    def sees_account(self, login: str) -> bool:
        if self.personal_login is not None:
            return login.lower() in self.state.accounts or login.lower() in self.state.repos
        installation = self.state.installations.get(self.installation_id or -1)
        return installation is not None and installation.login.lower() == login.lower()

    def sees_repo(self, repo: Repo) -> bool:
        if self.personal_login is not None:
            return True
        installation = self.state.installations.get(self.installation_id or -1)
        return (installation is not None and installation.login.lower() == repo.owner.lower()
                and installation.covers(repo.name))


def _cursor(index: int) -> str:
    return base64.b64encode(f"cursor:v2:{index}".encode()).decode()


def _uncursor(cursor: str) -> int:
    try:
        text = base64.b64decode(cursor.encode(), validate=True).decode()
        prefix, _, number = text.rpartition(":")
        if prefix != "cursor:v2":
            raise ValueError(text)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError) as error:
        raise BadArgument(f"`{cursor}` does not appear to be a valid cursor.") from error


def connection(items: list[Any], first: int | None = None, after: str | None = None,
               last: int | None = None, before: str | None = None,
               make: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """A GraphQL connection over items, with GitHub-style opaque cursors.

    `make` turns the items of the requested window (only those) into nodes.
    """
    start = _uncursor(after) + 1 if after else 0
    end = _uncursor(before) if before else len(items)
    start, end = max(0, start), min(len(items), max(end, start))
    window = list(range(start, end))
    has_next = has_previous = False
    if first is not None:
        has_next = len(window) > first or (end < len(items))
        window = window[:first]
    if last is not None:
        has_previous = len(window) > last or start > 0
        window = window[-last:] if last else []
    if first is None and start > 0:
        has_previous = True
    nodes = [make(items[i]) if make else items[i] for i in window]
    edges = [{"cursor": _cursor(i), "node": node} for i, node in zip(window, nodes, strict=True)]
    return {
        "nodes": nodes,
        "edges": edges,
        "totalCount": len(items),
        "pageInfo": {
            "hasNextPage": has_next,
            "hasPreviousPage": has_previous,
            "startCursor": edges[0]["cursor"] if edges else None,
            "endCursor": edges[-1]["cursor"] if edges else None,
        },
    }


class Node:
    """Base of the resolver objects: unknown (but schema-valid) fields resolve to null."""

    typename = "Node"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return None


def _actor(state: State, kind: str, value: dict[str, Any]) -> dict[str, Any]:
    if kind == "users":
        return {"__typename": "User", "login": value["login"], "id": value["node_id"],
                "databaseId": value["id"], "name": None}
    if kind == "teams":
        return {"__typename": "Team", "slug": value["slug"], "name": value["name"],
                "id": value["node_id"], "databaseId": value["id"]}
    return {"__typename": "App", "slug": value["slug"], "name": value["name"],
            "id": value["node_id"], "databaseId": value["id"]}


class RuleNode(Node):
    """A BranchProtectionRule: a branch's own rule (the protection PUT on it) or a wildcard
    rule of the repository, with its pattern."""

    typename = "BranchProtectionRule"

    def __init__(self, repo_node: RepoNode, pattern: str, body: dict[str, Any]) -> None:
        self._repo_node = repo_node
        reviews = body.get("required_pull_request_reviews")
        checks = body.get("required_status_checks")
        number = int(fake_sha(repo_node._repo.data["id"], pattern)[:6], 16)
        given = (checks or {}).get("checks") or []
        if given:
            contexts = [c["context"] for c in given]
            apps = [c.get("app_id") for c in given]
        else:
            contexts = list((checks or {}).get("contexts") or [])
            apps = [None] * len(contexts)
        self.pattern = pattern
        self.id = node_id("BranchProtectionRule", number)
        self.databaseId = number
        self.requiresApprovingReviews = reviews is not None
        self.requiredApprovingReviewCount = (
            int(reviews.get("required_approving_review_count", 1)) if reviews is not None else None)
        self.dismissesStaleReviews = bool((reviews or {}).get("dismiss_stale_reviews"))
        self.requiresCodeOwnerReviews = bool((reviews or {}).get("require_code_owner_reviews"))
        self.requireLastPushApproval = bool((reviews or {}).get("require_last_push_approval"))
        dismissal = (reviews or {}).get("dismissal_restrictions") or {}
        self.restrictsReviewDismissals = any(dismissal.get(k) for k in ("users", "teams", "apps"))
        self.requiresStatusChecks = checks is not None
        self.requiresStrictStatusChecks = bool((checks or {}).get("strict"))
        self.requiredStatusCheckContexts = contexts
        self.requiredStatusChecks = [
            {"context": c, "app": None if app in (None, -1) else {
                "__typename": "App", "databaseId": app, "id": node_id("App", app)}}
            for c, app in zip(contexts, apps, strict=True)]
        self.isAdminEnforced = bool(body.get("enforce_admins"))
        self.restrictsPushes = body.get("restrictions") is not None
        self.requiresLinearHistory = bool(body.get("required_linear_history"))
        self.allowsForcePushes = bool(body.get("allow_force_pushes"))
        self.allowsDeletions = bool(body.get("allow_deletions"))
        self.blocksCreations = bool(body.get("block_creations"))
        self.requiresConversationResolution = bool(body.get("required_conversation_resolution"))
        self.lockBranch = bool(body.get("lock_branch"))
        self.lockAllowsFetchAndMerge = bool(body.get("allow_fork_syncing"))
        self.requiresCommitSignatures = False
        self.requiresDeployments = False
        self.requiredDeploymentEnvironments = []
        self._body = body

    def repository(self, info: Any) -> RepoNode:
        return self._repo_node

    def _allowances(self, spec: dict[str, Any] | None, first: int | None, after: str | None,
                    last: int | None, before: str | None) -> dict[str, Any]:
        state = self._repo_node._state
        org = self._repo_node._repo.owner
        actors: list[dict[str, Any]] = []
        for login in (spec or {}).get("users") or []:
            actors.append({"actor": _actor(state, "users", state.user(login))})
        for slug in (spec or {}).get("teams") or []:
            actors.append({"actor": _actor(state, "teams", state.team(org, slug))})
        for slug in (spec or {}).get("apps") or []:
            actors.append({"actor": _actor(state, "apps", state.app_object(slug))})
        return connection(actors, first, after, last, before)

    def pushAllowances(self, info: Any, first: int | None = None, after: str | None = None,
                       last: int | None = None, before: str | None = None) -> dict[str, Any]:
        return self._allowances(self._body.get("restrictions"), first, after, last, before)

    def reviewDismissalAllowances(self, info: Any, first: int | None = None,
                                  after: str | None = None, last: int | None = None,
                                  before: str | None = None) -> dict[str, Any]:
        reviews = self._body.get("required_pull_request_reviews") or {}
        return self._allowances(reviews.get("dismissal_restrictions"), first, after, last, before)

    def bypassPullRequestAllowances(self, info: Any, first: int | None = None,
                                    after: str | None = None, last: int | None = None,
                                    before: str | None = None) -> dict[str, Any]:
        reviews = self._body.get("required_pull_request_reviews") or {}
        return self._allowances(reviews.get("bypass_pull_request_allowances"), first, after,
                                last, before)

    def bypassForcePushAllowances(self, info: Any, **page: Any) -> dict[str, Any]:
        return connection([], **page)

    def matchingRefs(self, info: Any, **args: Any) -> dict[str, Any]:
        page = {k: args.get(k) for k in ("first", "after", "last", "before")}
        names = sorted(b for b in self._repo_node._repo.branches
                       if branch_pattern_matches(self.pattern, b))
        return connection([self._repo_node._ref(name) for name in names], **page)

    def branchProtectionRuleConflicts(self, info: Any, **page: Any) -> dict[str, Any]:
        return connection([], **page)


# GraphQL Repository field -> REST repository key, for the plain ones.
_REPO_KEYS = {
    "name": "name", "nameWithOwner": "full_name", "databaseId": "id", "id": "node_id",
    "isArchived": "archived", "isDisabled": "disabled", "isPrivate": "private",
    "isFork": "fork", "isTemplate": "is_template", "hasIssuesEnabled": "has_issues",
    "hasWikiEnabled": "has_wiki", "hasProjectsEnabled": "has_projects",
    "hasDiscussionsEnabled": "has_discussions", "deleteBranchOnMerge": "delete_branch_on_merge",
    "mergeCommitAllowed": "allow_merge_commit", "squashMergeAllowed": "allow_squash_merge",
    "rebaseMergeAllowed": "allow_rebase_merge", "allowUpdateBranch": "allow_update_branch",
    "autoMergeAllowed": "allow_auto_merge", "description": "description", "url": "html_url",
    "createdAt": "created_at", "updatedAt": "updated_at", "pushedAt": "pushed_at",
    "forkingAllowed": "allow_forking", "webCommitSignoffRequired": "web_commit_signoff_required",
    "diskUsage": "size", "stargazerCount": "stargazers_count", "forkCount": "forks_count",
    "squashMergeCommitTitle": "squash_merge_commit_title",
    "squashMergeCommitMessage": "squash_merge_commit_message",
    "mergeCommitTitle": "merge_commit_title", "mergeCommitMessage": "merge_commit_message",
    "squashPrTitleUsedAsDefault": "use_squash_pr_title_as_default",
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _graphql_shape(value: Any) -> Any:
    """A REST value with GraphQL's field names (snake_case to camelCase)."""
    if isinstance(value, dict):
        return {_camel(k): _graphql_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_graphql_shape(v) for v in value]
    return value


class RulesetNode(Node):
    """A RepositoryRuleset, from the ruleset as the REST API answers it."""

    typename = "RepositoryRuleset"

    def __init__(self, ruleset: dict[str, Any]) -> None:
        self._ruleset = ruleset
        self.databaseId = ruleset["id"]
        self.id = ruleset["node_id"]
        self.name = ruleset["name"]
        self.target = str(ruleset.get("target", "branch")).upper()
        self.enforcement = str(ruleset["enforcement"]).upper()
        self.createdAt = ruleset["created_at"]
        self.updatedAt = ruleset["updated_at"]
        conditions = ruleset.get("conditions") or {}
        self.conditions = {key: _graphql_shape(conditions[rest]) if conditions.get(rest) is not None else None
                           for key, rest in (("refName", "ref_name"), ("repositoryName", "repository_name"))}
        self.source = {"__typename": "Repository" if ruleset["source_type"] == "Repository" else "Organization"}

    def rules(self, info: Any, first: int | None = None, after: str | None = None,
              last: int | None = None, before: str | None = None, type: str | None = None) -> dict[str, Any]:  # noqa: A002
        items = [r for r in self._ruleset.get("rules") or [] if type is None or r["type"].upper() == type]

        def node(rule: dict[str, Any]) -> dict[str, Any]:
            parameters = rule.get("parameters")
            typename = "".join(p.capitalize() for p in rule["type"].split("_")) + "Parameters"
            shaped = None if parameters is None else {"__typename": typename, **_graphql_shape(parameters)}
            return {"type": rule["type"].upper(), "parameters": shaped, "id": f"RR_{rule['type']}"}

        return connection(items, first, after, last, before, make=node)

    def bypassActors(self, info: Any, first: int | None = None, after: str | None = None,  # noqa: N802
                     last: int | None = None, before: str | None = None) -> dict[str, Any]:
        actors = [{"bypassMode": str(a.get("bypass_mode", "always")).upper(), "deployKey": False,
                   "enterpriseOwner": False, "organizationAdmin": a.get("actor_type") == "OrganizationAdmin",
                   "repositoryRoleDatabaseId": a.get("actor_id") if a.get("actor_type") == "RepositoryRole" else None,
                   "id": f"RRBA_{index}"}
                  for index, a in enumerate(self._ruleset.get("bypass_actors") or [])]
        return connection(actors, first, after, last, before)


def _pull_state(pull: dict[str, Any]) -> str:
    """A pull request's GraphQL state: OPEN, MERGED or CLOSED (closed without a merge)."""
    if pull["state"] == "open":
        return "OPEN"
    return "MERGED" if pull.get("merged") else "CLOSED"


class RepoNode(Node):
    """A Repository, read live from the REST object of the state."""

    typename = "Repository"

    def __init__(self, state: State, repo: Repo) -> None:
        self._state = state
        self._repo = repo

    def __getattr__(self, name: str) -> Any:
        key = _REPO_KEYS.get(name)
        if key in MERGE_SETTINGS:
            # Merge settings need contents: write, as in REST (graphql-core calls this with info).
            def merge_setting(info: Any) -> Any:
                info.context.require("contents", "write")
                return self._repo.data.get(key)

            return merge_setting
        if key is not None:
            return self._repo.data.get(key)
        return super().__getattr__(name)

    @property
    def isEmpty(self) -> bool:  # noqa: N802 - GraphQL field name
        return self._repo.empty

    @property
    def visibility(self) -> str:
        return str(self._repo.data.get("visibility") or "public").upper()

    @property
    def homepageUrl(self) -> str | None:  # noqa: N802
        return self._repo.data.get("homepage") or None

    @property
    def isLocked(self) -> bool:  # noqa: N802
        return False

    @property
    def isMirror(self) -> bool:  # noqa: N802
        return False

    @property
    def isSecurityPolicyEnabled(self) -> bool:  # noqa: N802
        return False

    @property
    def archivedAt(self) -> str | None:  # noqa: N802
        return self._repo.data.get("updated_at") if self._repo.data.get("archived") else None

    @property
    def resourcePath(self) -> str:  # noqa: N802
        return f"/{self._repo.data['full_name']}"

    def owner(self, info: Any) -> dict[str, Any]:
        account = self._repo.data["owner"]
        return {"__typename": account["type"] if account["type"] != "Bot" else "User",
                "login": account["login"], "id": account["node_id"],
                "databaseId": account["id"], "url": account["html_url"]}

    def _ref(self, branch_name: str) -> dict[str, Any] | None:
        branch = self._repo.branches.get(branch_name)
        if branch is None:
            return None
        repo, state = self._repo, self._state

        def compare(info: Any, headRef: str) -> dict[str, Any] | None:  # noqa: N803
            # "Compares the current ref as a base ref to another head ref, if the comparison
            # can be made": a head that is not a branch here cannot be compared (null).
            head = repo.branches.get(headRef.removeprefix("refs/heads/"))
            return None if head is None else state.compare(branch, head)

        def associated_pull_requests(info: Any, first: int | None = None, after: str | None = None,
                                     last: int | None = None, before: str | None = None,
                                     states: list[str] | None = None,
                                     orderBy: dict[str, Any] | None = None,  # noqa: N803
                                     **_ignored: Any) -> dict[str, Any]:
            # "A list of pull requests with this ref as the head ref": this repository's own.
            info.context.require("pull_requests", "read")
            pulls = [p.data for p in repo.pulls.values()
                     if p.data["head"]["ref"] == branch.name
                     and p.data["head"]["repo"]["full_name"] == repo.data["full_name"]]
            if states:
                pulls = [p for p in pulls if _pull_state(p) in states]
            if orderBy:
                key = {"CREATED_AT": "created_at", "UPDATED_AT": "updated_at"}.get(orderBy.get("field"), "created_at")
                pulls.sort(key=lambda p: (p[key], p["number"]), reverse=orderBy.get("direction") == "DESC")
            return connection(pulls, first, after, last, before, make=lambda p: {
                "__typename": "PullRequest", "number": p["number"], "state": _pull_state(p),
                "headRefName": p["head"]["ref"], "headRefOid": p["head"]["sha"],
                "mergedAt": p.get("merged_at"), "url": p["html_url"]})

        def rules(info: Any, first: int | None = None, after: str | None = None,
                  last: int | None = None, before: str | None = None, **_ignored: Any) -> dict[str, Any]:
            # "Branch protection rules that are enforced on this ref": the active rulesets' rules.
            items = state.branch_rules(repo, branch.name)
            return connection(items, first, after, last, before, make=lambda r: {
                "__typename": "RepositoryRule", "type": str(r["type"]).upper(), "parameters": None})

        return {
            "__typename": "Ref", "name": branch.name, "prefix": "refs/heads/",
            "id": node_id("Ref", int(branch.sha[:8], 16)),
            "target": {"__typename": "Commit", "oid": branch.sha, "abbreviatedOid": branch.sha[:7],
                       "id": node_id("Commit", int(branch.sha[:8], 16)),
                       "committedDate": branch.committed_date},
            "branchProtectionRule": self._rule_of(branch.name),
            "repository": self,
            "compare": compare,
            "associatedPullRequests": associated_pull_requests,
            "rules": rules,
        }

    def refs(self, info: Any, refPrefix: str, first: int | None = None,  # noqa: N803
             after: str | None = None, last: int | None = None, before: str | None = None,
             **_ignored: Any) -> dict[str, Any] | None:
        """Branches, in GitHub's default order (alphabetical); this fake has no tags."""
        if refPrefix != "refs/heads/":
            return connection([], first, after, last, before)
        names = sorted(self._repo.branches)
        return connection(names, first, after, last, before, make=self._ref)

    def _rule_of(self, branch_name: str) -> RuleNode | None:
        rule = self._state.classic_rule(self._repo, branch_name)
        return None if rule is None else RuleNode(self, *rule)

    def defaultBranchRef(self, info: Any) -> dict[str, Any] | None:  # noqa: N802
        return self._ref(self._repo.data["default_branch"])

    def ref(self, info: Any, qualifiedName: str) -> dict[str, Any] | None:  # noqa: N803
        return self._ref(qualifiedName.removeprefix("refs/heads/"))

    def branchProtectionRules(self, info: Any, first: int | None = None,  # noqa: N802
                              after: str | None = None, last: int | None = None,
                              before: str | None = None) -> dict[str, Any]:
        info.context.require("administration", "read")
        rules = [RuleNode(self, b.name, b.protection)
                 for b in self._repo.branches.values() if b.protection]
        rules += [RuleNode(self, pattern, body) for pattern, body in self._repo.pattern_rules.items()]
        return connection(rules, first, after, last, before)

    def rulesets(self, info: Any, first: int | None = None, after: str | None = None,
                 last: int | None = None, before: str | None = None, includeParents: bool = True,  # noqa: N803
                 targets: list[str] | None = None) -> dict[str, Any]:
        items = list(self._repo.rulesets.values())
        if includeParents:
            items = self._state.org_rulesets_for(self._repo) + items
        if targets:
            items = [r for r in items if r.get("target", "branch").upper() in targets]
        return connection(items, first, after, last, before, make=RulesetNode)

    def issues(self, info: Any, first: int | None = None, after: str | None = None,
               last: int | None = None, before: str | None = None,
               states: list[str] | None = None, filterBy: dict[str, Any] | None = None,  # noqa: N803
               **_ignored: Any) -> dict[str, Any]:
        """Issues, not pull requests (GraphQL lists those apart), oldest first."""
        info.context.require("issues", "read")
        items = [i for i in self._repo.issues.values() if "pull_request" not in i]
        if states:
            items = [i for i in items if str(i["state"]).upper() in {str(s).upper() for s in states}]
        author = (filterBy or {}).get("createdBy")
        if author:
            items = [i for i in items if str(i["user"]["login"]).lower() == str(author).lower()]
        return connection(items, first, after, last, before, make=lambda i: {
            "number": i["number"], "title": i["title"], "body": i.get("body") or "",
            "state": str(i["state"]).upper(), "url": i["html_url"]})

    def object(self, info: Any, expression: str | None = None,
               oid: str | None = None) -> dict[str, Any] | None:
        if expression is None:
            return None
        ref, _, path = expression.rpartition(":")
        ref = ref or "HEAD"
        branch_name = self._repo.data["default_branch"] if ref == "HEAD" else ref
        branch_name = branch_name.removeprefix("refs/heads/")
        if branch_name not in self._repo.branches:
            return None
        files = self._repo.files
        if path in files:
            data = files[path]
            try:
                data.decode("utf-8")
                # Past BLOB_TEXT_LIMIT GitHub gives the text cut there, and says so; a cut in
                # the middle of a character leaves that character out.
                text: str | None = data[:BLOB_TEXT_LIMIT].decode("utf-8", "ignore")
            except UnicodeDecodeError:
                text = None
            return {"__typename": "Blob", "text": text, "byteSize": len(data),
                    "isBinary": text is None, "isTruncated": len(data) > BLOB_TEXT_LIMIT,
                    "oid": _blob_oid(data), "abbreviatedOid": _blob_oid(data)[:7]}
        listing = self._state.directory_listing(self._repo, path, branch_name) if path else None
        if listing:
            return {"__typename": "Tree", "oid": node_id("Tree", len(listing)),
                    "entries": [{"name": e["name"], "path": e["path"],
                                 "type": "tree" if e["type"] == "dir" else "blob"}
                                for e in listing]}
        return None


def _blob_oid(data: bytes) -> str:
    return blob_sha(data)


_ORDER_KEYS = {
    "NAME": lambda r: r.name.lower(),
    "CREATED_AT": lambda r: (r.data["created_at"], r.serial),
    "UPDATED_AT": lambda r: (r.data["updated_at"], r.serial),
    "PUSHED_AT": lambda r: (r.data.get("pushed_at") or "", r.serial),
    "STARGAZERS": lambda r: (r.data.get("stargazers_count") or 0, r.serial),
}


class OrgNode(Node):
    """An Organization (or a User account, answered with the same resolver)."""

    def __init__(self, state: State, login: str, typename: str = "Organization") -> None:
        self._state = state
        account = state.user(login)
        self.typename = typename
        self.login = account["login"]
        self.id = account["node_id"]
        self.databaseId = account["id"]
        self.name = account["login"]
        self.url = account["html_url"]
        self.resourcePath = f"/{account['login']}"

    def repositories(self, info: Any, first: int | None = None, after: str | None = None,
                     last: int | None = None, before: str | None = None,
                     orderBy: dict[str, str] | None = None,  # noqa: N803
                     isArchived: bool | None = None, isFork: bool | None = None,  # noqa: N803
                     privacy: str | None = None, visibility: str | None = None,
                     hasIssuesEnabled: bool | None = None, isLocked: bool | None = None,  # noqa: N803
                     **_ignored: Any) -> dict[str, Any]:
        ctx: Context = info.context
        repos = self._state.repos_of(self.login)
        if ctx.personal_login is None:
            installation = self._state.installations.get(ctx.installation_id or -1)
            if installation is None or installation.login.lower() != self.login.lower():
                repos = []
            elif installation.selected is not None:
                repos = [r for r in repos if r.name.lower() in installation.selected]
        if isArchived is not None:
            repos = [r for r in repos if bool(r.data.get("archived")) == isArchived]
        if isFork is not None:
            repos = [r for r in repos if bool(r.data.get("fork")) == isFork]
        if privacy is not None:
            repos = [r for r in repos if bool(r.data.get("private")) == (privacy == "PRIVATE")]
        if visibility is not None:
            repos = [r for r in repos if str(r.data.get("visibility")).upper() == visibility]
        if hasIssuesEnabled is not None:
            repos = [r for r in repos if bool(r.data.get("has_issues")) == hasIssuesEnabled]
        if orderBy:
            repos.sort(key=_ORDER_KEYS[orderBy["field"]],
                       reverse=orderBy.get("direction") == "DESC")
        else:
            repos.sort(key=lambda r: r.serial)
        state = self._state
        return connection(repos, first, after, last, before,
                          make=lambda repo: RepoNode(state, repo))

    def repository(self, info: Any, name: str, **_ignored: Any) -> RepoNode | None:
        repo = self._state.find_repo(self.login, name)
        if repo is None or not info.context.sees_repo(repo):
            return None
        return RepoNode(self._state, repo)


class Root:
    """The Query root."""

    def __init__(self, state: State) -> None:
        self._state = state

    def organization(self, info: Any, login: str) -> OrgNode:
        ctx: Context = info.context
        installation = self._state.accounts.get(login.lower())
        if (installation is None or installation.account["type"] != "Organization"
                or not ctx.sees_account(login)):
            raise NotFound(f"Could not resolve to an Organization with the login of '{login}'.")
        return OrgNode(self._state, login)

    def repositoryOwner(self, info: Any, login: str) -> OrgNode | None:  # noqa: N802
        if login.lower() not in self._state.accounts or not info.context.sees_account(login):
            return None
        account = self._state.accounts[login.lower()].account
        return OrgNode(self._state, login, account["type"])

    def user(self, info: Any, login: str) -> OrgNode | None:
        installation = self._state.accounts.get(login.lower())
        if installation is None or installation.account["type"] != "User":
            return None
        return OrgNode(self._state, login, "User")

    def repository(self, info: Any, owner: str, name: str,
                   followRenames: bool = True) -> RepoNode:  # noqa: N803
        repo = self._state.find_repo(owner, name)
        if repo is None or not info.context.sees_repo(repo):
            raise NotFound(f"Could not resolve to a Repository with the name '{owner}/{name}'.")
        return RepoNode(self._state, repo)

    def rateLimit(self, info: Any, dryRun: bool = False) -> dict[str, Any]:  # noqa: N802, N803
        return dict(info.context.rate)

    def viewer(self, info: Any) -> dict[str, Any]:
        ctx: Context = info.context
        login = ctx.personal_login or self._state.app["slug"] + "[bot]"
        user = self._state.user(login)
        return {"__typename": "User", "login": login, "id": user["node_id"],
                "databaseId": user["id"], "url": user["html_url"]}


@dataclass
class Analysis:
    """GitHub's static checks of a query: cost (in points), node count and errors."""

    cost: int
    node_count: int
    errors: list[dict[str, Any]]


def analyze(document: DocumentNode, operation_name: str | None,
            variables: dict[str, Any] | None, schema: GraphQLSchema | None = None) -> Analysis:
    """Apply GitHub's pagination rules and compute the query's rate-limit cost."""
    schema = schema or get_schema()
    fragments = {d.name.value: d for d in document.definitions
                 if isinstance(d, FragmentDefinitionNode)}
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    operation = next((o for o in operations
                      if operation_name is None or (o.name and o.name.value == operation_name)),
                     None)
    errors: list[dict[str, Any]] = []
    totals = {"requests": 0, "nodes": 0}
    if operation is None:
        return Analysis(1, 0, [{"message": f"No operation named \"{operation_name}\""}])
    root = schema.get_root_type(operation.operation)

    def arg(node: FieldNode, name: str) -> Any:
        for argument in node.arguments or ():
            if argument.name.value == name:
                return value_from_ast_untyped(argument.value, variables or {})
        return None

    def walk(selection_set: SelectionSetNode, parent: Any, multiplier: int,
             path: list[str], seen: frozenset[str]) -> None:
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                name = selection.name.value
                fields = getattr(parent, "fields", None)
                if name.startswith("__") or not fields or name not in fields:
                    continue
                definition = fields[name]
                named = get_named_type(definition.type)
                key = selection.alias.value if selection.alias else name
                child = multiplier
                if named.name.endswith("Connection") and (
                        "first" in definition.args or "last" in definition.args):
                    first, last = arg(selection, "first"), arg(selection, "last")
                    where = {"path": [*path, key],
                             "locations": [{"line": selection.loc.start_token.line,
                                            "column": selection.loc.start_token.column}]
                             if selection.loc else []}
                    if first is None and last is None:
                        errors.append({"type": "MISSING_PAGINATION_BOUNDARIES", **where,
                                       "message": "You must provide a `first` or `last` value "
                                       f"to properly paginate the `{name}` connection."})
                        size = MAX_PAGE
                    else:
                        size = int(first if first is not None else last)
                        which = "first" if first is not None else "last"
                        if size > MAX_PAGE or size < 0:
                            errors.append({"type": "EXCESSIVE_PAGINATION", **where,
                                           "message": f"Requesting {size} records on the "
                                           f"`{name}` connection exceeds the `{which}` limit "
                                           f"of {MAX_PAGE} records."})
                    totals["requests"] += multiplier
                    child = multiplier * max(size, 1)
                    totals["nodes"] += multiplier * size
                if selection.selection_set:
                    walk(selection.selection_set, named, child, [*path, key], seen)
            elif isinstance(selection, InlineFragmentNode):
                target = (schema.get_type(selection.type_condition.name.value)
                          if selection.type_condition else parent)
                walk(selection.selection_set, target, multiplier, path, seen)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = fragments.get(name)
                if fragment is None or name in seen:
                    continue
                target = schema.get_type(fragment.type_condition.name.value)
                walk(fragment.selection_set, target, multiplier, path, seen | {name})

    walk(operation.selection_set, root, 1, [operation.operation.value], frozenset())
    if totals["nodes"] > MAX_NODES:
        errors.append({"type": "MAX_NODE_LIMIT_EXCEEDED",
                       "message": f"This query requests up to {totals['nodes']:,} possible "
                       f"nodes which exceeds the maximum limit of {MAX_NODES:,}."})
    cost = max(1, math.floor(totals["requests"] / 100 + 0.5))
    return Analysis(cost, totals["nodes"], errors)


_UNDEFINED_FIELD = re.compile(r"Cannot query field '(\w+)' on type '(\w+)'")


def format_error(error: GraphQLError) -> dict[str, Any]:
    """A GraphQL error as GitHub shows it (NOT_FOUND errors carry a `type`; a field the
    schema lacks is GitHub's `undefinedField`)."""
    out = dict(error.formatted)
    undefined = _UNDEFINED_FIELD.match(error.message)
    if undefined:
        field_name, type_name = undefined.groups()
        out["message"] = f"Field '{field_name}' doesn't exist on type '{type_name}'"
        out["extensions"] = {"code": "undefinedField", "typeName": type_name,
                             "fieldName": field_name}
    original = error.original_error
    if isinstance(original, NotFound):
        out["type"] = "NOT_FOUND"
    elif isinstance(original, Forbidden):
        out["type"] = "FORBIDDEN"
    elif isinstance(original, BadArgument):
        out["type"] = "INVALID_CURSOR_ARGUMENTS"
    return out


@dataclass
class Outcome:
    """The answer to one GraphQL POST and what it says about the request."""

    body: dict[str, Any]
    violations: list[str]
    cost: int


def run(state: State, payload: Any, *, installation_id: int | None,
        personal_login: str | None, rate: dict[str, Any], without: Omitted = (),
        permissions: dict[str, str] | None = None) -> Outcome:
    """Check and execute one GraphQL request body (`{"query", "variables", "operationName"}`)
    against GitHub's schema, or an older one lacking the fields ``without`` names, for a token
    with ``permissions`` (None: a personal token)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        message = "A query attribute must be specified and must be a string."
        return Outcome({"errors": [{"message": message}]}, [f"GraphQL: {message}"], 0)
    extra = set(payload) - {"query", "variables", "operationName"}
    if extra:
        message = f"Unexpected keys in the GraphQL request body: {sorted(extra)}"
        return Outcome({"errors": [{"message": message}]}, [f"GraphQL: {message}"], 0)
    query: str = payload["query"]
    variables = payload.get("variables")
    if variables is not None and not isinstance(variables, dict):
        message = "Variables are invalid JSON."
        return Outcome({"errors": [{"message": message}]}, [f"GraphQL: {message}"], 0)
    operation_name = payload.get("operationName")
    document, errors = parse_and_validate(query, without)
    if document is None:
        body = {"errors": [format_error(e) for e in errors]}
        return Outcome(body, [f"GraphQL: {e['message']}" for e in body["errors"]], 0)
    schema = older_schema(without)
    analysis = analyze(document, operation_name, variables, schema)
    if analysis.errors:
        return Outcome({"errors": analysis.errors},
                       [f"GraphQL: {e['message']}" for e in analysis.errors], 0)
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    chosen = next((o for o in operations if operation_name is None
                   or (o.name and o.name.value == operation_name)), None)
    if chosen is not None and chosen.operation != OperationType.QUERY:
        message = f"The fake GitHub does not implement GraphQL {chosen.operation.value}s."
        return Outcome({"errors": [{"message": message}]}, [f"GraphQL: {message}"], 0)
    remaining = max(0, int(rate["remaining"]) - analysis.cost)
    ctx = Context(state, installation_id, personal_login, rate={
        "cost": analysis.cost, "limit": rate["limit"], "nodeCount": analysis.node_count,
        "remaining": remaining, "used": rate["limit"] - remaining, "resetAt": rate["resetAt"],
    }, permissions=permissions)
    result = execute_sync(schema, document, root_value=Root(state), context_value=ctx,
                          variable_values=variables, operation_name=operation_name)
    body: dict[str, Any] = {}
    violations = list(ctx.violations)
    if result.errors:
        body["errors"] = [format_error(e) for e in result.errors]
        for error in result.errors:
            if not isinstance(error.original_error, NotFound):
                violations.append(f"GraphQL: {error.message}")
    body["data"] = result.data
    return Outcome(body, violations, analysis.cost)
