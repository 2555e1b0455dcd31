"""repository.* events: remediate new, unarchived, transferred, renamed, privatized and publicized
repositories; revert edits, and protect a new default branch."""

from __future__ import annotations

from gidgethub.routing import Router
from gidgethub.sansio import Event

from bot.context import EventContext
from handlers.common import engine_of, raise_on_failures, repository_of, run_of, sent_by_moko
from policies.concern import NEW_DEFAULT_BRANCH, SETTINGS_ONLY
from policies.engine import new_repository_state

router = Router()


@router.register("repository", action="created")
async def remediate_new_repository(event: Event, ctx: EventContext) -> None:
    repo = repository_of(event)
    # The payload holds the settings, and a new repository has no protection or rulesets to read.
    known = new_repository_state(repo.get("default_branch"))
    gh = await ctx.github()
    raise_on_failures([await engine_of(ctx).remediate(gh, run_of(event, ctx), repo, known=known)], ctx)


@router.register("repository", action="edited")
async def revert_repository_edit(event: Event, ctx: EventContext) -> None:
    """GitHub sends this for the description, homepage, topics and default branch only; the
    payload holds the settings, so they cost no read. When the default branch moved, the
    policy's ``default`` rule now means the new one: it is protected at once (its current
    protection is read, as a renamed branch keeps its rules; the named rules did not move)."""
    if await sent_by_moko(event, ctx):
        return
    repo = repository_of(event)
    scope = NEW_DEFAULT_BRANCH if "default_branch" in (event.data.get("changes") or {}) else SETTINGS_ONLY
    gh = await ctx.github()
    raise_on_failures([await engine_of(ctx).remediate(gh, run_of(event, ctx), repo, scope=scope)], ctx)


@router.register("repository", action="unarchived")
@router.register("repository", action="transferred")
@router.register("repository", action="renamed")
@router.register("repository", action="privatized")
@router.register("repository", action="publicized")
async def remediate_changed_repository(event: Event, ctx: EventContext) -> None:
    if await sent_by_moko(event, ctx):
        return
    gh = await ctx.github()
    raise_on_failures([await engine_of(ctx).remediate(gh, run_of(event, ctx), repository_of(event))], ctx)
