"""The fake GitHub's stateful model: installations, repositories, branches, protection, files, issues."""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

HTML = "https://github.com"
# The contents API gives a file's content only up to 1 MB; above, `encoding: none` and "".
CONTENT_LIMIT = 1024 * 1024
ROLES = ("admin", "maintain", "write", "triage", "read", "none")
# GitHub's legacy `permission` field folds maintain into write and triage into read.
LEGACY_PERMISSION = {"admin": "admin", "maintain": "write", "write": "write",
                     "triage": "read", "read": "read", "none": "none"}
# What a custom repository role may be based on (GitHub Enterprise Cloud).
CUSTOM_ROLE_BASES = ("read", "triage", "write", "maintain")
PROTECTION_TOGGLES = ("required_linear_history", "allow_force_pushes", "allow_deletions",
                      "block_creations", "required_conversation_resolution", "lock_branch",
                      "allow_fork_syncing")
# app.yml's default_permissions, which GitHub grants an installation unless it says otherwise.
APP_PERMISSIONS: dict[str, str] = dict(
    yaml.safe_load((Path(__file__).resolve().parents[2] / "app.yml").read_text(encoding="utf-8"))[
        "default_permissions"]
)
# GET /repos/{owner}/{repo} shows these only to a token with contents: write ("To view
# merge-related settings, you must have the contents:read and contents:write permissions"),
# GraphQL's Repository refuses them likewise, and webhook payloads never carry them.
MERGE_SETTINGS = ("allow_squash_merge", "allow_merge_commit", "allow_rebase_merge",
                  "allow_auto_merge", "delete_branch_on_merge", "allow_update_branch",
                  "use_squash_pr_title_as_default", "squash_merge_commit_title",
                  "squash_merge_commit_message", "merge_commit_title", "merge_commit_message")
# Shown only to the repository's admins (for an App: administration: write).
ADMIN_ONLY = ("security_and_analysis",)
LEVELS = ("read", "write", "admin")


def grants(permissions: dict[str, str] | None, permission: str, level: str) -> bool:
    """Whether a token's permissions include `permission` at `level` (None: a personal token,
    whose user the fake treats as an owner)."""
    if permissions is None:
        return True
    have = permissions.get(permission)
    return have in LEVELS and LEVELS.index(have) >= LEVELS.index(level)


def visible_repository(data: dict[str, Any], permissions: dict[str, str] | None) -> dict[str, Any]:
    """A repository object as a token with `permissions` sees it: GitHub leaves out what the
    token may not see, rather than refusing the request."""
    hidden: list[str] = []
    if not grants(permissions, "contents", "write"):
        hidden.extend(MERGE_SETTINGS)
    if not grants(permissions, "administration", "write"):
        hidden.extend(ADMIN_ONLY)
    if not any(key in data for key in hidden):
        return data
    return {key: value for key, value in data.items() if key not in hidden}


REPO_DEFAULTS: dict[str, Any] = {
    "description": None, "homepage": None, "private": False, "visibility": "public",
    "fork": False, "language": None, "archived": False, "disabled": False,
    "has_issues": True, "has_projects": True, "has_wiki": True, "has_pages": False,
    "has_downloads": True, "has_discussions": False, "is_template": False,
    "allow_squash_merge": True, "allow_merge_commit": True, "allow_rebase_merge": True,
    "allow_auto_merge": False, "delete_branch_on_merge": False, "allow_update_branch": False,
    "use_squash_pr_title_as_default": False, "squash_merge_commit_title": "COMMIT_OR_PR_TITLE",
    "squash_merge_commit_message": "COMMIT_MESSAGES", "merge_commit_title": "MERGE_MESSAGE",
    "merge_commit_message": "PR_TITLE", "allow_forking": True,
    "web_commit_signoff_required": False, "topics": [], "license": None,
    "forks_count": 0, "stargazers_count": 0, "watchers_count": 0, "open_issues_count": 0,
    "network_count": 0, "subscribers_count": 0, "mirror_url": None,
}


def branch_pattern_matches(pattern: str, name: str) -> bool:
    """GitHub's matching of branch protection rule and ruleset patterns: Ruby's
    ``File.fnmatch`` with ``FNM_PATHNAME``, so ``*`` and ``?`` never cross ``/``, ``**/``
    spans any number of directories, and ``[...]`` is a character class."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and "]" in pattern[i + 1:]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end].replace("\\", "\\\\")
            if body[:1] in ("!", "^"):
                body = "^/" + body[1:]  # a negated class does not match "/" either
            out.append(f"[{body}]")
            i = end + 1
            continue
        elif char == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        else:
            out.append(re.escape(char))
        i += 1
    return re.fullmatch("".join(out), name) is not None


def iso(ts: float | None = None) -> str:
    """An ISO 8601 UTC timestamp as GitHub writes it (second precision, `Z`)."""
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def node_id(kind: str, number: int) -> str:
    """A GitHub-looking global node id."""
    return base64.b64encode(f"0{len(kind)}:{kind}{number}".encode()).decode().rstrip("=")


def blob_sha(data: bytes) -> str:
    """The git blob SHA-1 of file contents, as the contents API reports it."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fake_sha(*parts: object) -> str:
    """A deterministic 40-hex commit id."""
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()


@dataclass
class Installation:
    """One installation of the App on an account."""

    id: int
    account: dict[str, Any]
    repository_selection: str = "all"
    selected: set[str] | None = None  # lower-case repository names when "selected"
    permissions: dict[str, str] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    created_at: str = field(default_factory=iso)

    @property
    def login(self) -> str:
        return str(self.account["login"])

    def covers(self, repo_name: str) -> bool:
        """Whether the installation can see the repository."""
        return self.selected is None or repo_name.lower() in self.selected


@dataclass
class Branch:
    """A branch: its head commit and its protection as last PUT (None when unprotected).

    ``committed_date`` is the head commit's date; ``history`` every commit reachable from
    the head (oldest first, the head last), which says what another branch holds of it."""

    name: str
    sha: str
    protection: dict[str, Any] | None = None
    committed_date: str = field(default_factory=lambda: iso())
    history: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.history and self.sha:
            self.history = [self.sha]


@dataclass
class PullRequest:
    """A pull request: the REST object, and its files as `pulls/list-files` lists them."""

    data: dict[str, Any]
    files: list[dict[str, Any]]


@dataclass
class Repo:
    """One repository: the REST object (the live source of truth) and everything inside it."""

    data: dict[str, Any]
    branches: dict[str, Branch] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    permissions: dict[str, str] = field(default_factory=dict)
    rulesets: dict[int, dict[str, Any]] = field(default_factory=dict)
    # Classic rules with a wildcard pattern (PUT-shape bodies), oldest first. A rule with a
    # branch's exact name is that Branch's `protection`.
    pattern_rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    check_runs: dict[int, dict[str, Any]] = field(default_factory=dict)
    # Annotations of each check run, in the order they were sent (the REST object only counts them).
    annotations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    pulls: dict[int, PullRequest] = field(default_factory=dict)
    # Commits no branch points at, by SHA -> their files: pull requests' head commits, which
    # GitHub serves from the base repository (refs/pull/N/head), from forks too.
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    serial: int = 0  # creation order, for sorting

    @property
    def owner(self) -> str:
        return str(self.data["owner"]["login"])

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def empty(self) -> bool:
        return not self.branches


class State:
    """Everything the fake GitHub knows; URLs are built on `base_url`."""

    def __init__(self, base_url: str, app: dict[str, Any]) -> None:
        self.base_url = base_url
        self.app = app
        self.installations: dict[int, Installation] = {}
        self.accounts: dict[str, Installation] = {}
        self.repos: dict[str, dict[str, Repo]] = {}
        self.comments: dict[int, dict[str, Any]] = {}
        self.comment_home: dict[int, tuple[str, str, int]] = {}
        self.reactions: dict[int, list[dict[str, Any]]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.teams: dict[str, dict[str, Any]] = {}
        # Organization (lower-case) -> custom repository role name (lower-case) -> role object.
        self.custom_roles: dict[str, dict[str, dict[str, Any]]] = {}
        # Organization (lower-case) -> ruleset id -> organization ruleset.
        self.org_rulesets: dict[str, dict[int, dict[str, Any]]] = {}
        self._ids = itertools.count(1000)
        self._serial = itertools.count(1)

    def next_id(self) -> int:
        return next(self._ids)

    # --- accounts -----------------------------------------------------------------
    def user(self, login: str, kind: str | None = None) -> dict[str, Any]:
        """The simple-user object for a login (created on first use; `[bot]` logins are Bots)."""
        key = login.lower()
        if key not in self.users:
            kind = kind or ("Bot" if login.endswith("[bot]") else "User")
            number = self.next_id()
            api = f"{self.base_url}/users/{login}"
            self.users[key] = {
                "login": login, "id": number, "node_id": node_id(kind, number),
                "avatar_url": f"https://avatars.githubusercontent.com/u/{number}?v=4",
                "gravatar_id": "", "url": api, "html_url": f"{HTML}/{login}",
                "followers_url": f"{api}/followers",
                "following_url": f"{api}/following{{/other_user}}",
                "gists_url": f"{api}/gists{{/gist_id}}",
                "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
                "subscriptions_url": f"{api}/subscriptions",
                "organizations_url": f"{api}/orgs", "repos_url": f"{api}/repos",
                "events_url": f"{api}/events{{/privacy}}",
                "received_events_url": f"{api}/received_events",
                "type": kind, "user_view_type": "public", "site_admin": False,
            }
        return self.users[key]

    def team(self, org: str, slug: str) -> dict[str, Any]:
        """A team object for an organization's team slug."""
        key = f"{org.lower()}/{slug.lower()}"
        if key not in self.teams:
            number = self.next_id()
            api = f"{self.base_url}/teams/{number}"
            self.teams[key] = {
                "id": number, "node_id": node_id("Team", number), "url": api,
                "html_url": f"{HTML}/orgs/{org}/teams/{slug}", "name": slug, "slug": slug,
                "description": None, "privacy": "closed",
                "notification_setting": "notifications_enabled", "permission": "pull",
                "members_url": f"{api}/members{{/member}}",
                "repositories_url": f"{api}/repos", "parent": None, "type": "organization",
            }
        return self.teams[key]

    def app_object(self, slug: str) -> dict[str, Any]:
        """An integration object: the fake's own App, or another App by slug."""
        if slug == self.app["slug"]:
            return self.app
        number = self.next_id()
        return {**self.app, "id": number, "slug": slug, "name": slug,
                "node_id": node_id("Integration", number),
                "html_url": f"{HTML}/apps/{slug}", "client_id": f"Iv1.{number:016x}"}

    def organization(self, login: str) -> dict[str, Any]:
        """The organization-simple object of an account."""
        user = self.user(login, "Organization")
        api = f"{self.base_url}/orgs/{login}"
        return {
            "login": login, "id": user["id"], "node_id": user["node_id"], "url": api,
            "repos_url": f"{api}/repos", "events_url": f"{api}/events",
            "hooks_url": f"{api}/hooks", "issues_url": f"{api}/issues",
            "members_url": f"{api}/members{{/member}}",
            "public_members_url": f"{api}/public_members{{/member}}",
            "avatar_url": user["avatar_url"], "description": None,
        }

    def add_installation(
        self, installation_id: int, account: str, account_type: str = "Organization",
        repositories: list[str] | None = None,
    ) -> Installation:
        installation = Installation(
            id=installation_id,
            account=self.user(account, account_type),
            repository_selection="all" if repositories is None else "selected",
            selected=None if repositories is None else {r.lower() for r in repositories},
            permissions=dict(self.app["permissions"]),
            events=list(self.app["events"]),
        )
        self.installations[installation_id] = installation
        self.accounts[account.lower()] = installation
        self.repos.setdefault(account.lower(), {})
        return installation

    def installation_object(self, installation: Installation) -> dict[str, Any]:
        """The REST installation object."""
        account = installation.account
        return {
            "id": installation.id, "client_id": self.app["client_id"],
            "account": account, "repository_selection": installation.repository_selection,
            "access_tokens_url": f"{self.base_url}/app/installations/{installation.id}/access_tokens",
            "repositories_url": f"{self.base_url}/installation/repositories",
            "html_url": f"{HTML}/organizations/{account['login']}/settings/installations/{installation.id}",
            "app_id": self.app["id"], "app_slug": self.app["slug"],
            "target_id": account["id"], "target_type": account["type"],
            "permissions": dict(installation.permissions), "events": list(installation.events),
            "created_at": installation.created_at, "updated_at": installation.created_at,
            "single_file_name": None, "has_multiple_single_files": False,
            "single_file_paths": [], "suspended_by": None, "suspended_at": None,
        }

    def custom_role(self, org: str, name: str, base_role: str) -> dict[str, Any]:
        """The organization's custom repository role of that name (created on first use)."""
        roles = self.custom_roles.setdefault(org.lower(), {})
        role = roles.get(name.lower())
        if role is None:
            number = self.next_id()
            now = iso()
            role = {"id": number, "name": name, "description": None, "base_role": base_role,
                    "permissions": [], "organization": self.user(org, "Organization"),
                    "created_at": now, "updated_at": now}
            roles[name.lower()] = role
        elif role["base_role"] != base_role:
            raise ValueError(f"custom role {name} is based on {role['base_role']}, not {base_role}")
        return role

    def base_role(self, org: str, role: str) -> str:
        """A role's base role: itself for GitHub's own roles, else the custom role's base."""
        if role in ROLES:
            return role
        return str(self.custom_roles[org.lower()][role.lower()]["base_role"])

    # --- repositories -----------------------------------------------------------------
    def find_repo(self, owner: str, name: str) -> Repo | None:
        return self.repos.get(owner.lower(), {}).get(name.lower())

    def get_repo(self, owner: str, name: str) -> Repo:
        repo = self.find_repo(owner, name)
        if repo is None:
            raise KeyError(f"no repository {owner}/{name} in the fake GitHub")
        return repo

    def add_repo(self, owner: str, name: str, *, empty: bool, default_branch: str,
                 fields: dict[str, Any]) -> Repo:
        installation = self.accounts.get(owner.lower())
        if installation is None:
            raise KeyError(f"{owner} is not an installation account; call add_installation first")
        account = installation.account
        number = self.next_id()
        created = iso()
        data: dict[str, Any] = {
            "id": number, "node_id": node_id("Repository", number), "name": name,
            "full_name": f"{account['login']}/{name}", "owner": account,
        }
        data.update(REPO_DEFAULTS)
        data["topics"] = []
        data.update({"default_branch": default_branch, "created_at": created,
                     "updated_at": created, "pushed_at": None if empty else created,
                     "size": 0 if empty else 108})
        if account["type"] == "Organization":
            data["organization"] = account
        data["security_and_analysis"] = {
            "secret_scanning": {"status": "disabled"},
            "secret_scanning_push_protection": {"status": "disabled"},
            "dependabot_security_updates": {"status": "disabled"},
        }
        data["custom_properties"] = {}
        data.update(fields)
        if "private" in fields and "visibility" not in fields:
            data["visibility"] = "private" if fields["private"] else "public"
        elif "visibility" in fields and "private" not in fields:
            data["private"] = fields["visibility"] != "public"
        self._set_urls(data)
        repo = Repo(data=data, serial=next(self._serial))
        if not empty:
            repo.branches[default_branch] = Branch(default_branch, fake_sha(data["full_name"], 0))
        self.repos.setdefault(account["login"].lower(), {})[name.lower()] = repo
        return repo

    def _set_urls(self, data: dict[str, Any]) -> None:
        full = data["full_name"]
        api = f"{self.base_url}/repos/{full}"
        data.update({
            "html_url": f"{HTML}/{full}", "url": api,
            "archive_url": f"{api}/{{archive_format}}{{/ref}}",
            "assignees_url": f"{api}/assignees{{/user}}",
            "blobs_url": f"{api}/git/blobs{{/sha}}", "branches_url": f"{api}/branches{{/branch}}",
            "collaborators_url": f"{api}/collaborators{{/collaborator}}",
            "comments_url": f"{api}/comments{{/number}}", "commits_url": f"{api}/commits{{/sha}}",
            "compare_url": f"{api}/compare/{{base}}...{{head}}",
            "contents_url": f"{api}/contents/{{+path}}", "contributors_url": f"{api}/contributors",
            "deployments_url": f"{api}/deployments", "downloads_url": f"{api}/downloads",
            "events_url": f"{api}/events", "forks_url": f"{api}/forks",
            "git_commits_url": f"{api}/git/commits{{/sha}}",
            "git_refs_url": f"{api}/git/refs{{/sha}}", "git_tags_url": f"{api}/git/tags{{/sha}}",
            "git_url": f"git://github.com/{full}.git",
            "issue_comment_url": f"{api}/issues/comments{{/number}}",
            "issue_events_url": f"{api}/issues/events{{/number}}",
            "issues_url": f"{api}/issues{{/number}}", "keys_url": f"{api}/keys{{/key_id}}",
            "labels_url": f"{api}/labels{{/name}}", "languages_url": f"{api}/languages",
            "merges_url": f"{api}/merges", "milestones_url": f"{api}/milestones{{/number}}",
            "notifications_url": f"{api}/notifications{{?since,all,participating}}",
            "pulls_url": f"{api}/pulls{{/number}}", "releases_url": f"{api}/releases{{/id}}",
            "ssh_url": f"git@github.com:{full}.git",
            "stargazers_url": f"{api}/stargazers", "statuses_url": f"{api}/statuses/{{sha}}",
            "subscribers_url": f"{api}/subscribers", "subscription_url": f"{api}/subscription",
            "tags_url": f"{api}/tags", "teams_url": f"{api}/teams",
            "trees_url": f"{api}/git/trees{{/sha}}", "clone_url": f"{HTML}/{full}.git",
            "hooks_url": f"{api}/hooks", "svn_url": f"{HTML}/{full}",
        })
        data["forks"] = data.get("forks_count", 0)
        data["watchers"] = data.get("watchers_count", 0)
        data["open_issues"] = data.get("open_issues_count", 0)

    def rename_repo(self, repo: Repo, new_name: str) -> None:
        owner_key = repo.owner.lower()
        self.repos[owner_key].pop(repo.name.lower(), None)
        repo.data["name"] = new_name
        repo.data["full_name"] = f"{repo.owner}/{new_name}"
        self._set_urls(repo.data)
        self.repos[owner_key][new_name.lower()] = repo

    def repos_of(self, owner: str) -> list[Repo]:
        return list(self.repos.get(owner.lower(), {}).values())

    def touch(self, repo: Repo) -> None:
        repo.data["updated_at"] = iso()

    def push(self, repo: Repo, branch: str | None = None, *, committed_date: str | None = None,
             commits: int = 1) -> Branch:
        """Record commits on a branch (creating the default branch of an empty repository). A
        new branch starts from the default branch's head, as one made on GitHub does; with
        ``commits=0`` it is that head and holds nothing of its own."""
        name = branch or repo.data["default_branch"]
        head = repo.branches.get(name)
        if head is None:
            base = repo.branches.get(repo.data["default_branch"])
            head = Branch(name, base.sha, history=list(base.history), committed_date=base.committed_date) \
                if base is not None else Branch(name, "")
            repo.branches[name] = head
        for _ in range(commits):
            sha = fake_sha(repo.data["full_name"], name, next(self._serial))
            head.sha = sha
            head.history.append(sha)
        if commits:
            head.committed_date = committed_date or iso()
        elif committed_date is not None:
            head.committed_date = committed_date
        repo.data["pushed_at"] = iso()
        repo.data["size"] = max(repo.data.get("size") or 0, 1)
        return head

    def merge(self, repo: Repo, branch: str) -> None:
        """Merge a branch into the default branch with a merge commit: the default branch then
        holds every commit of the branch."""
        source = repo.branches[branch]
        default = repo.branches[repo.data["default_branch"]]
        default.history += [sha for sha in source.history if sha not in default.history]
        self.push(repo, default.name)

    @staticmethod
    def compare(base: Branch, head: Branch) -> dict[str, Any]:
        """GraphQL's Comparison of two branches (base, head), as `Ref.compare` answers it."""
        ahead = len([sha for sha in head.history if sha not in set(base.history)])
        behind = len([sha for sha in base.history if sha not in set(head.history)])
        status = ("IDENTICAL" if not ahead and not behind else "AHEAD" if not behind
                  else "BEHIND" if not ahead else "DIVERGED")
        return {"__typename": "Comparison", "status": status, "aheadBy": ahead, "behindBy": behind}

    # --- branch protection -----------------------------------------------------------------
    def classic_rule(self, repo: Repo, branch: str) -> tuple[str, dict[str, Any]] | None:
        """(pattern, PUT-shape body) of the classic rule that protects a branch, or None.

        A rule with the branch's exact name wins; otherwise the oldest wildcard rule that
        matches (GitHub: "rules that include a specific branch name have the highest
        priority"; among wildcard rules, the one created first).
        """
        head = repo.branches.get(branch)
        if head is not None and head.protection is not None:
            return branch, head.protection
        for pattern, body in repo.pattern_rules.items():
            if branch_pattern_matches(pattern, branch):
                return pattern, body
        return None

    # --- rulesets -----------------------------------------------------------------------------
    def new_ruleset(self, body: dict[str, Any], *, source_type: str, source: str, api: str,
                    html: str) -> dict[str, Any]:
        """A ruleset object as GitHub answers it, from a create body."""
        number = self.next_id()
        now = iso()
        return {
            "id": number, "name": body["name"], "target": body.get("target", "branch"),
            "source_type": source_type, "source": source,
            "enforcement": body["enforcement"], "bypass_actors": body.get("bypass_actors", []),
            "current_user_can_bypass": "never", "node_id": node_id("RepositoryRuleset", number),
            "_links": {"self": {"href": f"{api}/rulesets/{number}"},
                       "html": {"href": f"{html}/rules/{number}"}},
            "conditions": body.get("conditions"), "rules": body.get("rules", []),
            "created_at": now, "updated_at": now,
        }

    def branch_rules(self, repo: Repo, branch: str) -> list[dict[str, Any]]:
        """The rules of every active branch ruleset (the repository's and its organization's)
        that applies to the branch, as `GET …/rules/branches/{branch}` lists them."""
        rulesets = list(self.org_rulesets.get(repo.owner.lower(), {}).values())
        rulesets += list(repo.rulesets.values())
        found: list[dict[str, Any]] = []
        for ruleset in rulesets:
            if ruleset["enforcement"] != "active" or ruleset.get("target", "branch") != "branch":
                continue
            if not self._ruleset_applies(repo, ruleset, branch):
                continue
            for rule in ruleset.get("rules") or []:
                found.append({**rule, "ruleset_source_type": ruleset["source_type"],
                              "ruleset_source": ruleset["source"], "ruleset_id": ruleset["id"]})
        return found

    def org_rulesets_for(self, repo: Repo) -> list[dict[str, Any]]:
        """The organization's rulesets whose repository condition takes in this repository."""
        found = []
        for ruleset in self.org_rulesets.get(repo.owner.lower(), {}).values():
            names = (ruleset.get("conditions") or {}).get("repository_name")
            if names is not None:
                def named(patterns: list[str]) -> bool:
                    return any(p == "~ALL" or branch_pattern_matches(p, repo.name) for p in patterns)
                if not named(names.get("include") or []) or named(names.get("exclude") or []):
                    continue
            found.append(ruleset)
        return found

    def _ruleset_applies(self, repo: Repo, ruleset: dict[str, Any], branch: str) -> bool:
        conditions = ruleset.get("conditions") or {}
        names = conditions.get("repository_name")
        if names is not None:
            def named(patterns: list[str]) -> bool:
                return any(p == "~ALL" or branch_pattern_matches(p, repo.name) for p in patterns)
            if not named(names.get("include") or []) or named(names.get("exclude") or []):
                return False
        refs = conditions.get("ref_name") or {}
        ref = f"refs/heads/{branch}"
        default = f"refs/heads/{repo.data['default_branch']}"

        def matches(patterns: list[str]) -> bool:
            for pattern in patterns:
                if pattern == "~ALL" or (pattern == "~DEFAULT_BRANCH" and ref == default):
                    return True
                full = pattern if pattern.startswith("refs/") else f"refs/heads/{pattern}"
                if branch_pattern_matches(full, ref):
                    return True
            return False

        return matches(refs.get("include") or []) and not matches(refs.get("exclude") or [])

    def protection_read(self, repo: Repo, branch: str, body: dict[str, Any]) -> dict[str, Any]:
        """GitHub's read shape of a protection written as `body` (the PUT shape)."""
        url = f"{repo.data['url']}/branches/{branch}/protection"
        org = repo.owner
        out: dict[str, Any] = {"url": url}
        checks = body.get("required_status_checks")
        if checks is not None:
            given = checks.get("checks") or []
            if given:
                check_list = [{"context": c["context"],
                               "app_id": None if c.get("app_id") in (None, -1) else c["app_id"]}
                              for c in given]
                contexts = [c["context"] for c in given]
            else:
                contexts = list(checks.get("contexts") or [])
                check_list = [{"context": c, "app_id": None} for c in contexts]
            out["required_status_checks"] = {
                "url": f"{url}/required_status_checks", "strict": bool(checks.get("strict")),
                "contexts": contexts, "checks": check_list,
                "contexts_url": f"{url}/required_status_checks/contexts",
            }
        reviews = body.get("required_pull_request_reviews")
        if reviews is not None:
            read: dict[str, Any] = {"url": f"{url}/required_pull_request_reviews"}
            dismissal = reviews.get("dismissal_restrictions")
            if dismissal and any(dismissal.get(k) for k in ("users", "teams", "apps")):
                read["dismissal_restrictions"] = {
                    "url": f"{url}/dismissal_restrictions",
                    "users_url": f"{url}/dismissal_restrictions/users",
                    "teams_url": f"{url}/dismissal_restrictions/teams",
                    **self._actors(org, dismissal),
                }
            read.update({
                "dismiss_stale_reviews": bool(reviews.get("dismiss_stale_reviews", False)),
                "require_code_owner_reviews": bool(reviews.get("require_code_owner_reviews", False)),
                "required_approving_review_count": int(reviews.get("required_approving_review_count", 1)),
                "require_last_push_approval": bool(reviews.get("require_last_push_approval", False)),
            })
            bypass = reviews.get("bypass_pull_request_allowances")
            if bypass and any(bypass.get(k) for k in ("users", "teams", "apps")):
                read["bypass_pull_request_allowances"] = self._actors(org, bypass)
            out["required_pull_request_reviews"] = read
        out["required_signatures"] = {"url": f"{url}/required_signatures", "enabled": False}
        out["enforce_admins"] = {"url": f"{url}/enforce_admins",
                                 "enabled": bool(body.get("enforce_admins"))}
        restrictions = body.get("restrictions")
        if restrictions is not None:
            out["restrictions"] = {
                "url": f"{url}/restrictions", "users_url": f"{url}/restrictions/users",
                "teams_url": f"{url}/restrictions/teams", "apps_url": f"{url}/restrictions/apps",
                **self._actors(org, restrictions),
            }
        for key in PROTECTION_TOGGLES:
            out[key] = {"enabled": bool(body.get(key) or False)}
        return out

    def _actors(self, org: str, spec: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        return {
            "users": [self.user(login) for login in spec.get("users") or []],
            "teams": [self.team(org, slug) for slug in spec.get("teams") or []],
            "apps": [self.app_object(slug) for slug in spec.get("apps") or []],
        }

    def branch_object(self, repo: Repo, branch: Branch) -> dict[str, Any]:
        """The REST branch object (`repos/get-branch`)."""
        api = repo.data["url"]
        rule = self.classic_rule(repo, branch.name)
        protected = rule is not None or bool(self.branch_rules(repo, branch.name))
        checks = ((rule or ("", {}))[1]).get("required_status_checks") or {}
        return {
            "name": branch.name,
            "commit": {
                "sha": branch.sha, "node_id": node_id("Commit", int(branch.sha[:8], 16)),
                "commit": {
                    "author": {"name": "Fake", "email": "fake@example.com", "date": iso()},
                    "committer": {"name": "Fake", "email": "fake@example.com", "date": iso()},
                    "message": "commit", "tree": {"sha": fake_sha(branch.sha, "tree"),
                                                  "url": f"{api}/git/trees/{fake_sha(branch.sha, 'tree')}"},
                    "url": f"{api}/git/commits/{branch.sha}", "comment_count": 0,
                    "verification": {"verified": False, "reason": "unsigned", "signature": None,
                                     "payload": None, "verified_at": None},
                },
                "url": f"{api}/commits/{branch.sha}",
                "html_url": f"{repo.data['html_url']}/commit/{branch.sha}",
                "comments_url": f"{api}/commits/{branch.sha}/comments",
                "author": None, "committer": None, "parents": [],
            },
            "_links": {"self": f"{api}/branches/{branch.name}",
                       "html": f"{repo.data['html_url']}/tree/{branch.name}"},
            "protected": protected,
            "protection": {
                "enabled": protected,
                "required_status_checks": {
                    "enforcement_level": "non_admins" if checks else "off",
                    "contexts": list(checks.get("contexts") or []),
                    "checks": [{"context": c, "app_id": None} for c in checks.get("contexts") or []],
                },
            },
            "protection_url": f"{api}/branches/{branch.name}/protection",
        }

    # --- contents --------------------------------------------------------------------------
    def content_object(self, repo: Repo, path: str, ref: str,
                       files: dict[str, bytes] | None = None) -> dict[str, Any]:
        data = (repo.files if files is None else files)[path]
        sha = blob_sha(data)
        api = f"{repo.data['url']}/contents/{path}"
        html = f"{repo.data['html_url']}/blob/{ref}/{path}"
        git = f"{repo.data['url']}/git/blobs/{sha}"
        encoded = base64.b64encode(data).decode()
        wrapped = "".join(encoded[i:i + 60] + "\n" for i in range(0, len(encoded), 60))
        encoding = "base64"
        if len(data) > CONTENT_LIMIT:
            # GitHub: "Between 1-100 MB ... the content field will be an empty string and the
            # encoding field will be "none"" (the raw media type still gives the bytes).
            encoding, wrapped = "none", ""
        return {
            "type": "file", "encoding": encoding, "size": len(data),
            "name": path.rsplit("/", 1)[-1], "path": path, "content": wrapped, "sha": sha,
            "url": f"{api}?ref={ref}", "git_url": git, "html_url": html,
            "download_url": f"https://raw.githubusercontent.com/{repo.data['full_name']}/{ref}/{path}",
            "_links": {"self": f"{api}?ref={ref}", "git": git, "html": html},
        }

    def directory_listing(self, repo: Repo, path: str, ref: str,
                          files: dict[str, bytes] | None = None) -> list[dict[str, Any]] | None:
        files = repo.files if files is None else files
        prefix = path.rstrip("/") + "/"
        entries: dict[str, dict[str, Any]] = {}
        for file_path in sorted(files):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix):]
            if "/" in rest:
                name = rest.split("/", 1)[0]
                sub = prefix + name
                entries.setdefault(name, {"type": "dir", "name": name, "path": sub, "size": 0,
                                          "sha": fake_sha(repo.data["full_name"], sub),
                                          "url": f"{repo.data['url']}/contents/{sub}?ref={ref}",
                                          "git_url": None, "html_url": None, "download_url": None,
                                          "_links": {"self": f"{repo.data['url']}/contents/{sub}",
                                                     "git": None, "html": None}})
            else:
                item = self.content_object(repo, file_path, ref, files)
                item.pop("content")
                item.pop("encoding")
                entries[rest] = item
        return list(entries.values()) if entries else None

    # --- pull requests -----------------------------------------------------------------------
    def fork_of(self, repo: Repo, owner: str) -> dict[str, Any]:
        """A fork's REST object under another account (one the App is not installed on)."""
        account = self.user(owner)
        number = self.next_id()
        data = dict(repo.data)
        data.update({"id": number, "node_id": node_id("Repository", number), "fork": True,
                     "full_name": f"{account['login']}/{repo.name}", "owner": account})
        data.pop("organization", None)
        self._set_urls(data)
        return data

    def push_to_pull_request(self, repo: Repo, number: int, changes: dict[str, bytes | None]) -> None:
        """A new head commit on a pull request's branch (GitHub then sends `synchronize`):
        its files are the previous head's with `changes`, its diff against the base again."""
        pull = repo.pulls[number]
        head = pull.data["head"]
        files = dict(repo.commits[head["sha"]])
        for path, content in changes.items():
            if content is None:
                files.pop(path.strip("/"), None)
            else:
                files[path.strip("/")] = content
        sha = fake_sha(head["sha"], sorted(changes))
        repo.commits[sha] = files
        head["sha"] = sha
        full = head["repo"]["full_name"]
        for entry in pull.files:
            path = entry["filename"]
            if path in files:
                entry.update({"sha": blob_sha(files[path]),
                              "status": "modified" if path in repo.files else "added"})
            else:
                entry["status"] = "removed"
            entry.update({"blob_url": f"{HTML}/{full}/blob/{sha}/{path}",
                          "raw_url": f"{HTML}/{full}/raw/{sha}/{path}",
                          "contents_url": f"{repo.data['url']}/contents/{path}?ref={sha}"})
        pull.data["statuses_url"] = f"{repo.data['url']}/statuses/{sha}"
        pull.data["updated_at"] = iso()

    def add_pull_request(self, repo: Repo, *, changes: dict[str, bytes | None], user: str,
                         title: str, head_repo: dict[str, Any], head_ref: str) -> PullRequest:
        """Open a pull request into the default branch whose head commit changes `changes`
        (path -> new bytes, None: removed) of the default branch's files."""
        number = max([*repo.pulls, *repo.issues], default=0) + 1
        base_branch = repo.branches[repo.data["default_branch"]]
        head_files = dict(repo.files)
        diff: list[dict[str, Any]] = []
        for path, content in changes.items():
            path = path.strip("/")
            before = head_files.get(path)
            if content is None:
                head_files.pop(path, None)
            else:
                head_files[path] = content
            status = "removed" if content is None else "added" if before is None else "modified"
            blob = blob_sha(content if content is not None else before or b"")
            lines_after = 0 if content is None else content.count(b"\n") + 1
            lines_before = 0 if before is None else before.count(b"\n") + 1
            diff.append({"sha": blob, "filename": path, "status": status,
                         "additions": lines_after, "deletions": lines_before,
                         "changes": lines_after + lines_before, "blob_url": "", "raw_url": "",
                         "contents_url": ""})
        head_sha = fake_sha(head_repo["full_name"], head_ref, number, sorted(changes))
        for entry in diff:
            entry["blob_url"] = f"{HTML}/{head_repo['full_name']}/blob/{head_sha}/{entry['filename']}"
            entry["raw_url"] = f"{HTML}/{head_repo['full_name']}/raw/{head_sha}/{entry['filename']}"
            entry["contents_url"] = f"{repo.data['url']}/contents/{entry['filename']}?ref={head_sha}"
        repo.commits[head_sha] = head_files
        pull_id = self.next_id()
        api = f"{repo.data['url']}/pulls/{number}"
        issue_api = f"{repo.data['url']}/issues/{number}"
        html = f"{repo.data['html_url']}/pull/{number}"
        now = iso()
        author = self.user(user)

        def side(label_owner: str, ref: str, sha: str, repository: dict[str, Any]) -> dict[str, Any]:
            # A copy as it was then; GitHub's pull request payloads carry no organization in
            # these (the synchronize schema would want its login).
            shown = {key: value for key, value in repository.items() if key != "organization"}
            return {"label": f"{label_owner}:{ref}", "ref": ref, "sha": sha,
                    "user": repository["owner"], "repo": shown}

        data = {
            "url": api, "id": pull_id, "node_id": node_id("PullRequest", pull_id),
            "html_url": html, "diff_url": f"{html}.diff", "patch_url": f"{html}.patch",
            "issue_url": issue_api, "commits_url": f"{api}/commits",
            "review_comments_url": f"{api}/comments",
            "review_comment_url": f"{repo.data['url']}/pulls/comments{{/number}}",
            "comments_url": f"{issue_api}/comments",
            "statuses_url": f"{repo.data['url']}/statuses/{head_sha}",
            "number": number, "state": "open", "locked": False, "title": title,
            "user": author, "body": None, "labels": [], "milestone": None,
            "active_lock_reason": None, "created_at": now, "updated_at": now,
            "closed_at": None, "merged_at": None, "merge_commit_sha": None,
            "assignee": None, "assignees": [], "requested_reviewers": [], "requested_teams": [],
            "head": side(head_repo["owner"]["login"], head_ref, head_sha, head_repo),
            "base": side(repo.owner, base_branch.name, base_branch.sha, repo.data),
            "_links": {key: {"href": href} for key, href in (
                ("self", api), ("html", html), ("issue", issue_api),
                ("comments", f"{issue_api}/comments"), ("review_comments", f"{api}/comments"),
                ("review_comment", f"{repo.data['url']}/pulls/comments{{/number}}"),
                ("commits", f"{api}/commits"),
                ("statuses", f"{repo.data['url']}/statuses/{head_sha}"))},
            "author_association": "CONTRIBUTOR" if head_repo.get("fork") else "MEMBER",
            "auto_merge": None, "draft": False, "merged": False, "mergeable": True,
            "rebaseable": True, "mergeable_state": "clean", "merged_by": None,
            "comments": 0, "review_comments": 0, "maintainer_can_modify": False,
            "commits": 1, "additions": sum(e["additions"] for e in diff),
            "deletions": sum(e["deletions"] for e in diff), "changed_files": len(diff),
        }
        pull = PullRequest(data, diff)
        repo.pulls[number] = pull
        # A pull request is an issue too: comments on it are issue comments.
        issue = self.add_issue(repo, title, user=user, number=number)
        issue["pull_request"] = {"url": api, "html_url": html, "diff_url": f"{html}.diff",
                                 "patch_url": f"{html}.patch", "merged_at": None}
        return pull

    # --- issues, comments, reactions ---------------------------------------------------------
    def add_issue(self, repo: Repo, title: str, *, body: str | None = None, user: str,
                  labels: list[str] | None = None, number: int | None = None) -> dict[str, Any]:
        number = number or (max(repo.issues, default=0) + 1)
        issue_id = self.next_id()
        api = f"{repo.data['url']}/issues/{number}"
        now = iso()
        issue = {
            "id": issue_id, "node_id": node_id("Issue", issue_id), "url": api,
            "repository_url": repo.data["url"], "labels_url": f"{api}/labels{{/name}}",
            "comments_url": f"{api}/comments", "events_url": f"{api}/events",
            "html_url": f"{repo.data['html_url']}/issues/{number}", "number": number,
            "state": "open", "state_reason": None, "title": title, "body": body,
            "user": self.user(user),
            "labels": [self.label(repo, name) for name in labels or []],
            "assignee": None, "assignees": [], "milestone": None, "locked": False,
            "active_lock_reason": None, "comments": 0, "closed_at": None,
            "created_at": now, "updated_at": now, "author_association": "NONE",
            "timeline_url": f"{api}/timeline", "performed_via_github_app": None,
            "reactions": _reaction_rollup(api, []),
        }
        repo.issues[number] = issue
        repo.data["open_issues_count"] = sum(i["state"] == "open" for i in repo.issues.values())
        repo.data["open_issues"] = repo.data["open_issues_count"]
        return issue

    def label(self, repo: Repo, name: str) -> dict[str, Any]:
        number = int(fake_sha(repo.data["full_name"], name)[:8], 16)
        return {"id": number, "node_id": node_id("Label", number),
                "url": f"{repo.data['url']}/labels/{name}", "name": name, "color": "ededed",
                "default": False, "description": None}

    def add_comment(self, repo: Repo, number: int, body: str, user: str,
                    *, app: bool = False) -> dict[str, Any]:
        issue = repo.issues[number]
        comment_id = self.next_id()
        now = iso()
        comment = {
            "id": comment_id, "node_id": node_id("IssueComment", comment_id),
            "url": f"{repo.data['url']}/issues/comments/{comment_id}",
            "html_url": f"{issue['html_url']}#issuecomment-{comment_id}", "body": body,
            "user": self.user(user), "created_at": now, "updated_at": now,
            "issue_url": issue["url"],
            "author_association": "NONE" if user.endswith("[bot]") else "MEMBER",
            "performed_via_github_app": self.app if app else None,
            "reactions": _reaction_rollup(f"{repo.data['url']}/issues/comments/{comment_id}", []),
        }
        self.comments[comment_id] = comment
        self.comment_home[comment_id] = (repo.owner.lower(), repo.name.lower(), number)
        issue["comments"] += 1
        return comment

    def add_reaction(self, comment_id: int, content: str, user: str) -> tuple[dict[str, Any], bool]:
        existing = self.reactions.setdefault(comment_id, [])
        for reaction in existing:
            if reaction["content"] == content and reaction["user"]["login"].lower() == user.lower():
                return reaction, False
        reaction_id = self.next_id()
        reaction = {"id": reaction_id, "node_id": node_id("Reaction", reaction_id),
                    "user": self.user(user), "content": content, "created_at": iso()}
        existing.append(reaction)
        comment = self.comments[comment_id]
        comment["reactions"] = _reaction_rollup(comment["url"], existing)
        return reaction, True

    def remove_reaction(self, comment_id: int, reaction_id: int) -> bool:
        existing = self.reactions.get(comment_id, [])
        kept = [r for r in existing if r["id"] != reaction_id]
        self.reactions[comment_id] = kept
        if comment_id in self.comments:
            self.comments[comment_id]["reactions"] = _reaction_rollup(
                self.comments[comment_id]["url"], kept)
        return len(kept) != len(existing)


_REACTION_KEYS = {"+1": "+1", "-1": "-1", "laugh": "laugh", "confused": "confused",
                  "heart": "heart", "hooray": "hooray", "rocket": "rocket", "eyes": "eyes"}


def _reaction_rollup(url: str, reactions: list[dict[str, Any]]) -> dict[str, Any]:
    rollup: dict[str, Any] = {"url": f"{url}/reactions", "total_count": len(reactions)}
    for key in _REACTION_KEYS:
        rollup[key] = sum(r["content"] == key for r in reactions)
    return rollup
