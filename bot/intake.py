"""The webhook view: verify the signature, store the delivery, acknowledge, hand it to the workers.

Kept thin on purpose: parsing and verification are gidgethub's; everything after the
202 happens in the worker pool.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web
from gidgethub import BadRequest, ValidationFailure
from gidgethub.sansio import Event

from bot.logs import get_logger
from bot.metrics import WEBHOOKS_RECEIVED
from bot.store.base import NewDelivery, Store
from bot.worker import WorkerPool

MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MiB
RETRY_AFTER_SECONDS = "5"

log = get_logger("moko.intake")

# Headers worth keeping with the delivery; the rest (e.g. X-Hub-Signature) are not needed again.
_KEPT_HEADERS = (
    "x-github-event",
    "x-github-delivery",
    "x-github-hook-id",
    "x-github-hook-installation-target-id",
    "x-github-hook-installation-target-type",
    "user-agent",
    "content-type",
)


def _answer(status: int, event: str, outcome: str, payload: Mapping[str, object], headers: Mapping[str, str] | None = None) -> web.Response:
    WEBHOOKS_RECEIVED.labels(event=event, outcome=outcome).inc()
    return web.json_response(dict(payload), status=status, headers=headers)


def _installation_id(data: Mapping[str, object]) -> int | None:
    installation = data.get("installation")
    if isinstance(installation, dict) and isinstance(installation.get("id"), int):
        return installation["id"]
    return None


class WebhookIntake:
    """POST /api/github/webhooks."""

    def __init__(self, *, secret: str, store: Store, workers: WorkerPool, owner: str, lease_seconds: float) -> None:
        if not secret:
            # gidgethub accepts unsigned payloads when it has no secret: never run like that.
            raise ValueError("a webhook secret is required")
        self._secret = secret
        self._store = store
        self._workers = workers
        self._owner = owner
        self._lease = lease_seconds

    async def handle(self, request: web.Request) -> web.Response:
        event_name = request.headers.get("X-GitHub-Event", "unknown")
        if not self._workers.accepting:
            return _answer(503, event_name, "shutting_down", {"error": "shutting down"}, {"Retry-After": RETRY_AFTER_SECONDS})
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _answer(413, event_name, "too_large", {"error": "payload too large"})
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _answer(413, event_name, "too_large", {"error": "payload too large"})
        if len(body) > MAX_BODY:
            return _answer(413, event_name, "too_large", {"error": "payload too large"})

        # Only SHA-256 counts: gidgethub would fall back to the SHA-1 header if given it.
        signature = request.headers.get("X-Hub-Signature-256")
        if not signature:
            return _answer(401, event_name, "unsigned", {"error": "missing X-Hub-Signature-256"})
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower() != "x-hub-signature"}
        headers.setdefault("content-type", "application/json")
        try:
            event = Event.from_http(headers, body, secret=self._secret)
        except ValidationFailure:
            return _answer(401, event_name, "bad_signature", {"error": "signature does not match"})
        except KeyError as exc:
            return _answer(400, event_name, "bad_request", {"error": f"missing header {exc.args[0]}"})
        except (BadRequest, ValueError):
            return _answer(400, event_name, "bad_request", {"error": "body is not JSON"})
        if not isinstance(event.data, dict):
            return _answer(400, event_name, "bad_request", {"error": "body is not a JSON object"})
        if not event.delivery_id or not event.event:
            return _answer(400, event_name, "bad_request", {"error": "missing X-GitHub-Delivery or X-GitHub-Event"})

        if not self._workers.has_room():
            return _answer(503, event.event, "queue_full", {"error": "queue full"}, {"Retry-After": RETRY_AFTER_SECONDS})
        delivery = NewDelivery(
            id=event.delivery_id,
            event=event.event,
            installation_id=_installation_id(event.data),
            headers={k: headers[k] for k in _KEPT_HEADERS if k in headers},
            # The body as GitHub sent it; form-encoded payloads are stored as their JSON.
            body=body if headers.get("content-type", "").startswith("application/json") else json.dumps(event.data).encode(),
        )
        try:
            # Stored and claimed by this replica in one write: its own workers take it next.
            queued, claimed = await self._store.add_and_claim(delivery, self._owner, self._lease)
        except Exception as exc:
            log.error("delivery_not_stored", delivery=event.delivery_id, github_event=event.event, error=str(exc))
            return _answer(503, event.event, "store_unavailable", {"error": "store unavailable"}, {"Retry-After": RETRY_AFTER_SECONDS})
        if not queued:
            return _answer(200, event.event, "duplicate", {"status": "duplicate"})
        if claimed is not None:
            self._workers.submit(event.delivery_id, event.data, claimed)
        return _answer(202, event.event, "queued", {"delivery": event.delivery_id, "status": "queued"})
