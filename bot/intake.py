"""The webhook view: verify the signature, store the delivery, acknowledge, hand it to the workers.

Kept thin on purpose, as this runs for every delivery: the signature check is gidgethub's
(validate_event), the JSON parse is bot.payloads' (form-encoded bodies go through
gidgethub's Event.from_http), and everything after the 202 happens in the worker pool.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web
from gidgethub import BadRequest, ValidationFailure
from gidgethub.sansio import Event, validate_event

from bot.logs import get_logger
from bot.metrics import GITHUB_EVENTS, WEBHOOKS_RECEIVED, labelled
from bot.payloads import is_plain_json, parse_payload
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


def _answer(
    status: int, event: str, outcome: str, payload: Mapping[str, object], headers: Mapping[str, str] | None = None
) -> web.Response:
    labelled(WEBHOOKS_RECEIVED, event, outcome).inc()
    return web.json_response(dict(payload), status=status, headers=headers)


def _claimed_event(headers: Mapping[str, str]) -> str:
    """The event a refused request says it carries, as a metric label: only GitHub's own names."""
    name = headers.get("X-GitHub-Event", "")
    return name if name in GITHUB_EVENTS else "unknown"


def _queued(delivery_id: str, event: str) -> web.Response:
    labelled(WEBHOOKS_RECEIVED, event, "queued").inc()
    body = b'{"delivery": ' + json.dumps(delivery_id).encode() + b', "status": "queued"}'
    return web.Response(body=body, status=202, content_type="application/json")


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
        if not self._workers.accepting:
            return _answer(
                503, _claimed_event(request.headers), "shutting_down", {"error": "shutting down"},
                {"Retry-After": RETRY_AFTER_SECONDS},
            )
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _answer(413, _claimed_event(request.headers), "too_large", {"error": "payload too large"})
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _answer(413, _claimed_event(request.headers), "too_large", {"error": "payload too large"})
        if len(body) > MAX_BODY:
            return _answer(413, _claimed_event(request.headers), "too_large", {"error": "payload too large"})

        # Only SHA-256 counts: gidgethub would fall back to the SHA-1 header, or accept a
        # "sha1=" value, if given them.
        headers = request.headers
        signature = headers.get("X-Hub-Signature-256")
        if not signature:
            return _answer(401, _claimed_event(headers), "unsigned", {"error": "missing X-Hub-Signature-256"})
        if not signature.startswith("sha256="):
            return _answer(401, _claimed_event(headers), "bad_signature", {"error": "signature does not match"})
        try:
            validate_event(body, signature=signature, secret=self._secret)
        except ValidationFailure:
            return _answer(401, _claimed_event(headers), "bad_signature", {"error": "signature does not match"})
        # From here the request is GitHub's (its signature holds): its event name is trusted.
        event_name = headers.get("X-GitHub-Event", "")
        delivery_id = headers.get("X-GitHub-Delivery", "")
        if not event_name or not delivery_id:
            return _answer(
                400, event_name or "unknown", "bad_request", {"error": "missing X-GitHub-Delivery or X-GitHub-Event"}
            )
        content_type = headers.get("Content-Type")
        try:
            if content_type is None or is_plain_json(content_type):
                data = parse_payload(body)
                stored_body = body
            else:
                # Form-encoded (or another charset): gidgethub decodes it; it is stored as its JSON.
                lowered = {k.lower(): v for k, v in headers.items() if k.lower() != "x-hub-signature"}
                data = Event.from_http(lowered, body, secret=self._secret).data
                stored_body = json.dumps(data).encode()
        except (BadRequest, ValueError):
            return _answer(400, event_name, "bad_request", {"error": "body is not JSON"})
        if not isinstance(data, dict):
            return _answer(400, event_name, "bad_request", {"error": "body is not a JSON object"})

        if not self._workers.has_room():
            return _answer(503, event_name, "queue_full", {"error": "queue full"}, {"Retry-After": RETRY_AFTER_SECONDS})
        delivery = NewDelivery(
            id=delivery_id,
            event=event_name,
            installation_id=_installation_id(data),
            headers={k: headers[k] for k in _KEPT_HEADERS if k in headers},
            body=stored_body,  # as GitHub sent it, unless it came form-encoded
        )
        try:
            # Stored and claimed by this replica in one write: its own workers take it next.
            queued, claimed = await self._store.add_and_claim(delivery, self._owner, self._lease)
        except Exception as exc:
            log.error("delivery_not_stored", delivery=delivery_id, github_event=event_name, error=str(exc))
            return _answer(503, event_name, "store_unavailable", {"error": "store unavailable"}, {"Retry-After": RETRY_AFTER_SECONDS})
        if not queued:
            return _answer(200, event_name, "duplicate", {"status": "duplicate"})
        if claimed is not None:
            self._workers.submit(delivery_id, data if self._workers.keeps_payloads() else None, claimed)
        return _queued(delivery_id, event_name)
