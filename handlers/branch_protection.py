"""branch_protection_rule.* events: put protection back when someone changes or deletes it."""

from __future__ import annotations

from gidgethub.routing import Router
from gidgethub.sansio import Event

from bot.context import EventContext
from handlers.common import engine_of, raise_on_failures, repository_of, run_of, sent_by_moko
from policies.concern import PROTECTION_ONLY

router = Router()


@router.register("branch_protection_rule", action="created")
@router.register("branch_protection_rule", action="edited")
@router.register("branch_protection_rule", action="deleted")
async def revert_protection_change(event: Event, ctx: EventContext) -> None:
    if await sent_by_moko(event, ctx):
        return
    gh = await ctx.github()
    result = await engine_of(ctx).remediate(gh, run_of(event, ctx), repository_of(event), scope=PROTECTION_ONLY)
    raise_on_failures([result], ctx)
