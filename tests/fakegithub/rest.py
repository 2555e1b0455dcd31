"""The REST endpoints of the fake GitHub, one handler per OpenAPI operation id."""

from __future__ import annotations

import base64
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yarl import URL

from .replies import HTTPError, Reply
from .state import LEGACY_PERMISSION, Repo, State, grants, iso, node_id, visible_repository

HANDLERS: dict[str, Callable[[Context], Reply]] = {}
ARCHIVED = "Repository was archived so is read-only."


def handles(operation_id: str) -> Callable[[Callable[[Context], Reply]], Callable[[Context], Reply]]:
    """Register a handler for an OpenAPI operation id."""

    def register(function: Callable[[Context], Reply]) -> Callable[[Context], Reply]:
        HANDLERS[operation_id] = function
        return function

    return register


@dataclass
class Context:
    """One validated REST request, as a handler sees it."""

    fake: Any
    state: State
    op: Any
    params: dict[str, Any]
    query: dict[str, Any]
    body: Any
    headers: dict[str, str]
    auth: Any
    request_url: str
    method: str

    @property
    def data(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}

    def actor(self) -> str:
        """The login acting: the App's bot for installation tokens, else the token's user."""
        if self.auth.kind == "personal":
            return str(self.auth.login)
        return str(self.fake.bot_login)

    def sees_account(self, login: str) -> bool:
        if self.auth.kind == "personal":
            return True
        installation = self.fake.installation_of(self.auth)
        return installation is not None and installation.login.lower() == login.lower()

    def repo(self, *, write: bool = False) -> Repo:
        """The repository named by the path, if this token may see it (else 404)."""
        repo = self.state.find_repo(self.params["owner"], self.params["repo"])
        if repo is None or not self.sees_account(repo.owner):
            raise HTTPError(404, "Not Found")
        if self.auth.kind == "installation":
            installation = self.fake.installation_of(self.auth)
            token = self.auth.token
            if not installation.covers(repo.name) or (
                    token.repositories is not None and repo.name.lower() not in token.repositories):
                raise HTTPError(404, "Not Found")
        if write and repo.data.get("archived"):
            raise HTTPError(403, ARCHIVED)
        return repo

    def require(self, permission: str, level: str) -> None:
        """GitHub's answer to an installation token without the permission an endpoint needs."""
        if not grants(self.auth.token.permissions if self.auth.token else None, permission, level):
            raise HTTPError(403, "Resource not accessible by integration")

    def visible(self, data: dict[str, Any]) -> dict[str, Any]:
        """A repository object as this token may see it (fields left out by permission)."""
        return visible_repository(data, self.auth.token.permissions if self.auth.token else None)

    def page(self, items: list[Any], wrap: Callable[[list[Any]], Any] | None = None) -> Reply:
        """Answer one page of items with GitHub's Link header."""
        per_page = max(1, min(int(self.query.get("per_page", 30)), 100))
        number = max(1, int(self.query.get("page", 1)))
        last = max(1, math.ceil(len(items) / per_page))
        chunk = items[(number - 1) * per_page:number * per_page]
        url = URL(self.request_url)

        def link(page: int, rel: str) -> str:
            return f'<{url.update_query(per_page=per_page, page=page)}>; rel="{rel}"'

        links = []
        if number > 1:
            links.append(link(min(number - 1, last), "prev"))
        if number < last:
            links.append(link(number + 1, "next"))
            links.append(link(last, "last"))
        if number > 1:
            links.append(link(1, "first"))
        headers = {"Link": ", ".join(links)} if links else {}
        return Reply(200, wrap(chunk) if wrap else chunk, headers)


# --- the App and its installations ------------------------------------------------------------
@handles("apps/get-authenticated")
def get_app(ctx: Context) -> Reply:
    return Reply(200, {**ctx.state.app, "installations_count": len(ctx.state.installations)})


@handles("apps/get-webhook-config-for-app")
def get_webhook_config(ctx: Context) -> Reply:
    config = dict(ctx.fake.hook_config)
    if config.get("secret"):
        config["secret"] = "********"  # GitHub never shows the secret, only that one is set
    return Reply(200, config)


@handles("apps/list-installations")
def list_installations(ctx: Context) -> Reply:
    items = [ctx.state.installation_object(i) for i in ctx.state.installations.values()]
    return ctx.page(items)


@handles("apps/get-installation")
def get_installation(ctx: Context) -> Reply:
    installation = ctx.state.installations.get(ctx.params["installation_id"])
    if installation is None:
        raise HTTPError(404, "Not Found")
    return Reply(200, ctx.state.installation_object(installation))


@handles("apps/get-org-installation")
def get_org_installation(ctx: Context) -> Reply:
    installation = ctx.state.accounts.get(ctx.params["org"].lower())
    if installation is None or installation.account["type"] != "Organization":
        raise HTTPError(404, "Not Found")
    return Reply(200, ctx.state.installation_object(installation))


@handles("apps/get-user-installation")
def get_user_installation(ctx: Context) -> Reply:
    installation = ctx.state.accounts.get(ctx.params["username"].lower())
    if installation is None or installation.account["type"] != "User":
        raise HTTPError(404, "Not Found")
    return Reply(200, ctx.state.installation_object(installation))


@handles("apps/get-repo-installation")
def get_repo_installation(ctx: Context) -> Reply:
    repo = ctx.state.find_repo(ctx.params["owner"], ctx.params["repo"])
    installation = ctx.state.accounts.get(ctx.params["owner"].lower())
    if repo is None or installation is None or not installation.covers(repo.name):
        raise HTTPError(404, "Not Found")
    return Reply(200, ctx.state.installation_object(installation))


@handles("apps/create-installation-access-token")
def create_access_token(ctx: Context) -> Reply:
    installation = ctx.state.installations.get(ctx.params["installation_id"])
    if installation is None:
        raise HTTPError(404, "Not Found")
    wanted: set[str] | None = None
    names = ctx.data.get("repositories")
    ids = ctx.data.get("repository_ids")
    if names is not None or ids is not None:
        visible = [r for r in ctx.state.repos_of(installation.login) if installation.covers(r.name)]
        by_name = {r.name.lower(): r for r in visible}
        by_id = {r.data["id"]: r for r in visible}
        chosen: list[Repo] = []
        for name in names or []:
            if name.lower() not in by_name:
                raise HTTPError(422, "There is at least one repository that does not exist or "
                                "is not accessible to the parent installation.")
            chosen.append(by_name[name.lower()])
        for number in ids or []:
            if number not in by_id:
                raise HTTPError(422, "There is at least one repository that does not exist or "
                                "is not accessible to the parent installation.")
            chosen.append(by_id[number])
        wanted = {r.name.lower() for r in chosen}
    permissions = ctx.data.get("permissions")
    if permissions:
        for key, level in permissions.items():
            granted = installation.permissions.get(key)
            if granted is None or (granted == "read" and level in ("write", "admin")):
                raise HTTPError(422, f"The permissions requested are not granted to this "
                                f"installation: {key}")
    token = ctx.fake._issue_token(installation.id, wanted, permissions)
    ctx.fake.tokens_issued += 1
    answer: dict[str, Any] = {
        "token": token.token, "expires_at": iso(token.expires_at),
        "permissions": dict(token.permissions),
        "repository_selection": "selected" if wanted is not None else installation.repository_selection,
    }
    if wanted is not None:
        answer["repositories"] = [ctx.state.find_repo(installation.login, n).data for n in sorted(wanted)]
    return Reply(201, answer)


@handles("apps/list-repos-accessible-to-installation")
def installation_repositories(ctx: Context) -> Reply:
    installation = ctx.fake.installation_of(ctx.auth)
    if installation is None:
        raise HTTPError(403, "You must authenticate with an installation access token in order "
                        "to list repositories for an installation.")
    token = ctx.auth.token
    repos = [ctx.visible(r.data) for r in sorted(ctx.state.repos_of(installation.login), key=lambda r: r.serial)
             if installation.covers(r.name)
             and (token.repositories is None or r.name.lower() in token.repositories)]
    return ctx.page(repos, lambda chunk: {
        "total_count": len(repos), "repository_selection": installation.repository_selection,
        "repositories": chunk})


# --- organizations -------------------------------------------------------------------------
@handles("orgs/get")
def get_org(ctx: Context) -> Reply:
    login = ctx.params["org"]
    installation = ctx.state.accounts.get(login.lower())
    if installation is None or installation.account["type"] != "Organization" \
            or not ctx.sees_account(login):
        raise HTTPError(404, "Not Found")
    org = ctx.state.organization(installation.login)
    repos = ctx.state.repos_of(login)
    org.update({
        "name": installation.login, "is_verified": False,
        "has_organization_projects": True, "has_repository_projects": True,
        "public_repos": sum(not r.data["private"] for r in repos), "public_gists": 0,
        "followers": 0, "following": 0, "html_url": installation.account["html_url"],
        "created_at": installation.created_at, "updated_at": installation.created_at,
        "archived_at": None, "type": "Organization",
        "total_private_repos": sum(bool(r.data["private"]) for r in repos),
        "owned_private_repos": sum(bool(r.data["private"]) for r in repos),
        "default_repository_permission": "read", "members_can_create_repositories": True,
        "two_factor_requirement_enabled": True, "plan": {"name": "team", "space": 976562499,
                                                          "private_repos": 999999},
    })
    return Reply(200, org)


@handles("repos/list-for-org")
def list_org_repos(ctx: Context) -> Reply:
    org = ctx.params["org"]
    if org.lower() not in ctx.state.accounts or not ctx.sees_account(org):
        raise HTTPError(404, "Not Found")
    installation = ctx.state.accounts[org.lower()]
    repos = ctx.state.repos_of(org)
    if ctx.auth.kind != "personal" and installation.selected is not None:
        repos = [r for r in repos if installation.covers(r.name)]
    kind = ctx.query.get("type", "all")
    if kind == "public":
        repos = [r for r in repos if not r.data["private"]]
    elif kind == "private":
        repos = [r for r in repos if r.data["private"]]
    elif kind == "forks":
        repos = [r for r in repos if r.data["fork"]]
    elif kind == "sources":
        repos = [r for r in repos if not r.data["fork"]]
    sort = ctx.query.get("sort", "created")
    direction = ctx.query.get("direction", "asc" if sort == "full_name" else "desc")
    keys: dict[str, Callable[[Repo], Any]] = {
        "created": lambda r: r.serial,
        "updated": lambda r: (r.data["updated_at"], r.serial),
        "pushed": lambda r: (r.data.get("pushed_at") or "", r.serial),
        "full_name": lambda r: r.data["full_name"].lower(),
    }
    repos.sort(key=keys[sort], reverse=direction == "desc")
    return ctx.page(repos, lambda chunk: [ctx.visible(r.data) for r in chunk])


@handles("rate-limit/get")
def rate_limit(ctx: Context) -> Reply:
    resources = {}
    for resource in ("core", "graphql", "search", "integration_manifest"):
        bucket = ctx.fake._bucket_for(ctx.auth, resource)
        resources[resource] = {"limit": bucket.limit, "remaining": bucket.remaining,
                               "reset": int(bucket.reset), "used": bucket.limit - bucket.remaining,
                               "resource": resource}
    return Reply(200, {"resources": resources, "rate": dict(resources["core"])})


# --- repositories --------------------------------------------------------------------------
@handles("repos/get")
def get_repo(ctx: Context) -> Reply:
    return Reply(200, ctx.visible(ctx.repo().data))


@handles("repos/update")
def update_repo(ctx: Context) -> Reply:
    repo = ctx.repo()
    ctx.require("administration", "write")
    changes = dict(ctx.data)
    data = repo.data
    if data.get("archived") and changes.get("archived") is not False:
        raise HTTPError(403, ARCHIVED)
    if "default_branch" in changes and changes["default_branch"] != data["default_branch"]:
        if changes["default_branch"] not in repo.branches:
            raise HTTPError(422, "Validation Failed", errors=[{
                "resource": "Repository", "code": "invalid", "field": "default_branch",
                "message": f"Cannot update default branch for this repository to "
                           f"{changes['default_branch']}: the branch does not exist."}])
    new_name = changes.pop("name", None)
    if new_name and new_name != repo.name:
        if ctx.state.find_repo(repo.owner, new_name) is not None:
            raise HTTPError(422, "Validation Failed", errors=[{
                "resource": "Repository", "code": "custom", "field": "name",
                "message": "name already exists on this account"}])
        ctx.state.rename_repo(repo, new_name)
    security = changes.pop("security_and_analysis", None)
    if security:
        current = data.setdefault("security_and_analysis", {})
        for feature, setting in security.items():
            current[feature] = copy.deepcopy(setting)
    if "visibility" in changes:
        changes["private"] = changes["visibility"] != "public"
    elif "private" in changes:
        changes["visibility"] = "private" if changes["private"] else "public"
    data.update(changes)
    ctx.state.touch(repo)
    return Reply(200, ctx.visible(data))


@handles("repos/list-branches")
def list_branches(ctx: Context) -> Reply:
    repo = ctx.repo()
    branches = list(repo.branches.values())
    protected = {b.name: ctx.state.classic_rule(repo, b.name) is not None
                 or bool(ctx.state.branch_rules(repo, b.name)) for b in branches}
    if "protected" in ctx.query:
        branches = [b for b in branches if protected[b.name] == ctx.query["protected"]]
    items = [{"name": b.name, "commit": {"sha": b.sha, "url": f"{repo.data['url']}/commits/{b.sha}"},
              "protected": protected[b.name]}
             for b in sorted(branches, key=lambda b: b.name)]
    return ctx.page(items)


def _branch(ctx: Context, repo: Repo) -> Any:
    branch = repo.branches.get(ctx.params["branch"])
    if branch is None:
        raise HTTPError(404, "Branch not found")
    return branch


@handles("repos/get-branch")
def get_branch(ctx: Context) -> Reply:
    repo = ctx.repo()
    return Reply(200, ctx.state.branch_object(repo, _branch(ctx, repo)))


@handles("repos/get-branch-protection")
def get_protection(ctx: Context) -> Reply:
    repo = ctx.repo()
    ctx.require("administration", "read")
    branch = _branch(ctx, repo)
    # Classic rules only: a wildcard rule answers for every branch it matches, and a branch
    # protected only by rulesets is "not protected" here (GET …/rules/branches/… lists those).
    rule = ctx.state.classic_rule(repo, branch.name)
    if rule is None:
        raise HTTPError(404, "Branch not protected")
    return Reply(200, ctx.state.protection_read(repo, branch.name, rule[1]))


@handles("repos/update-branch-protection")
def put_protection(ctx: Context) -> Reply:
    repo = ctx.repo(write=True)
    ctx.require("administration", "write")
    branch = _branch(ctx, repo)
    body = copy.deepcopy(ctx.data)
    personal_repo = repo.data["owner"]["type"] != "Organization"
    restrictions = body.get("restrictions")
    reviews = body.get("required_pull_request_reviews") or {}
    if personal_repo and (restrictions or reviews.get("dismissal_restrictions")):
        raise HTTPError(422, "Validation Failed", errors=[
            "Only organization repositories can have users and team restrictions"])
    count = reviews.get("required_approving_review_count")
    if count is not None and not 0 <= count <= 6:
        raise HTTPError(422, "Invalid request.\n\nrequired_approving_review_count must be "
                        "between 0 and 6.")
    branch.protection = body
    return Reply(200, ctx.state.protection_read(repo, branch.name, body))


@handles("repos/delete-branch-protection")
def delete_protection(ctx: Context) -> Reply:
    repo = ctx.repo(write=True)
    ctx.require("administration", "write")
    branch = _branch(ctx, repo)
    if branch.protection is None:
        if ctx.state.classic_rule(repo, branch.name) is not None:
            # Only a wildcard rule covers the branch: GitHub answers without an error and
            # changes nothing (there is no rule of this branch's own to delete).
            return Reply(204)
        raise HTTPError(404, "Branch not protected")
    branch.protection = None
    return Reply(204)


@handles("git/delete-ref")
def delete_ref(ctx: Context) -> Reply:
    """DELETE …/git/refs/{ref}: `ref` is `heads/<branch>` with the branch's slashes as they
    are. A ref that is not there is GitHub's 422 "Reference does not exist"; the default
    branch cannot be deleted (422), nor a branch an active ruleset forbids deleting."""
    repo = ctx.repo(write=True)
    ctx.require("contents", "write")
    ref = str(ctx.params["ref"])
    kind, _, name = ref.partition("/")
    if kind != "heads" or name not in repo.branches:
        raise HTTPError(422, "Reference does not exist")
    if name == repo.data["default_branch"]:
        raise HTTPError(422, "Cannot delete the default branch")
    if any(rule["type"] == "deletion" for rule in ctx.state.branch_rules(repo, name)):
        raise HTTPError(422, "Repository rule violations found\n\nCannot delete this branch")
    del repo.branches[name]
    return Reply(204)


@handles("repos/get-branch-rules")
def get_branch_rules(ctx: Context) -> Reply:
    repo = ctx.repo()
    # "The branch does not need to exist; rules that would apply to a branch with that name
    # will be returned."
    return ctx.page(ctx.state.branch_rules(repo, ctx.params["branch"]))


@handles("repos/get-collaborator-permission-level")
def get_permission(ctx: Context) -> Reply:
    repo = ctx.repo()
    login = ctx.params["username"]
    role = repo.permissions.get(login.lower(), "none")
    # `role_name` is the role itself, a custom one too; `permission` and the flags come from
    # its base role, with maintain folded into write and triage into read.
    base = ctx.state.base_role(repo.owner, role)
    user = dict(ctx.state.user(login))
    user["permissions"] = {
        "admin": base == "admin", "maintain": base in ("admin", "maintain"),
        "push": base in ("admin", "maintain", "write"),
        "triage": base in ("admin", "maintain", "write", "triage"),
        "pull": base != "none",
    }
    user["role_name"] = role
    return Reply(200, {"permission": LEGACY_PERMISSION[base], "role_name": role, "user": user})


# Either organization permission lets an App list custom repository roles (GitHub's reference).
CUSTOM_ROLES_PERMISSIONS = ("organization_custom_roles", "organization_administration")


@handles("orgs/list-custom-roles")
def list_custom_roles(ctx: Context) -> Reply:
    org = ctx.params["org"]
    installation = ctx.state.accounts.get(org.lower())
    if installation is None or installation.account["type"] != "Organization" \
            or not ctx.sees_account(org):
        raise HTTPError(404, "Not Found")
    if ctx.auth.kind == "installation" and not any(
            ctx.auth.token.permissions.get(name) in ("read", "write")
            for name in CUSTOM_ROLES_PERMISSIONS):
        raise HTTPError(403, "Resource not accessible by integration")
    roles = list(ctx.state.custom_roles.get(org.lower(), {}).values())
    return Reply(200, {"total_count": len(roles), "custom_roles": roles})


@handles("repos/get-content")
def get_content(ctx: Context) -> Reply:
    repo = ctx.repo()
    if repo.empty:
        raise HTTPError(404, "This repository is empty.")
    ref = ctx.query.get("ref") or repo.data["default_branch"]
    ref = ref.removeprefix("refs/heads/")
    files = repo.files
    if ref in repo.commits:  # a pull request's head commit, from a fork too
        files = repo.commits[ref]
    elif ref not in repo.branches and not any(b.sha == ref for b in repo.branches.values()):
        raise HTTPError(404, f"No commit found for the ref {ref}")
    path = ctx.params["path"].strip("/")
    if path in files:
        if "raw" in ctx.headers.get("accept", ""):
            return Reply(200, raw=files[path], content_type="application/vnd.github.raw")
        return Reply(200, ctx.state.content_object(repo, path, ref, files))
    listing = ctx.state.directory_listing(repo, path, ref, files)
    if listing is None:
        raise HTTPError(404, "Not Found")
    return Reply(200, listing)


# --- pull requests -----------------------------------------------------------------------------
def _pull(ctx: Context) -> Any:
    repo = ctx.repo()
    # "Pull requests" (read) is what GitHub documents for both reads.
    ctx.require("pull_requests", "read")
    pull = repo.pulls.get(ctx.params["pull_number"])
    if pull is None:
        raise HTTPError(404, "Not Found")
    return pull


@handles("pulls/get")
def get_pull(ctx: Context) -> Reply:
    return Reply(200, _pull(ctx).data)


@handles("pulls/list-files")
def list_pull_files(ctx: Context) -> Reply:
    # GitHub lists at most 3000 files of a pull request.
    return ctx.page(list(_pull(ctx).files)[:3000])


# --- checks ------------------------------------------------------------------------------------
@handles("checks/create")
def create_check_run(ctx: Context) -> Reply:
    repo = ctx.repo(write=True)
    ctx.require("checks", "write")
    body = ctx.data
    number = ctx.state.next_id()
    output = body.get("output") or {}
    run = {
        "id": number, "head_sha": body["head_sha"], "node_id": node_id("CheckRun", number),
        "external_id": body.get("external_id", ""),
        "url": f"{repo.data['url']}/check-runs/{number}",
        "html_url": f"{repo.data['html_url']}/runs/{number}",
        "details_url": body.get("details_url"), "status": body.get("status", "queued"),
        "conclusion": body.get("conclusion"), "started_at": body.get("started_at", iso()),
        "completed_at": body.get("completed_at"),
        "output": {"title": output.get("title"), "summary": output.get("summary"),
                   "text": output.get("text"), "annotations_count": len(output.get("annotations") or []),
                   "annotations_url": f"{repo.data['url']}/check-runs/{number}/annotations"},
        "name": body["name"], "check_suite": {"id": number + 1}, "app": ctx.state.app,
        "pull_requests": [],
    }
    if run["conclusion"] is not None:
        run["status"] = "completed"
        run["completed_at"] = run["completed_at"] or iso()
    repo.check_runs[number] = run
    repo.annotations[number] = list(output.get("annotations") or [])
    return Reply(201, run)


@handles("checks/update")
def update_check_run(ctx: Context) -> Reply:
    repo = ctx.repo(write=True)
    ctx.require("checks", "write")
    run = repo.check_runs.get(ctx.params["check_run_id"])
    if run is None:
        raise HTTPError(404, "Not Found")
    body = dict(ctx.data)
    output = body.pop("output", None)
    run.update({k: v for k, v in body.items() if k != "actions"})
    if output:
        run["output"].update({k: output[k] for k in ("title", "summary", "text") if k in output})
        # "Each time you update the check run, annotations are appended."
        added = repo.annotations.setdefault(run["id"], [])
        added.extend(output.get("annotations") or [])
        run["output"]["annotations_count"] = len(added)
    if run.get("conclusion") is not None:
        run["status"] = "completed"
        run["completed_at"] = run.get("completed_at") or iso()
    return Reply(200, run)


# --- issues, comments, reactions ---------------------------------------------------------------
@handles("issues/create")
def create_issue(ctx: Context) -> Reply:
    repo = ctx.repo(write=True)
    if not repo.data.get("has_issues"):
        raise HTTPError(410, "Issues are disabled for this repo")
    body = ctx.data
    labels = [label if isinstance(label, str) else label.get("name", "")
              for label in body.get("labels") or []]
    issue = ctx.state.add_issue(repo, str(body["title"]), body=body.get("body"),
                                user=ctx.actor(), labels=labels)
    issue["performed_via_github_app"] = ctx.state.app if ctx.auth.kind == "installation" else None
    return Reply(201, issue)


@handles("issues/list-for-repo")
def list_issues(ctx: Context) -> Reply:
    repo = ctx.repo()
    state = ctx.query.get("state", "open")
    issues = [i for i in repo.issues.values() if state == "all" or i["state"] == state]
    if ctx.query.get("labels"):
        wanted = set(str(ctx.query["labels"]).split(","))
        issues = [i for i in issues if wanted <= {label["name"] for label in i["labels"]}]
    if ctx.query.get("creator"):
        issues = [i for i in issues if i["user"]["login"].lower() == ctx.query["creator"].lower()]
    reverse = ctx.query.get("direction", "desc") == "desc"
    issues.sort(key=lambda i: i["number"], reverse=reverse)
    return ctx.page(issues)


def _issue(ctx: Context, repo: Repo) -> dict[str, Any]:
    issue = repo.issues.get(ctx.params["issue_number"])
    if issue is None:
        raise HTTPError(404, "Not Found")
    return issue


@handles("issues/update")
def update_issue(ctx: Context) -> Reply:
    repo = ctx.repo(write=True)
    issue = _issue(ctx, repo)
    body = dict(ctx.data)
    if "labels" in body:
        issue["labels"] = [ctx.state.label(repo, label if isinstance(label, str) else label["name"])
                           for label in body.pop("labels") or []]
    if "state" in body:
        issue["state"] = body.pop("state")
        issue["closed_at"] = iso() if issue["state"] == "closed" else None
        issue["state_reason"] = body.pop("state_reason", None) or (
            "completed" if issue["state"] == "closed" else None)
    for key in ("title", "body"):
        if key in body:
            issue[key] = body[key]
    issue["updated_at"] = iso()
    repo.data["open_issues_count"] = sum(i["state"] == "open" for i in repo.issues.values())
    repo.data["open_issues"] = repo.data["open_issues_count"]
    return Reply(200, issue)


@handles("issues/create-comment")
def create_comment(ctx: Context) -> Reply:
    repo = ctx.repo(write=True)
    issue = _issue(ctx, repo)
    comment = ctx.state.add_comment(repo, issue["number"], ctx.data["body"], ctx.actor(),
                                    app=ctx.auth.kind == "installation")
    return Reply(201, comment)


@handles("issues/list-comments")
def list_comments(ctx: Context) -> Reply:
    repo = ctx.repo()
    issue = _issue(ctx, repo)
    key = (repo.owner.lower(), repo.name.lower(), issue["number"])
    comments = [c for cid, c in ctx.state.comments.items() if ctx.state.comment_home[cid] == key]
    since = ctx.query.get("since")
    if since:
        comments = [c for c in comments if c["updated_at"] >= since]
    return ctx.page(comments)


def _comment(ctx: Context, repo: Repo) -> dict[str, Any]:
    comment_id = ctx.params["comment_id"]
    home = ctx.state.comment_home.get(comment_id)
    if home is None or home[:2] != (repo.owner.lower(), repo.name.lower()):
        raise HTTPError(404, "Not Found")
    return ctx.state.comments[comment_id]


@handles("issues/get-comment")
def get_comment(ctx: Context) -> Reply:
    repo = ctx.repo()
    return Reply(200, _comment(ctx, repo))


@handles("issues/update-comment")
def update_comment(ctx: Context) -> Reply:
    repo = ctx.repo(write=True)
    comment = _comment(ctx, repo)
    comment["body"] = ctx.data["body"]
    comment["updated_at"] = iso()
    return Reply(200, comment)


@handles("reactions/create-for-issue-comment")
def create_reaction(ctx: Context) -> Reply:
    repo = ctx.repo(write=True)
    comment = _comment(ctx, repo)
    reaction, created = ctx.state.add_reaction(comment["id"], ctx.data["content"], ctx.actor())
    return Reply(201 if created else 200, reaction)


@handles("reactions/list-for-issue-comment")
def list_reactions(ctx: Context) -> Reply:
    repo = ctx.repo()
    comment = _comment(ctx, repo)
    reactions = ctx.state.reactions.get(comment["id"], [])
    content = ctx.query.get("content")
    if content:
        reactions = [r for r in reactions if r["content"] == content]
    return ctx.page(list(reactions))


@handles("reactions/delete-for-issue-comment")
def delete_reaction(ctx: Context) -> Reply:
    repo = ctx.repo(write=True)
    comment = _comment(ctx, repo)
    if not ctx.state.remove_reaction(comment["id"], ctx.params["reaction_id"]):
        raise HTTPError(404, "Not Found")
    return Reply(204)


# --- rulesets --------------------------------------------------------------------------------
def _ruleset(ctx: Context, repo: Repo) -> dict[str, Any]:
    ruleset = repo.rulesets.get(ctx.params["ruleset_id"])
    if ruleset is None:
        raise HTTPError(404, "Not Found")
    return ruleset


# What GitHub's list of rulesets holds of each (its own example): no target, conditions, rules
# or bypass actors; those are read one ruleset at a time.
RULESET_SUMMARY = ("id", "name", "source_type", "source", "enforcement", "node_id", "_links",
                   "created_at", "updated_at")


@handles("repos/get-repo-rulesets")
def list_rulesets(ctx: Context) -> Reply:
    repo = ctx.repo()
    items = list(repo.rulesets.values())
    # includes_parents defaults to true: the organization's rulesets for this repository too.
    if str(ctx.query.get("includes_parents", "true")).lower() != "false":
        items = ctx.state.org_rulesets_for(repo) + items
    targets = ctx.query.get("targets")
    if targets:
        wanted = set(str(targets).split(",")) if isinstance(targets, str) else set(targets)
        items = [r for r in items if r["target"] in wanted]
    return ctx.page([{key: r[key] for key in RULESET_SUMMARY if key in r} for r in items])


@handles("repos/create-repo-ruleset")
def create_ruleset(ctx: Context) -> Reply:
    repo = ctx.repo(write=True)
    body = copy.deepcopy(ctx.data)
    if any(r["name"] == body["name"] for r in repo.rulesets.values()):
        raise HTTPError(422, "Validation Failed", errors=["Name must be unique"])
    ruleset = ctx.state.new_ruleset(body, source_type="Repository", source=repo.data["full_name"],
                                    api=repo.data["url"], html=repo.data["html_url"])
    repo.rulesets[ruleset["id"]] = ruleset
    return Reply(201, ruleset)


@handles("repos/get-repo-ruleset")
def get_ruleset(ctx: Context) -> Reply:
    return Reply(200, _ruleset(ctx, ctx.repo()))


@handles("repos/update-repo-ruleset")
def update_ruleset(ctx: Context) -> Reply:
    repo = ctx.repo(write=True)
    ruleset = _ruleset(ctx, repo)
    body = copy.deepcopy(ctx.data or {})
    if any(r["name"] == body.get("name") and r is not ruleset for r in repo.rulesets.values()):
        raise HTTPError(422, "Validation Failed", errors=["Name must be unique"])
    ruleset.update(body)
    ruleset["updated_at"] = iso()
    return Reply(200, ruleset)


@handles("repos/delete-repo-ruleset")
def delete_ruleset(ctx: Context) -> Reply:
    repo = ctx.repo(write=True)
    _ruleset(ctx, repo)
    del repo.rulesets[ctx.params["ruleset_id"]]
    return Reply(204)


def decode_content(item: dict[str, Any]) -> str:
    """The text of a contents-API file object (helper for tests)."""
    return base64.b64decode(item["content"]).decode()
