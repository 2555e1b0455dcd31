"""What the handler modules share: the engine, the run of a delivery, loop and failure checks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gidgethub.sansio import Event

from bot.context import EventContext, Services
from bot.outcomes import Outcome
from policies.apply import Run
from policies.engine import PolicyEngine, RepoResult


class RemediationFailed(Exception):
    """Some repository's remediation failed: the delivery ends failed (and may be redelivered)."""


def engine_of(ctx: EventContext) -> PolicyEngine:
    return engine_of_services(ctx.services)


def engine_of_services(services: Services) -> PolicyEngine:
    if services.engine is None:
        raise RuntimeError("the policy engine was not installed on the services")
    return services.engine


def run_of(event: Event, ctx: EventContext) -> Run:
    sender = event.data.get("sender") or {}
    return Run(
        run_id=ctx.delivery_id,
        trigger=ctx.trigger,
        actor=str(sender.get("login") or "github"),
        installation=ctx.installation_id,
        retaken=ctx.retaken,
        observed_at=ctx.received_at,
    )


async def sent_by_moko(event: Event, ctx: EventContext) -> bool:
    """Whether Moko's own bot account sent the event: its own changes start no new round."""
    sender = event.data.get("sender") or {}
    login = str(sender.get("login") or "")
    if sender.get("type") != "Bot" or not login.endswith("[bot]"):
        # A person, or a Bot account not named like an App's bot (Copilot): not Moko, whose
        # events come from "<app slug>[bot]", a Bot. No need to ask GitHub who Moko is.
        return False
    return login.lower() == (await ctx.services.github.bot_login()).lower()


def raise_on_failures(results: Iterable[RepoResult], ctx: EventContext) -> None:
    results = list(results)
    for result in results:
        ctx.log.info(
            "repository_remediated",
            repo=result.repo,
            outcome=result.outcome,
            changes=len(result.changes),
            dry_run=result.dry_run,
            **({"error": result.error} if result.error else {}),
        )
    failed = [r for r in results if r.outcome == Outcome.FAILED]
    if failed:
        raise RemediationFailed("; ".join(f"{r.repo}: {r.error}" for r in failed))


def repository_of(event: Event) -> dict[str, Any]:
    return event.data["repository"]
