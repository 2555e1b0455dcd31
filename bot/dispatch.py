"""Dispatch of one event to every matching handler, each on its own.

gidgethub's Router.dispatch runs callbacks in random order and stops at the first
exception; here every callback runs, a failing one neither hides nor stops another,
and each outcome is counted.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from gidgethub.routing import Router
from gidgethub.sansio import Event

from bot.context import EventContext
from bot.metrics import HANDLER_OUTCOMES, labelled
from bot.redact import REDACTOR


@dataclass(frozen=True)
class HandlerFailure:
    """A handler that raised, and what it said."""

    handler: str
    error: str


@functools.cache
def handler_name(callback: object) -> str:
    module = getattr(callback, "__module__", "?")
    return f"{module}.{getattr(callback, '__qualname__', repr(callback))}"


async def dispatch_event(router: Router, event: Event, ctx: EventContext) -> list[HandlerFailure]:
    """Run every callback the router has for the event; return the ones that failed."""
    failures: list[HandlerFailure] = []
    # A stable order makes logs comparable between runs; no handler may rely on it.
    for callback in sorted(router.fetch(event), key=handler_name):
        name = handler_name(callback)
        try:
            await callback(event, ctx)
        except Exception as exc:
            message = REDACTOR.text(f"{type(exc).__name__}: {exc}")
            ctx.log.error("handler_failed", handler=name, error=message, exc_info=True)
            labelled(HANDLER_OUTCOMES, name, "failed").inc()
            failures.append(HandlerFailure(name, message))
        else:
            labelled(HANDLER_OUTCOMES, name, "ok").inc()
    return failures
