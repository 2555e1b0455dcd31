"""Processing one stored delivery: rebuild the event, bind its context, dispatch it."""

from __future__ import annotations

import time
from typing import Any

import structlog
from gidgethub.routing import Router
from gidgethub.sansio import Event

from bot.context import EventContext, Services
from bot.dispatch import dispatch_event
from bot.github_events import event_label
from bot.logs import get_logger
from bot.metrics import WEBHOOK_PROCESSING_SECONDS, labelled
from bot.payloads import parse_payload
from bot.store.base import Delivery

log = get_logger("moko.processing")


def _repository(data: dict) -> str | None:
    repo = data.get("repository")
    if isinstance(repo, dict):
        return repo.get("full_name")
    return None


def _remember_permissions(services: Services, data: Any) -> None:
    """An installation object with its permissions (installation.* events) saves asking."""
    installation = data.get("installation") if isinstance(data, dict) else None
    if isinstance(installation, dict) and isinstance(installation.get("permissions"), dict):
        if isinstance(installation.get("id"), int):
            services.github.remember_permissions(installation["id"], installation["permissions"])


class DeliveryProcessor:
    """Turns a claimed delivery into handler calls; returns None when done, else the failure."""

    def __init__(self, services: Services, router: Router) -> None:
        self._services = services
        self._router = router

    async def __call__(self, delivery: Delivery, data: Any = None) -> str | None:
        started = time.perf_counter()
        if data is None:
            try:
                data = parse_payload(delivery.body)
            except ValueError:
                return "stored body is not JSON"
        event = Event(data, event=delivery.event, delivery_id=delivery.id)
        _remember_permissions(self._services, data)
        action = data.get("action") if isinstance(data, dict) else None
        bound = {
            "delivery": delivery.id,
            "_event": delivery.event,  # rendered as "event" (see bot.logs)
            "installation": delivery.installation_id,
            "repository": _repository(data),
        }
        # bind and reset by token: structlog's bound_contextvars() reads every bound variable
        # first, which is measurable at thousands of deliveries a second.
        tokens = structlog.contextvars.bind_contextvars(**bound)
        try:
            ctx = EventContext(
                services=self._services,
                delivery_id=delivery.id,
                event_name=delivery.event,
                installation_id=delivery.installation_id,
                log=log,
                trigger=f"{delivery.event}.{action}" if action else delivery.event,
                retaken=delivery.attempts > 1,
                received_at=delivery.received_at,
            )
            failures = await dispatch_event(self._router, event, ctx)
            elapsed = time.perf_counter() - started
            labelled(WEBHOOK_PROCESSING_SECONDS, event_label(delivery.event)).observe(elapsed)
            if failures:
                error = "; ".join(f"{f.handler}: {f.error}" for f in failures)
                log.warning("delivery_failed", action=action, error=error, attempts=delivery.attempts)
                return error[:2000]
            # debug: at thousands of deliveries a second a line each is mostly noise; the
            # store keeps every delivery's state and the metrics count them.
            log.debug("delivery_done", action=action, seconds=round(elapsed, 4))
            return None
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
