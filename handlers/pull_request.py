"""pull_request events: a pull request in the organization's `.github` repository that changes
the policy file gets a preview (see ``policy_preview``); nothing else is done with it."""

from __future__ import annotations

from gidgethub.routing import Router
from gidgethub.sansio import Event

from bot.context import EventContext
from handlers.common import engine_of, repository_of
from handlers.policy_preview import is_policy_repository, policy_change, run_preview

router = Router()


@router.register("pull_request", action="opened")
@router.register("pull_request", action="synchronize")
@router.register("pull_request", action="reopened")
async def preview_policy_change(event: Event, ctx: EventContext) -> None:
    repo = repository_of(event)
    if not is_policy_repository(repo):
        return
    pull = event.data["pull_request"]
    owner, name = str(repo["full_name"]).split("/", 1)
    # Bulk work: the preview reads every repository of the organization.
    gh = await ctx.github(bulk=True)
    change = await policy_change(gh, owner, name, int(pull["number"]))
    if change is None:
        return
    await run_preview(gh, engine_of(ctx), ctx.installation_id, owner, name, str(pull["head"]["sha"]), change)
