"""installation.created and installation_repositories.added: remediate every added repository;
an installation joins the continuous reconciliation when created and leaves it when deleted."""

from __future__ import annotations

from typing import Any

from gidgethub.routing import Router
from gidgethub.sansio import Event

from bot.context import EventContext
from bot.scheduler import forget_interval
from handlers.common import engine_of, raise_on_failures, run_of
from policies.reconcile import reconcile_owner, reconcile_repositories

router = Router()


async def _remediate_added(event: Event, ctx: EventContext, added: list[dict[str, Any]] | None) -> None:
    # Bulk work: GitHub asks integrators to space writes out when touching many repositories.
    gh = await ctx.github(bulk=True)
    # Settings and protection are read in GraphQL batches of 100 repositories.
    if added is None:
        owner = event.data["installation"]["account"]["login"]
        results = await reconcile_owner(engine_of(ctx), gh, run_of(event, ctx), owner)
    else:
        results = await reconcile_repositories(engine_of(ctx), gh, run_of(event, ctx), added)
    raise_on_failures(results, ctx)


@router.register("installation", action="created")
async def remediate_new_installation(event: Event, ctx: EventContext) -> None:
    installation = event.data["installation"]
    account = (installation.get("account") or {}).get("login")
    if account:  # an enterprise's installation has no repositories to reconcile
        # Reconciled now, by this delivery; its next turn comes one interval later. It joins
        # first, so that a failure here still leaves it to the cycle.
        await ctx.services.store.join_reconciliation(
            int(installation["id"]), str(account), ctx.services.settings.sweep_interval
        )
    await _remediate_added(event, ctx, event.data.get("repositories"))


@router.register("installation", action="deleted")
async def leave_deleted_installation(event: Event, ctx: EventContext) -> None:
    """No more turns for it (its audit trail stays)."""
    installation = int(event.data["installation"]["id"])
    if await ctx.services.store.leave_reconciliation(installation):
        forget_interval(installation)
        ctx.log.info("reconcile_installation_left", installation=installation)


@router.register("installation_repositories", action="added")
async def remediate_added_repositories(event: Event, ctx: EventContext) -> None:
    await _remediate_added(event, ctx, event.data.get("repositories_added") or [])
