"""The ping event GitHub sends when the App's webhook is set up."""

from __future__ import annotations

from gidgethub.routing import Router
from gidgethub.sansio import Event

from bot.context import EventContext

router = Router()


@router.register("ping")
async def acknowledge_ping(event: Event, ctx: EventContext) -> None:
    ctx.log.info("ping", zen=event.data.get("zen"), hook_id=event.data.get("hook_id"))
