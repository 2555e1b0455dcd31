"""The fake GitHub server: aiohttp app, auth, rate limits, fault injection, call log, public API."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import random
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import graphql as gql
from . import rest
from .hook_deliveries import HookDeliveries, HookDelivery, deliver
from .manifests import FORM_PATH, ManifestFlow, form_page
from .openapi import OpenAPIValidator, default_validator
from .replies import HTTPError, Reply
from .state import (
    APP_PERMISSIONS,
    CUSTOM_ROLE_BASES,
    HTML,
    LEGACY_PERMISSION,
    ROLES,
    Installation,
    State,
    iso,
    node_id,
)
from .webhooks import build_event

REST_DOCS = "https://docs.github.com/rest"
JWT_OPERATIONS = {
    "apps/get-authenticated", "apps/list-installations", "apps/get-installation",
    "apps/create-installation-access-token", "apps/get-org-installation",
    "apps/get-repo-installation", "apps/get-user-installation",
    "apps/get-webhook-config-for-app", "apps/list-webhook-deliveries",
    "apps/redeliver-webhook-delivery",
}
FREE_OPERATIONS = {"rate-limit/get"}  # GitHub does not charge /rate_limit
# The manifest flow's code is the credential: the conversion takes no token at all.
UNAUTHENTICATED_OPERATIONS = {"apps/create-from-manifest"}
IDEMPOTENT = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}


@dataclass(frozen=True)
class Call:
    """One request the fake received, and the status it answered (0: connection dropped)."""

    method: str
    path: str
    query: dict[str, Any]
    headers: dict[str, str]
    body: Any
    status: int
    graphql_query: str | None = None
    graphql_variables: dict[str, Any] | None = None
    installation_id: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    """An injected failure for the next `times` requests matching method and path."""

    method: str
    path: re.Pattern[str]
    status: int | None
    times: int
    headers: dict[str, str]
    body: Any
    reset_connection: bool
    delay: float
    after_effect: bool = False  # the request takes effect first; the fault hits its answer
    retry_owed: int = 0  # transparent client retries still to drop for the last reset

    def matches(self, method: str, path: str) -> bool:
        return ((self.times > 0 or self.retry_owed > 0) and self.method in ("*", method)
                and self.path.search(path) is not None)

    def consume(self, method: str, transparent_retries: int) -> None:
        """Count one matching request against `times`.

        aiohttp's client silently resends an idempotent request once when the connection
        drops; so that the client really sees `times` connection errors, a reset of an
        idempotent request also drops that immediate resend without counting it.
        """
        if self.reset_connection and self.retry_owed > 0:
            self.retry_owed -= 1
            return
        self.times -= 1
        if self.reset_connection and method in IDEMPOTENT:
            self.retry_owed = transparent_retries


@dataclass
class RandomFaults:
    """Faults drawn at random for every request (see FakeGitHub.random_faults)."""

    server_error: float  # 500 or 502
    reset: float  # the connection dropped unanswered
    secondary_limit: float  # 403 with retry-after
    delay: float  # answered late
    delay_seconds: float
    retry_after: int
    after_effect: float  # share of server errors and resets that hit after the work was done
    rng: random.Random
    drawn: dict[str, int] = field(default_factory=dict)

    def draw(self, method: str, path: str) -> Fault | None:
        roll = self.rng.random()
        after = self.rng.random() < self.after_effect
        any_path = re.compile("")
        kind, fault = "", None
        if roll < self.server_error:
            kind = "server_error"
            fault = Fault(method, any_path, self.rng.choice((500, 502)), 1, {}, None, False, 0.0, after)
        elif roll < self.server_error + self.reset:
            kind = "reset"
            fault = Fault(method, any_path, None, 1, {}, None, True, 0.0, after)
        elif roll < self.server_error + self.reset + self.secondary_limit:
            kind = "secondary_limit"
            body = {"message": "You have exceeded a secondary rate limit. Please wait a few minutes "
                    "before you try again.", "documentation_url": "https://docs.github.com/rest/"
                    "using-the-rest-api/rate-limits-for-the-rest-api#about-secondary-rate-limits"}
            fault = Fault(method, any_path, 403, 1, {"retry-after": str(self.retry_after)}, body,
                          False, 0.0)
        elif roll < self.server_error + self.reset + self.secondary_limit + self.delay:
            kind = "delay"
            fault = Fault(method, any_path, None, 1, {}, None, False, self.delay_seconds)
        if fault is not None:
            key = f"{kind}_after_effect" if fault.after_effect else kind
            self.drawn[key] = self.drawn.get(key, 0) + 1
        return fault


@dataclass
class Bucket:
    """A primary rate-limit budget."""

    limit: int
    remaining: int
    reset: float
    resource: str

    def refresh(self) -> None:
        now = time.time()
        if now >= self.reset:
            self.remaining = self.limit
            self.reset = now + 3600


@dataclass
class Token:
    """An installation access token the fake issued."""

    token: str
    installation_id: int
    expires_at: float
    permissions: dict[str, str]
    repositories: set[str] | None = None  # lower-case names when restricted


@dataclass
class Auth:
    """Who sent a request."""

    kind: str  # "app", "installation", "personal", "none", "bad-jwt" or "bad-token"
    installation_id: int | None = None
    login: str | None = None
    token: Token | None = None
    error: str | None = None


@lru_cache(maxsize=1)
def _key_pair() -> tuple[str, Any]:
    """One RSA key pair per process (generating one per test would be slow)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return pem, key.public_key()


def _etag(payload: bytes) -> str:
    return f'W/"{hashlib.sha256(payload).hexdigest()[:40]}"'


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    wanted = etag.removeprefix("W/")
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


class FakeGitHub:
    """A strict, stateful GitHub (REST + GraphQL) on 127.0.0.1 for Moko's tests."""

    def __init__(self, *, app_id: int = 4242, app_slug: str = "moko",
                 validator: OpenAPIValidator | None = None) -> None:
        self.app_id = app_id
        self.app_slug = app_slug
        self.bot_login = f"{app_slug}[bot]"
        self.private_key_pem, self._public_key = _key_pair()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.graphql_url = f"{self.url}/graphql"
        self.validator = validator or default_validator()
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.tokens_issued = 0
        self.token_lifetime: float = 3600.0
        self.rate_limit_default = 5000
        self.transparent_retries = 1  # aiohttp resends a dropped idempotent request once
        # GraphQL queries of one installation answered at once: now, and the most ever seen.
        self.graphql_latency = 0.0  # seconds each GraphQL answer takes (a slow GitHub)
        self.graphql_in_flight: dict[int, int] = {}
        self.graphql_overlap: dict[int, int] = {}
        self._tokens: dict[str, Token] = {}
        self._personal: dict[str, str] = {}
        self._buckets: dict[tuple[Any, ...], Bucket] = {}
        self._faults: list[Fault] = []
        self._random_faults: RandomFaults | None = None
        self._hooks: list[Callable[[Call], Any]] = []
        self._arrived: list[tuple[str, str]] = []  # (method, path) of every request, on arrival
        self._runner: web.AppRunner | None = None
        self.manifest_flow = ManifestFlow()
        # Every attempt to deliver an event to hook_config's URL, as GET /app/hook/deliveries lists them.
        self.hook_deliveries = HookDeliveries(self)
        # The App's webhook configuration (GET /app/hook/config); the secret is write-only there.
        self.hook_config: dict[str, Any] = {"url": "https://moko.example.com/api/github/webhooks",
                                             "content_type": "json", "insecure_ssl": "0",
                                             "secret": "It's a Secret to Everybody"}
        created = "2024-01-01T00:00:00Z"
        self.app: dict[str, Any] = {
            "id": app_id, "slug": app_slug, "node_id": node_id("Integration", app_id),
            "client_id": f"Iv1.{app_id:016x}", "owner": None, "name": app_slug.capitalize(),
            "description": "Keeps every repository in line with the organization's policy.",
            "external_url": "https://example.com/moko", "html_url": f"{HTML}/apps/{app_slug}",
            "created_at": created, "updated_at": created,
            # app.yml's default_permissions: what an installation is granted unless a test
            # says otherwise (add_installation(..., permissions=...)).
            "permissions": dict(APP_PERMISSIONS),
            "events": ["branch_protection_rule", "create", "issue_comment", "pull_request", "push",
                       "repository", "repository_ruleset"],
        }
        self.state = State(self.url, self.app)
        self._schema_without: gql.Omitted = ()
        self.app["owner"] = self.state.user("moko-dev", "Organization")

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.SockSite(self._runner, self._socket)
        await site.start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._socket.close()

    async def __aenter__(self) -> FakeGitHub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- state set-up ------------------------------------------------------------------------
    def add_installation(self, installation_id: int, account: str, *,
                         account_type: str = "Organization",
                         repositories: list[str] | None = None,
                         permissions: dict[str, str] | None = None) -> dict[str, Any]:
        """Install the App on an account (all repositories, or only the named ones);
        `permissions` are granted on top of the App's own, which are app.yml's (tokens issued
        later carry them)."""
        installation = self.state.add_installation(installation_id, account, account_type,
                                                   repositories)
        installation.permissions.update(permissions or {})
        return self.state.installation_object(installation)

    def remove_installation(self, installation_id: int) -> None:
        """Uninstall the App from an account: it is no longer listed, its tokens stop working
        and no new one is issued (its repositories stay, as on GitHub)."""
        self.state.installations.pop(installation_id)
        for token, held in list(self._tokens.items()):
            if held.installation_id == installation_id:
                del self._tokens[token]

    def add_repo(self, owner: str, name: str, *, empty: bool = False,
                 default_branch: str = "main", **fields: Any) -> dict[str, Any]:
        """Create a repository in an installation account; fields override its settings."""
        return self.state.add_repo(owner, name, empty=empty, default_branch=default_branch,
                                   fields=fields).data

    def repo(self, owner: str, name: str) -> dict[str, Any]:
        """The live REST object of a repository (mutate it to simulate drift)."""
        return self.state.get_repo(owner, name).data

    def add_branch(self, owner: str, repo: str, branch: str, *, committed: str | None = None,
                   commits: int = 1) -> str:
        """Create a branch (the first one makes an empty repository non-empty) from the default
        branch's head, with `commits` commits of its own (0: it is the default branch's head),
        the last one dated `committed` (ISO 8601; now by default). Returns its head SHA."""
        return self.state.push(self.state.get_repo(owner, repo), branch, committed_date=committed,
                               commits=commits).sha

    def push(self, owner: str, repo: str, branch: str, *, committed: str | None = None) -> str:
        """A new commit on an existing branch; returns its SHA."""
        return self.state.push(self.state.get_repo(owner, repo), branch, committed_date=committed).sha

    def merge_branch(self, owner: str, repo: str, branch: str) -> None:
        """Merge a branch into the default branch (a merge commit): the default branch then
        holds the branch's head."""
        self.state.merge(self.state.get_repo(owner, repo), branch)

    def branches(self, owner: str, repo: str) -> dict[str, str]:
        """Branch name -> head SHA."""
        return {b.name: b.sha for b in self.state.get_repo(owner, repo).branches.values()}

    def add_branch_pull_request(self, owner: str, repo: str, branch: str, *,
                                state: str = "open") -> dict[str, Any]:
        """A pull request from a branch of the repository into its default branch, with the
        branch's head as its head: `open`, `merged` (closed, merged at that head) or `closed`."""
        base = self.state.get_repo(owner, repo)
        pull = self.state.add_pull_request(base, changes={}, user="octocat", title=f"Work on {branch}",
                                           head_repo=base.data, head_ref=branch)
        pull.data["head"]["sha"] = base.branches[branch].sha
        if state != "open":
            merged = state == "merged"
            pull.data.update({"state": "closed", "closed_at": pull.data["updated_at"], "merged": merged,
                              "merged_at": pull.data["updated_at"] if merged else None})
            base.issues[pull.data["number"]]["state"] = "closed"
        return pull.data

    def set_protection(self, owner: str, repo: str, branch: str,
                       body: dict[str, Any] | None) -> None:
        """Protect a branch as a PUT with `body` would (None removes the protection)."""
        target = self.state.get_repo(owner, repo).branches.get(branch)
        if target is None:
            raise KeyError(f"no branch {branch} in {owner}/{repo}")
        target.protection = json.loads(json.dumps(body)) if body is not None else None

    def add_protection_rule(self, owner: str, repo: str, pattern: str,
                            body: dict[str, Any]) -> None:
        """A classic rule with a wildcard pattern (`main*`, `release/*`), as made in GitHub's
        settings or with GraphQL: it protects every branch it matches that has no rule of
        its own (a PUT on such a branch creates the branch's own, exact rule)."""
        if not any(ch in pattern for ch in "*?["):
            raise ValueError("a pattern without a wildcard is a branch's own rule: use set_protection")
        self.state.get_repo(owner, repo).pattern_rules[pattern] = json.loads(json.dumps(body))

    def protection_rules(self, owner: str, repo: str) -> dict[str, dict[str, Any]]:
        """Every classic rule of a repository: pattern -> PUT-shape body (exact ones too)."""
        state_repo = self.state.get_repo(owner, repo)
        rules = {b.name: b.protection for b in state_repo.branches.values() if b.protection}
        return {**rules, **state_repo.pattern_rules}

    def add_ruleset(self, owner: str, repo: str, body: dict[str, Any]) -> dict[str, Any]:
        """A repository ruleset, as `POST /repos/{owner}/{repo}/rulesets` with `body` makes it."""
        state_repo = self.state.get_repo(owner, repo)
        ruleset = self.state.new_ruleset(
            json.loads(json.dumps(body)), source_type="Repository",
            source=state_repo.data["full_name"], api=state_repo.data["url"],
            html=state_repo.data["html_url"])
        state_repo.rulesets[ruleset["id"]] = ruleset
        return ruleset

    def add_org_ruleset(self, org: str, body: dict[str, Any]) -> dict[str, Any]:
        """An organization ruleset (`conditions` may hold `repository_name` and `ref_name`)."""
        login = self.state.accounts[org.lower()].login
        ruleset = self.state.new_ruleset(
            json.loads(json.dumps(body)), source_type="Organization", source=login,
            api=f"{self.url}/orgs/{login}", html=f"{HTML}/organizations/{login}/settings")
        self.state.org_rulesets.setdefault(org.lower(), {})[ruleset["id"]] = ruleset
        return ruleset

    def protection(self, owner: str, repo: str, branch: str) -> dict[str, Any] | None:
        """The protection of a branch as last written (PUT shape), or None."""
        target = self.state.get_repo(owner, repo).branches.get(branch)
        return None if target is None else target.protection

    def protection_read(self, owner: str, repo: str, branch: str) -> dict[str, Any] | None:
        """The protection of a branch in GitHub's read (GET) shape, or None."""
        state_repo = self.state.get_repo(owner, repo)
        rule = self.state.classic_rule(state_repo, branch)
        if branch not in state_repo.branches or rule is None:
            return None
        return self.state.protection_read(state_repo, branch, rule[1])

    def put_file(self, owner: str, repo: str, path: str, content: str | bytes) -> None:
        """Commit a file (on every branch; an empty repository gets its default branch)."""
        state_repo = self.state.get_repo(owner, repo)
        state_repo.files[path.strip("/")] = content.encode() if isinstance(content, str) else content
        self.state.push(state_repo)

    def delete_file(self, owner: str, repo: str, path: str) -> None:
        state_repo = self.state.get_repo(owner, repo)
        state_repo.files.pop(path.strip("/"), None)
        self.state.push(state_repo)

    def set_permission(self, owner: str, repo: str, username: str, role: str, *,
                       base_role: str | None = None) -> None:
        """Give a user a role on a repository: admin, maintain, write, triage, read or none, or
        an organization's custom repository role (created with `base_role` on first use)."""
        state_repo = self.state.get_repo(owner, repo)
        if role not in ROLES:
            if base_role not in CUSTOM_ROLE_BASES:
                raise ValueError(f"a custom role needs base_role, one of {CUSTOM_ROLE_BASES}")
            if state_repo.data["owner"]["type"] != "Organization":
                raise ValueError("custom repository roles exist only in organizations")
            self.state.custom_role(state_repo.owner, role, base_role)
        state_repo.permissions[username.lower()] = role
        self.state.user(username)

    def add_issue(self, owner: str, repo: str, title: str = "An issue", *,
                  body: str | None = None, user: str = "octocat",
                  number: int | None = None) -> dict[str, Any]:
        """Open an issue (GitHub's REST issue object)."""
        return self.state.add_issue(self.state.get_repo(owner, repo), title, body=body,
                                    user=user, number=number)

    def add_comment(self, owner: str, repo: str, issue_number: int, body: str, *,
                    user: str = "octocat") -> dict[str, Any]:
        """Post a comment as `user` (opening the issue first when it does not exist)."""
        state_repo = self.state.get_repo(owner, repo)
        if issue_number not in state_repo.issues:
            self.state.add_issue(state_repo, f"Issue {issue_number}", user=user,
                                 number=issue_number)
        return self.state.add_comment(state_repo, issue_number, body, user)

    def comments(self, owner: str, repo: str, issue_number: int) -> list[dict[str, Any]]:
        key = (owner.lower(), repo.lower(), issue_number)
        return [c for cid, c in self.state.comments.items() if self.state.comment_home[cid] == key]

    def reactions(self, comment_id: int) -> list[dict[str, Any]]:
        return list(self.state.reactions.get(comment_id, []))

    def issues(self, owner: str, repo: str) -> list[dict[str, Any]]:
        return list(self.state.get_repo(owner, repo).issues.values())

    def check_runs(self, owner: str, repo: str) -> list[dict[str, Any]]:
        return list(self.state.get_repo(owner, repo).check_runs.values())

    def check_run_annotations(self, owner: str, repo: str, check_run_id: int) -> list[dict[str, Any]]:
        """Every annotation sent for a check run (its create and updates), in order."""
        return list(self.state.get_repo(owner, repo).annotations.get(check_run_id, []))

    def add_pull_request(self, owner: str, repo: str, changes: dict[str, str | bytes | None], *,
                         user: str = "octocat", fork: bool = False, title: str = "Change the policy",
                         head_ref: str = "change-policy") -> dict[str, Any]:
        """Open a pull request into the default branch whose head commit changes files of it
        (path -> new content, None: removed). With `fork`, the head is in `user`'s fork, an
        account the App is not installed on; its head commit is still served by the base
        repository at its SHA, as GitHub serves refs/pull/N/head."""
        base = self.state.get_repo(owner, repo)
        head_repo = self.state.fork_of(base, user) if fork else base.data
        encoded = {path: content.encode() if isinstance(content, str) else content
                   for path, content in changes.items()}
        return self.state.add_pull_request(base, changes=encoded, user=user, title=title,
                                           head_repo=head_repo, head_ref=head_ref).data

    def push_to_pull_request(self, owner: str, repo: str, number: int,
                             changes: dict[str, str | bytes | None]) -> dict[str, Any]:
        """A new head commit on the pull request changing files of its head (None: removed)
        among those it already changes; returns the pull request."""
        encoded = {path: content.encode() if isinstance(content, str) else content
                   for path, content in changes.items()}
        self.state.push_to_pull_request(self.state.get_repo(owner, repo), number, encoded)
        return self.pull_request(owner, repo, number)

    def pull_request(self, owner: str, repo: str, number: int) -> dict[str, Any]:
        return self.state.get_repo(owner, repo).pulls[number].data

    def rulesets(self, owner: str, repo: str) -> list[dict[str, Any]]:
        return list(self.state.get_repo(owner, repo).rulesets.values())

    def event(self, event: str, action: str | None = None, *, owner: str,
              repo: str | None = None, sender: str = "octocat", **overrides: Any) -> dict[str, Any]:
        """A webhook payload built from the live state (issue_comment also posts the comment)."""
        installation = self.state.accounts[owner.lower()]
        kwargs: dict[str, Any] = {"owner": installation.login, "installation_id": installation.id,
                                  "owner_type": installation.account["type"], "sender": sender}
        if repo is not None:
            kwargs["repository"] = self.repo(owner, repo)
        if event == "issue_comment" and repo is not None and "comment" not in overrides:
            number = overrides.pop("issue_number", 1)
            body = overrides.pop("body", "/moko help")
            user = overrides.pop("user", sender)
            comment = self.add_comment(owner, repo, number, body, user=user)
            overrides["comment"] = comment
            overrides["issue"] = self.state.get_repo(owner, repo).issues[number]
        if event in ("installation", "installation_repositories"):
            overrides.setdefault("installation", self.state.installation_object(installation))
        if event == "pull_request" and repo is not None and "pull_request" not in overrides:
            overrides["pull_request"] = self.pull_request(owner, repo, overrides.pop("number", 1))
        return build_event(event, action, **kwargs, **overrides)

    async def deliver(self, event: str, payload: dict[str, Any], *, guid: str | None = None,
                      delivered_at: float | None = None,
                      recorded_as: tuple[str, int] | None = None) -> HookDelivery:
        """Send a webhook to `hook_config["url"]` as GitHub does (signed with its secret) and
        record the delivery: "OK" for a 2xx answer, else why it failed ("failed to connect to
        host" when nothing listens). `delivered_at` (epoch seconds) dates the record;
        `recorded_as=(status, status_code)` records another outcome than the real one (a
        receiver that answered after GitHub stopped waiting)."""
        return await deliver(self, event, payload, guid=guid, delivered_at=delivered_at,
                             recorded_as=recorded_as)

    async def redeliveries_settled(self) -> None:
        """Wait until every redelivery asked for so far has been attempted and recorded."""
        await self.hook_deliveries.settled()

    def serve_schema(self, *, without_fields: dict[str, list[str]] | None = None) -> None:
        """Serve an older GraphQL schema, as an older GitHub Enterprise Server does: the
        fields named (per type) do not exist. Introspection answers without them, and a
        query naming one fails whole (errors, no data), as GitHub answers it."""
        self._schema_without = tuple(sorted(
            (type_name, tuple(sorted(names))) for type_name, names in (without_fields or {}).items()))
        gql.older_schema(self._schema_without)  # built now: a bad name fails here

    # --- auth, tokens, limits -------------------------------------------------------------
    def add_personal_token(self, token: str, login: str) -> None:
        """Accept `token` as a personal access token of `login` (for CLI use)."""
        self._personal[token] = login

    def installation_token(self, installation_id: int) -> str:
        """Issue a token directly (not counted in tokens_issued), for tests that skip the JWT."""
        return self._issue_token(installation_id, None, None).token

    def expire_tokens(self) -> None:
        """Make every issued installation token expired."""
        for token in self._tokens.values():
            token.expires_at = time.time() - 1

    def _issue_token(self, installation_id: int, repositories: set[str] | None,
                     permissions: dict[str, str] | None) -> Token:
        installation = self.state.installations[installation_id]
        token = Token(token="ghs_" + secrets.token_urlsafe(27).replace("-", "a").replace("_", "b")[:36],
                      installation_id=installation_id,
                      expires_at=time.time() + self.token_lifetime,
                      permissions=permissions or dict(installation.permissions),
                      repositories=repositories)
        self._tokens[token.token] = token
        return token

    def _bucket(self, key: tuple[Any, ...], resource: str) -> Bucket:
        full = (*key, resource)
        bucket = self._buckets.get(full)
        if bucket is None:
            limit = 60 if key == ("none",) else self.rate_limit_default
            bucket = Bucket(limit, limit, time.time() + 3600, resource)
            self._buckets[full] = bucket
        bucket.refresh()
        return bucket

    def set_rate_limit(self, installation_id: int, *, remaining: int | None = None,
                       reset_in: float | None = None, limit: int | None = None,
                       resource: str = "core") -> None:
        """Set an installation's primary budget (resource "core" or "graphql")."""
        bucket = self._bucket(("installation", installation_id), resource)
        if limit is not None:
            bucket.limit = limit
        if remaining is not None:
            bucket.remaining = remaining
        if reset_in is not None:
            bucket.reset = time.time() + reset_in

    def rate_limit(self, installation_id: int, resource: str = "core") -> dict[str, int]:
        bucket = self._bucket(("installation", installation_id), resource)
        return {"limit": bucket.limit, "remaining": bucket.remaining,
                "used": bucket.limit - bucket.remaining, "reset": int(bucket.reset)}

    # --- faults, hooks, call log -----------------------------------------------------------
    def fail(self, method: str, path: str, status: int | None = None, *, times: int = 1,
             headers: dict[str, str] | None = None, body: Any = None,
             reset_connection: bool = False, delay: float = 0.0,
             after_effect: bool = False) -> None:
        """Answer the next `times` requests whose method matches and whose path `path` searches.

        With `status`, answer that status (`body` defaults to a GitHub error body); with
        `reset_connection=True`, drop the connection unanswered (the client sees `times`
        connection errors: see Fault.consume); with `delay`, answer `delay` seconds late
        (with `status`, or normally without one). `method` may be "*".
        With `after_effect=True` the request is carried out first (a comment is posted, a
        setting changed) and only its answer fails, as when GitHub did the work but the
        answer was lost (a timeout, a dropped connection, a 502 from a gateway).
        """
        if status is None and not reset_connection and not delay:
            raise ValueError("fail() needs a status, reset_connection=True or a delay")
        self._faults.append(Fault(method.upper(), re.compile(path), status, times,
                                  dict(headers or {}), body, reset_connection, delay,
                                  after_effect))

    def random_faults(self, *, server_error: float = 0.0, reset: float = 0.0,
                      secondary_limit: float = 0.0, delay: float = 0.0, delay_seconds: float = 5.0,
                      retry_after: int = 1, after_effect: float = 0.0,
                      seed: int | None = None) -> dict[str, int]:
        """Fail every request at random: a 500 or 502 (`server_error`), a dropped connection
        (`reset`), a secondary rate limit (`secondary_limit`: 403 with `retry-after`) or an
        answer `delay_seconds` late (`delay`), each with its probability. `after_effect` is the
        share of server errors and resets that hit only the answer, the work being done.
        Faults set with fail() come first. All probabilities 0 turns the mode off. Returns
        the counts drawn so far by kind (live: it keeps counting)."""
        if not any((server_error, reset, secondary_limit, delay)):
            self._random_faults = None
            return {}
        self._random_faults = RandomFaults(server_error, reset, secondary_limit, delay,
                                           delay_seconds, retry_after, after_effect,
                                           random.Random(seed))
        return self._random_faults.drawn

    def on_request(self, hook: Callable[[Call], Any]) -> None:
        """Call `hook(call)` (sync or async) for every request, before it is answered."""
        self._hooks.append(hook)

    def arrived(self, method: str | None = None, path_regex: str | None = None) -> int:
        """Requests received so far, answered or not: a request held by a `delay` counts at once
        (calls only hold answered ones)."""
        pattern = re.compile(path_regex) if path_regex else None
        return sum(1 for m, p in self._arrived
                   if (method is None or m == method) and (pattern is None or pattern.search(p)))

    def reset_calls(self) -> None:
        self.calls.clear()

    def calls_to(self, method: str | None = None,
                 path: str | re.Pattern[str] | None = None) -> list[Call]:
        """Recorded calls, filtered by method and by path (a regex, `re.search`: anchor it)."""
        pattern = re.compile(path) if isinstance(path, str) else path
        return [c for c in self.calls
                if (method is None or c.method == method.upper())
                and (pattern is None or pattern.search(c.path) is not None)]

    def count(self, method: str | None = None, path_regex: str | None = None) -> int:
        return len(self.calls_to(method, path_regex))

    def take_violations(self) -> list[str]:
        """Return and clear the violations (for tests that send bad requests on purpose)."""
        found = list(self.violations)
        self.violations.clear()
        return found

    # --- request handling -------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        form_match = FORM_PATH.match(raw_path)
        if form_match is not None and request.method == "POST":  # github.com's web form, not the API
            return await self._manifest_form(request, form_match["org"])
        if raw_path == "/favicon.ico":  # a browser on github.com's pages asks for it; not the API
            return web.Response(status=404)
        if raw_path.startswith("/api/v3/"):
            raw_path = raw_path[len("/api/v3"):]
        elif raw_path == "/api/graphql":
            raw_path = "/graphql"
        path = unquote(raw_path)
        method = request.method.upper()
        self._arrived.append((method, path))
        query: dict[str, Any] = {}
        for key in request.rel_url.query:
            values = request.rel_url.query.getall(key)
            query[key] = values[0] if len(values) == 1 else values
        headers = {k.lower(): v for k, v in request.headers.items()}
        raw_body = await request.read()
        body: Any = None
        problems: list[str] = []
        reply: Reply | None = None
        has_body = bool(raw_body.strip())
        if has_body:
            try:
                body = json.loads(raw_body)
            except ValueError:
                problems.append(f"{method} {path}: body is not valid JSON")
                reply = self._error(400, "Problems parsing JSON", REST_DOCS)
        is_graphql = path == "/graphql"
        match = None
        if reply is None and not is_graphql:
            match = self.validator.check(method, raw_path, query, body, has_body=has_body)
            if match.not_found:
                problems.extend(match.errors)
                reply = self._error(404, "Not Found", REST_DOCS)
            elif match.errors:
                problems.extend(f"{method} {path}: {e}" for e in match.errors)
                text = "Invalid request.\n\n" + "\n".join(match.errors)
                assert match.operation is not None
                reply = self._error(422, text, match.operation.doc_url)
        elif reply is None and method != "POST":
            problems.append(f"{method} /graphql: only POST is allowed")
            reply = self._error(404, "Not Found", REST_DOCS)
        fault = next((f for f in self._faults if f.matches(method, path)), None)
        if fault is None and reply is None and self._random_faults is not None:
            fault = self._random_faults.draw(method, path)
        auth = self._authenticate(headers)
        done: Reply | None = None
        if reply is None and fault is not None:
            fault.consume(method, self.transparent_retries)
            if fault.after_effect:
                # Carried out as usual; only the answer is lost, late or replaced.
                done = await self._answer(request, auth, is_graphql, match, method, path,
                                          query, body, headers, problems)
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.reset_connection:
                await self._record(method, path, query, headers, body, 0, is_graphql, None,
                                   problems, {})
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=599)
            if fault.status is not None:
                error_body = fault.body if fault.body is not None else {
                    "message": f"Injected failure ({fault.status})",
                    "documentation_url": REST_DOCS, "status": str(fault.status)}
                reply = Reply(fault.status, error_body,
                              {**fault.headers, "x-github-spent": "0"})
            else:
                reply = done  # only late
        installation_id = auth.installation_id
        if reply is None:
            reply = await self._answer(request, auth, is_graphql, match, method, path, query,
                                       body, headers, problems)
        response = self._finish(reply, auth, method, headers, is_graphql, match)
        await self._record(method, path, query, headers, body, response.status, is_graphql,
                           installation_id, problems,
                           {k.lower(): v for k, v in response.headers.items()})
        return response

    async def _manifest_form(self, request: web.Request, org: str | None) -> web.Response:
        form = {key: str(value) for key, value in (await request.post()).items()}
        status, page = form_page(self, org, form, request.query.get("state"))
        await self._record("POST", request.rel_url.path, dict(request.rel_url.query), {}, form, status,
                           False, None, [], {})
        return web.Response(status=status, text=page, content_type="text/html")

    async def _answer(self, request: web.Request, auth: Auth, is_graphql: bool, match: Any,
                      method: str, path: str, query: dict[str, Any], body: Any,
                      headers: dict[str, str], problems: list[str]) -> Reply:
        try:
            if is_graphql:
                return await self._graphql_timed(auth, body, problems)
            assert match is not None and match.operation is not None
            return await self._rest(request, auth, match, method, path, query, body, headers)
        except HTTPError as error:
            doc = match.operation.doc_url if match and match.operation else REST_DOCS
            return self._error(error.status, error.message, doc, **error.extra)

    async def _graphql_timed(self, auth: Auth, body: Any, problems: list[str]) -> Reply:
        """A GraphQL answer, taking graphql_latency; counts the installation's queries in flight."""
        key = auth.installation_id
        if key is None:
            return self._graphql(auth, body, problems)
        self.graphql_in_flight[key] = self.graphql_in_flight.get(key, 0) + 1
        self.graphql_overlap[key] = max(self.graphql_overlap.get(key, 0), self.graphql_in_flight[key])
        try:
            if self.graphql_latency:
                await asyncio.sleep(self.graphql_latency)
            return self._graphql(auth, body, problems)
        finally:
            self.graphql_in_flight[key] -= 1

    async def _record(self, method: str, path: str, query: dict[str, Any],
                      headers: dict[str, str], body: Any, status: int, is_graphql: bool,
                      installation_id: int | None, problems: list[str],
                      response_headers: dict[str, str]) -> None:
        self.violations.extend(problems)
        call = Call(
            method=method, path=path, query=query, headers=headers, body=body, status=status,
            graphql_query=body.get("query") if is_graphql and isinstance(body, dict) else None,
            graphql_variables=body.get("variables") if is_graphql and isinstance(body, dict)
            else None,
            installation_id=installation_id, response_headers=response_headers,
        )
        self.calls.append(call)
        for hook in list(self._hooks):
            result = hook(call)
            if inspect.isawaitable(result):
                await result

    def _error(self, status: int, message: str, doc: str, **extra: Any) -> Reply:
        return Reply(status, {"message": message, "documentation_url": doc,
                              "status": str(status), **extra})

    def _authenticate(self, headers: dict[str, str]) -> Auth:
        value = headers.get("authorization", "")
        scheme, _, credential = value.partition(" ")
        credential = credential.strip()
        if scheme.lower() not in ("token", "bearer") or not credential:
            return Auth("none")
        if credential.count(".") == 2 and not credential.startswith("gh"):
            try:
                claims = jwt.decode(credential, self._public_key, algorithms=["RS256"],
                                    options={"require": ["exp", "iat", "iss"]}, leeway=0)
            except jwt.PyJWTError as error:
                return Auth("bad-jwt", error=str(error))
            now = time.time()
            if str(claims["iss"]) != str(self.app_id):
                return Auth("bad-jwt", error="'Issuer' claim ('iss') must match the App id")
            if claims["exp"] > now + 600 + 60:
                return Auth("bad-jwt", error="'Expiration time' claim ('exp') is too far in "
                            "the future")
            if claims["iat"] > now + 60:
                return Auth("bad-jwt", error="'Issued at' claim ('iat') must be an Integer "
                            "representing a time in the past")
            return Auth("app")
        token = self._tokens.get(credential)
        if token is not None:
            if token.expires_at <= time.time():
                return Auth("bad-token")
            return Auth("installation", token.installation_id, token=token)
        if credential in self._personal:
            return Auth("personal", login=self._personal[credential])
        return Auth("bad-token")

    def _bucket_for(self, auth: Auth, resource: str) -> Bucket:
        if auth.kind == "installation":
            return self._bucket(("installation", auth.installation_id), resource)
        if auth.kind == "personal":
            return self._bucket(("user", (auth.login or "").lower()), resource)
        if auth.kind == "app":
            return self._bucket(("app",), resource)
        return self._bucket(("none",), resource)

    async def _rest(self, request: web.Request, auth: Auth, match: Any, method: str,
                    path: str, query: dict[str, Any], body: Any,
                    headers: dict[str, str]) -> Reply:
        op = match.operation
        if op.operation_id in JWT_OPERATIONS:
            if auth.kind != "app":
                raise HTTPError(401, auth.error or "A JSON web token could not be decoded")
        elif op.operation_id in UNAUTHENTICATED_OPERATIONS:
            pass
        elif auth.kind == "none":
            raise HTTPError(401, "Requires authentication")
        elif auth.kind not in ("installation", "personal"):
            raise HTTPError(401, "Bad credentials")
        bucket = self._bucket_for(auth, "core")
        if bucket.remaining <= 0 and op.operation_id not in FREE_OPERATIONS:
            who = (f"installation ID {auth.installation_id}" if auth.kind == "installation"
                   else f"user ID {auth.login}")
            raise HTTPError(403, f"API rate limit exceeded for {who}.",
                            documentation_url="https://docs.github.com/rest/using-the-rest-api/"
                            "rate-limits-for-the-rest-api")
        ctx = rest.Context(fake=self, state=self.state, op=op, params=match.params,
                           query=match.query, body=body, headers=headers, auth=auth,
                           request_url=str(request.url), method=method)
        handler = rest.HANDLERS.get(op.operation_id)
        if handler is None:
            raise HTTPError(501, f"The fake GitHub does not implement {op.operation_id}")
        return handler(ctx)

    def _graphql(self, auth: Auth, body: Any, problems: list[str]) -> Reply:
        if auth.kind not in ("installation", "personal"):
            message = ("Bad credentials" if auth.kind.startswith("bad") or auth.kind == "app"
                       else "This endpoint requires you to be authenticated.")
            raise HTTPError(401, message)
        bucket = self._bucket_for(auth, "graphql")
        if bucket.remaining <= 0:
            who = (f"installation ID {auth.installation_id}" if auth.kind == "installation"
                   else f"user ID {auth.login}")
            return Reply(200, {"errors": [{"type": "RATE_LIMITED",
                                           "message": f"API rate limit already exceeded for {who}."}]},
                         {"x-github-spent": "0"})
        outcome = gql.run(self.state, body, installation_id=auth.installation_id,
                          personal_login=auth.login if auth.kind == "personal" else None,
                          permissions=auth.token.permissions if auth.token is not None else None,
                          rate={"limit": bucket.limit, "remaining": bucket.remaining,
                                "resetAt": iso(bucket.reset)}, without=self._schema_without)
        problems.extend(outcome.violations)
        return Reply(200, outcome.body, {"x-github-spent": str(outcome.cost)})

    def _finish(self, reply: Reply, auth: Auth, method: str, headers: dict[str, str],
                is_graphql: bool, match: Any) -> web.Response:
        out_headers = {k.lower(): v for k, v in reply.headers.items()}
        spent = int(out_headers.pop("x-github-spent", "1"))
        payload: bytes = b""
        if reply.raw is not None:
            payload = reply.raw
        elif reply.body is not None and reply.status != 204:
            payload = json.dumps(reply.body, separators=(",", ":")).encode()
        status = reply.status
        if method == "GET" and status == 200:
            etag = _etag(payload)
            out_headers["etag"] = etag
            if _etag_matches(headers.get("if-none-match"), etag):
                status, payload, spent = 304, b"", 0
        operation_id = match.operation.operation_id if match and match.operation else None
        if operation_id in FREE_OPERATIONS or status == 401:
            spent = 0
        bucket = self._bucket_for(auth, "graphql" if is_graphql else "core")
        if auth.kind in ("installation", "personal", "app") and spent:
            bucket.remaining = max(0, bucket.remaining - spent)
        rate = {
            "x-ratelimit-limit": str(bucket.limit),
            "x-ratelimit-remaining": str(bucket.remaining),
            "x-ratelimit-reset": str(int(bucket.reset)),
            "x-ratelimit-used": str(bucket.limit - bucket.remaining),
            "x-ratelimit-resource": bucket.resource,
        }
        for key, value in rate.items():
            out_headers.setdefault(key, value)
        out_headers.setdefault("x-github-request-id", secrets.token_hex(8).upper())
        out_headers.setdefault("x-github-api-version-selected", "2022-11-28")
        if status in (204, 304) or not payload:
            return web.Response(status=status, headers=out_headers)
        out_headers["content-type"] = reply.content_type
        return web.Response(status=status, body=payload, headers=out_headers)

    # --- helpers used by the REST handlers ---------------------------------------------------
    def installation_of(self, auth: Auth) -> Installation | None:
        if auth.installation_id is None:
            return None
        return self.state.installations.get(auth.installation_id)

    def legacy_permission(self, role: str) -> str:
        return LEGACY_PERMISSION[role]
