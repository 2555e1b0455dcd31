"""push and create events: a changed policy file reconciles the installation; a new branch
(a repository's first default branch, or one a branch rule names) gets the protection that
had to wait for it."""

from __future__ import annotations

from typing import Any

from gidgethub.routing import Router
from gidgethub.sansio import Event

from bot.context import EventContext
from handlers.common import engine_of, raise_on_failures, repository_of, run_of
from policies.engine import ALL
from policies.reconcile import reconcile_owner
from policies.source import POLICY_PATH, POLICY_REPO

router = Router()
NO_COMMIT = "0" * 40


def _touched(event: Event) -> set[str]:
    paths: set[str] = set()
    for commit in [*(event.data.get("commits") or []), event.data.get("head_commit") or {}]:
        for key in ("added", "modified", "removed"):
            paths.update(commit.get(key) or [])
    return paths


def _on_default_branch(event: Event) -> bool:
    repo = repository_of(event)
    return event.data.get("ref") == f"refs/heads/{repo.get('default_branch')}"


@router.register("push")
async def reconcile_on_policy_change(event: Event, ctx: EventContext) -> None:
    repo = repository_of(event)
    if not _on_default_branch(event) or POLICY_PATH not in _touched(event):
        return
    engine = engine_of(ctx)
    owner = repo["owner"].get("login") or repo["owner"].get("name")
    if repo["name"].lower() == POLICY_REPO:
        engine.source.invalidate(ctx.installation_id, owner)
        gh = await ctx.github(bulk=True)
        ctx.log.info("policy_changed", org=owner)
        results = await reconcile_owner(engine, gh, run_of(event, ctx), owner)
        raise_on_failures(results, ctx)
    else:
        # The repository's own overrides changed: only it is concerned.
        gh = await ctx.github()
        raise_on_failures([await engine.remediate(gh, run_of(event, ctx), repo, scope=ALL)], ctx)


async def _apply_waiting_protection(event: Event, ctx: EventContext, repo: dict[str, Any], branch: str) -> None:
    gh = await ctx.github()
    result = await engine_of(ctx).apply_deferred(gh, run_of(event, ctx), repo, branch)
    if result is not None:
        raise_on_failures([result], ctx)


@router.register("push")
async def protect_first_push_of_a_branch(event: Event, ctx: EventContext) -> None:
    repo = repository_of(event)
    ref = str(event.data.get("ref") or "")
    if event.data.get("before") != NO_COMMIT or not event.data.get("created") or not ref.startswith("refs/heads/"):
        return
    await _apply_waiting_protection(event, ctx, repo, ref.removeprefix("refs/heads/"))


@router.register("create")
async def protect_created_branch(event: Event, ctx: EventContext) -> None:
    # GitHub sends both create and push for a new branch; the repository's lock and the
    # audit trail make the waiting protection go on once.
    repo = repository_of(event)
    if event.data.get("ref_type") != "branch" or not event.data.get("ref"):
        return
    await _apply_waiting_protection(event, ctx, repo, str(event.data["ref"]))
