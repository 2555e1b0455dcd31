"""Webhook helpers for tests: real example payloads, GitHub's signatures and headers, built events."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .state import ADMIN_ONLY, MERGE_SETTINGS, State, fake_sha, iso, node_id

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
EXAMPLES = FIXTURES / "webhook-examples"
API = "https://api.github.com"
DEFAULT_APP_ID = 4242
# The only changes GitHub sends repository.edited for (its `changes` schema); toggling the
# wiki, issues, projects, merge buttons or forking sends no webhook at all.
EDITED_CHANGES = frozenset({"description", "homepage", "default_branch", "topics"})
# Never in a webhook's repository object (GitHub's own examples lack them): they are read
# through the API, with the permission they need.
NOT_IN_PAYLOADS = frozenset(MERGE_SETTINGS + ADMIN_ONLY)


def load_example(name: str) -> dict[str, Any]:
    """A real webhook body from tests/fixtures/webhook-examples (e.g. "push", "issue_comment.created")."""
    file = EXAMPLES / (name if name.endswith(".json") else f"{name}.json")
    return json.loads(file.read_text(encoding="utf-8"))


def sign(body: bytes, secret: str) -> str:
    """The `X-Hub-Signature-256` header GitHub sends: `sha256=<hex HMAC-SHA256 of the body>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def sign_sha1(body: bytes, secret: str) -> str:
    """The legacy `X-Hub-Signature` header: `sha1=<hex HMAC-SHA1 of the body>`."""
    return "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def webhook_headers(event: str, delivery_id: str | None, body: bytes, secret: str, *,
                    hook_id: int = 12312312, target_id: int = DEFAULT_APP_ID,
                    target_type: str = "integration") -> dict[str, str]:
    """Every header GitHub sends with a delivery (App webhooks target the integration)."""
    return {
        "User-Agent": "GitHub-Hookshot/6f7b2a1",
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": str(hook_id),
        "X-GitHub-Hook-Installation-Target-ID": str(target_id),
        "X-GitHub-Hook-Installation-Target-Type": target_type,
        "X-Hub-Signature": sign_sha1(body, secret),
        "X-Hub-Signature-256": sign(body, secret),
    }


def _app() -> dict[str, Any]:
    return {"id": DEFAULT_APP_ID, "slug": "moko", "client_id": "Iv1.0000000000001092",
            "node_id": node_id("Integration", DEFAULT_APP_ID), "name": "Moko",
            "html_url": "https://github.com/apps/moko", "owner": None, "description": "",
            "external_url": "https://example.com", "created_at": iso(0), "updated_at": iso(0),
            "permissions": {"administration": "write", "metadata": "read"},
            "events": ["repository"]}


def _state(owner: str, owner_type: str, installation_id: int) -> State:
    state = State(API, _app())
    state.app["owner"] = state.user("moko-dev", "Organization")
    state.add_installation(installation_id, owner, owner_type)
    return state


def _sender(state: State, sender: str | dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(sender) if isinstance(sender, dict) else copy.deepcopy(state.user(sender))


def _short_repo(repo: dict[str, Any]) -> dict[str, Any]:
    return {k: repo[k] for k in ("id", "node_id", "name", "full_name", "private")}


def _rule(repo: dict[str, Any], branch: str, protection: dict[str, Any] | None) -> dict[str, Any]:
    """A branch_protection_rule webhook `rule` for a protection written in PUT shape."""
    body = protection or {}
    reviews = body.get("required_pull_request_reviews")
    checks = body.get("required_status_checks")
    admins = bool(body.get("enforce_admins"))
    level = "everyone" if admins else "non_admins"
    now = iso()
    return {
        "id": int(fake_sha(repo["full_name"], branch)[:7], 16), "repository_id": repo["id"],
        "name": branch, "created_at": now, "updated_at": now,
        "pull_request_reviews_enforcement_level": level if reviews is not None else "off",
        "required_approving_review_count": int((reviews or {}).get("required_approving_review_count", 0)),
        "dismiss_stale_reviews_on_push": bool((reviews or {}).get("dismiss_stale_reviews")),
        "require_code_owner_review": bool((reviews or {}).get("require_code_owner_reviews")),
        "require_last_push_approval": bool((reviews or {}).get("require_last_push_approval")),
        "authorized_dismissal_actors_only": False,
        "ignore_approvals_from_contributors": False,
        "required_status_checks": list((checks or {}).get("contexts") or []),
        "required_status_checks_enforcement_level": level if checks is not None else "off",
        "strict_required_status_checks_policy": bool((checks or {}).get("strict")),
        "signature_requirement_enforcement_level": "off",
        "linear_history_requirement_enforcement_level":
            level if body.get("required_linear_history") else "off",
        "lock_branch_enforcement_level": level if body.get("lock_branch") else "off",
        "lock_allows_fork_sync": bool(body.get("allow_fork_syncing")),
        "admin_enforced": admins,
        "allow_force_pushes_enforcement_level": "everyone" if body.get("allow_force_pushes") else "off",
        "allow_deletions_enforcement_level": "everyone" if body.get("allow_deletions") else "off",
        "merge_queue_enforcement_level": "off",
        "required_deployments_enforcement_level": "off",
        "required_conversation_resolution_level":
            level if body.get("required_conversation_resolution") else "off",
        "authorized_actors_only": body.get("restrictions") is not None,
        "authorized_actor_names": list((body.get("restrictions") or {}).get("users") or []),
        "create_protected": bool(body.get("block_creations")),
    }


def _epoch(stamp: str) -> int:
    return int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


def _installation(state: State, owner: str, owner_type: str,
                  installation_id: int) -> dict[str, Any]:
    """A full installation object (ISO timestamps, as the schema says; real ones are epochs)."""
    installation = load_example("installation.created")["installation"]
    account = state.user(owner, owner_type)
    installation.update({
        "id": installation_id, "account": copy.deepcopy(account), "app_id": DEFAULT_APP_ID,
        "app_slug": "moko", "client_id": _app()["client_id"], "target_id": account["id"],
        "target_type": owner_type, "repository_selection": "all",
        "access_tokens_url": f"{API}/app/installations/{installation_id}/access_tokens",
        "html_url": f"https://github.com/organizations/{owner}/settings/installations/{installation_id}",
        "created_at": iso(), "updated_at": iso(),
    })
    return installation


def build_event(event: str, action: str | None = None, *, owner: str = "acme",
                owner_type: str = "Organization", repo: str = "widgets",
                repository: dict[str, Any] | None = None, installation_id: int = 1,
                sender: str | dict[str, Any] = "octocat", **overrides: Any) -> dict[str, Any]:
    """A schema-valid webhook payload, built on GitHub's real examples.

    `repository` may be a full REST repository (e.g. `fake.repo(...)`) or a dict of settings
    to apply to a generated one. Per event: `changes` (repository.edited/renamed/transferred,
    branch_protection_rule.edited), `branch` and `protection` (a PUT-shape body) for
    branch_protection_rule, `ref` for create/push, `modified`/`added`/`removed` file lists for
    push, `body`/`user`/`issue_number` for issue_comment, `repositories_added` (names or
    repository dicts) for installation_repositories, `pull_request` (a REST pull request, e.g.
    `fake.pull_request(...)`) for pull_request, `ruleset` (a ruleset as the REST API answers it,
    e.g. from `fake.rulesets(...)`) and `changes` (edited) for repository_ruleset. Any other keyword replaces that
    top-level key of the payload.
    """
    state = _state(owner, owner_type, installation_id)
    if repository is not None and "full_name" in repository:
        repo_obj = copy.deepcopy(repository)
    else:
        repo_obj = copy.deepcopy(state.add_repo(owner, repo, empty=False, default_branch="main",
                                                fields=dict(repository or {})).data)
    for key in NOT_IN_PAYLOADS:
        repo_obj.pop(key, None)
    repo_obj.setdefault("master_branch", repo_obj.get("default_branch", "main"))
    payload: dict[str, Any] = {}
    if action is not None:
        payload["action"] = action
    base: dict[str, Any] = {"repository": repo_obj}
    if owner_type == "Organization":
        base["organization"] = state.organization(owner)
    base["installation"] = {"id": installation_id,
                            "node_id": node_id("IntegrationInstallation", installation_id)}
    base["sender"] = _sender(state, sender)
    kind = f"{event}.{action}" if action else event

    if event == "ping":
        payload = load_example("ping")
    elif event == "repository":
        payload.update(base)
        if action == "edited":
            payload["changes"] = overrides.pop("changes", {"description": {"from": None}})
            unsent = set(payload["changes"]) - EDITED_CHANGES
            if unsent or not payload["changes"]:
                raise ValueError(
                    f"GitHub sends repository.edited only for {sorted(EDITED_CHANGES)}, not for "
                    f"{sorted(unsent) or 'no change'}: a settings toggle sends no webhook")
        elif action == "renamed":
            payload["changes"] = overrides.pop(
                "changes", {"repository": {"name": {"from": f"{repo_obj['name']}-old"}}})
        elif action == "transferred":
            payload["changes"] = overrides.pop("changes", {"owner": {"from": {
                "user": copy.deepcopy(state.user("previous-owner"))}}})
    elif event == "branch_protection_rule":
        payload.update(base)
        branch = overrides.pop("branch", repo_obj.get("default_branch", "main"))
        protection = overrides.pop("protection", None)
        rule = _rule(repo_obj, branch, protection)
        rule.update(overrides.pop("rule", {}))
        payload["rule"] = rule
        if action == "edited":
            payload["changes"] = overrides.pop(
                "changes", {"required_approving_review_count": {"from": 0}})
    elif event == "repository_ruleset":
        payload.update(base)
        ruleset = copy.deepcopy(overrides.pop("ruleset"))
        # The payload holds the ruleset as the REST API answers it, less the reader's view.
        ruleset.pop("current_user_can_bypass", None)
        payload["repository_ruleset"] = ruleset
        if action == "edited":
            payload["changes"] = overrides.pop("changes", {"enforcement": {"from": "disabled"}})
    elif event == "create":
        payload.update(base)
        payload.update({"ref": overrides.pop("ref", repo_obj.get("default_branch", "main")),
                        "ref_type": overrides.pop("ref_type", "branch"),
                        "master_branch": repo_obj.get("default_branch", "main"),
                        "description": repo_obj.get("description"), "pusher_type": "user"})
    elif event == "push":
        payload.update(load_example("push"))
        payload.update(base)
        ref = overrides.pop("ref", f"refs/heads/{repo_obj.get('default_branch', 'main')}")
        before = overrides.pop("before", fake_sha(repo_obj["full_name"], "before"))
        after = overrides.pop("after", fake_sha(repo_obj["full_name"], "after", ref))
        files = {key: list(overrides.pop(key, [])) for key in ("added", "removed", "modified")}
        commit = copy.deepcopy(payload["commits"][0]) if payload.get("commits") else {}
        author = {"name": base["sender"]["login"], "email": f"{base['sender']['login']}@example.com",
                  "username": base["sender"]["login"]}
        commit.update({"id": after, "tree_id": fake_sha(after, "tree"), "distinct": True,
                       "message": "Update files", "timestamp": iso(),
                       "url": f"{repo_obj['html_url']}/commit/{after}",
                       "author": author, "committer": author, **files})
        payload.update({
            "ref": ref, "before": before, "after": after,
            "created": before == "0" * 40, "deleted": False, "forced": False, "base_ref": None,
            "compare": f"{repo_obj['html_url']}/compare/{before[:12]}...{after[:12]}",
            "commits": [commit], "head_commit": commit,
            "pusher": {"name": base["sender"]["login"],
                       "email": f"{base['sender']['login']}@example.com"},
        })
        # Push payloads carry the repository in an older shape: the organization as its
        # login, and created_at/pushed_at as epoch seconds.
        repo_obj.setdefault("stargazers", repo_obj.get("stargazers_count", 0))
        if isinstance(repo_obj.get("organization"), dict):
            repo_obj["organization"] = repo_obj["organization"]["login"]
        for key in ("created_at", "pushed_at"):
            if isinstance(repo_obj.get(key), str):
                repo_obj[key] = _epoch(repo_obj[key])
        repo_obj["owner"] = {**repo_obj["owner"], "name": repo_obj["owner"]["login"],
                             "email": None}
    elif event == "installation":
        payload.update({k: base[k] for k in ("sender",)})
        payload["installation"] = overrides.pop("installation", None) or _installation(
            state, owner, owner_type, installation_id)
        payload["repositories"] = [_short_repo(repo_obj)]
        payload["requester"] = None
    elif event == "installation_repositories":
        payload["sender"] = base["sender"]
        payload["installation"] = overrides.pop("installation", None) or _installation(
            state, owner, owner_type, installation_id)
        if owner_type == "Organization":
            payload["organization"] = base["organization"]
        added = overrides.pop("repositories_added", [repo_obj])
        items = []
        for item in added:
            if isinstance(item, str):
                item = state.add_repo(owner, item, empty=False, default_branch="main",
                                      fields={}).data
            items.append(_short_repo(item))
        payload.update({"repository_selection": overrides.pop("repository_selection", "selected"),
                        "repositories_added": items,
                        "repositories_removed": overrides.pop("repositories_removed", []),
                        "requester": None})
    elif event == "issue_comment":
        example = load_example("issue_comment.created")
        payload.update(base)
        user = overrides.pop("user", base["sender"]["login"])
        number = overrides.pop("issue_number", 1)
        body = overrides.pop("body", "/moko help")
        issue = overrides.pop("issue", None)
        if issue is None:
            home = state.find_repo(owner, repo_obj["name"]) or state.add_repo(
                owner, repo_obj["name"], empty=False, default_branch="main", fields={})
            issue = copy.deepcopy(example["issue"])
            issue.update(state.add_issue(home, "An issue", user=user, number=number))
        comment = overrides.pop("comment", None)
        if comment is None:
            comment = copy.deepcopy(example["comment"])
            comment_id = int(fake_sha(repo_obj["full_name"], number, body, iso())[:8], 16)
            comment.update({
                "id": comment_id, "node_id": node_id("IssueComment", comment_id), "body": body,
                "user": copy.deepcopy(state.user(user)),
                "url": f"{repo_obj['url']}/issues/comments/{comment_id}",
                "html_url": f"{issue['html_url']}#issuecomment-{comment_id}",
                "issue_url": issue["url"], "created_at": iso(), "updated_at": iso(),
                "author_association": "MEMBER",
            })
        payload["issue"] = copy.deepcopy(issue)
        payload["comment"] = copy.deepcopy(comment)
        if action == "edited":
            payload["changes"] = overrides.pop("changes", {"body": {"from": ""}})
    elif event == "pull_request":
        payload.update(base)
        pull = copy.deepcopy(overrides.pop("pull_request"))
        payload["number"] = pull["number"]
        payload["pull_request"] = pull
        if action == "synchronize":
            payload["before"] = overrides.pop("before", fake_sha(pull["head"]["sha"], "before"))
            payload["after"] = pull["head"]["sha"]
    else:
        raise ValueError(f"build_event does not know {kind}")
    payload.update(overrides)
    return payload
