"""repository_ruleset.* events: put a managed ruleset back when someone changes or deletes it."""

from __future__ import annotations

from gidgethub.routing import Router
from gidgethub.sansio import Event

from bot.context import EventContext
from handlers.common import engine_of, raise_on_failures, repository_of, run_of, sent_by_moko
from policies.concern import RULESETS_ONLY

router = Router()


@router.register("repository_ruleset", action="created")
@router.register("repository_ruleset", action="edited")
@router.register("repository_ruleset", action="deleted")
async def revert_ruleset_change(event: Event, ctx: EventContext) -> None:
    # An organization's ruleset has no repository of its own to put back.
    if await sent_by_moko(event, ctx) or not isinstance(event.data.get("repository"), dict):
        return
    gh = await ctx.github()
    result = await engine_of(ctx).remediate(gh, run_of(event, ctx), repository_of(event), scope=RULESETS_ONLY)
    raise_on_failures([result], ctx)
