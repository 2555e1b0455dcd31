"""The webhook view: verify the signature, store the delivery, acknowledge, hand it to the workers.

Kept thin on purpose, as this runs for every delivery: the body is hashed while it arrives
(bot.http_limits bounds the unverified bytes held at once and the time to send them), the
JSON parse is bot.payloads' (form-encoded bodies go through gidgethub's Event.from_http),
and everything after the 202 happens in the worker pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
from collections.abc import Mapping

from aiohttp import web
from gidgethub import BadRequest
from gidgethub.sansio import Event

from bot.github_events import event_label, payload_misfit
from bot.http_limits import SMALL_BODY, UnverifiedBodies, answer_unread
from bot.logs import get_logger
from bot.metrics import WEBHOOKS_RECEIVED, labelled
from bot.payloads import is_plain_json, parse_payload
from bot.store.base import Deliveries, NewDelivery
from bot.worker import WorkerPool

MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MiB
RETRY_AFTER_SECONDS = "5"
# Only SHA-256 counts, in GitHub's form: gidgethub would fall back to the SHA-1 header, or
# accept a "sha1=" value, and anything else (non-ASCII included) is no signature at all.
_SIGNATURE = re.compile(r"sha256=[0-9a-f]{64}")

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


def _queued(delivery_id: str, event: str) -> web.Response:
    labelled(WEBHOOKS_RECEIVED, event, "queued").inc()
    body = b'{"delivery": ' + json.dumps(delivery_id).encode() + b', "status": "queued"}'
    return web.Response(body=body, status=202, content_type="application/json")


def _busy(label: str) -> web.Response:
    return _answer(503, label, "unverified_full", {"error": "busy"}, {"Retry-After": RETRY_AFTER_SECONDS})


def _installation_id(data: Mapping[str, object]) -> int | None:
    installation = data.get("installation")
    if isinstance(installation, dict) and isinstance(installation.get("id"), int):
        return installation["id"]
    return None


class WebhookIntake:
    """POST /api/github/webhooks."""

    def __init__(
        self, *, secret: str, store: Deliveries, workers: WorkerPool, owner: str, lease_seconds: float,
        unverified: UnverifiedBodies, body_timeout: float,
    ) -> None:
        if not secret:
            # gidgethub accepts unsigned payloads when it has no secret: never run like that.
            raise ValueError("a webhook secret is required")
        # gidgethub's validate_event needs the whole body at once: the body is hashed as it
        # arrives instead, with the HMAC GitHub documents (the key's padding done once here).
        self._mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
        self._store = store
        self._workers = workers
        self._owner = owner
        self._lease = lease_seconds
        self._unverified = unverified
        self._body_timeout = body_timeout

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers = request.headers
        if not self._workers.accepting:
            return await answer_unread(request, _answer(
                503, event_label(headers.get("X-GitHub-Event", "")), "shutting_down", {"error": "shutting down"},
                {"Retry-After": RETRY_AFTER_SECONDS},
            ))
        signature = headers.get("X-Hub-Signature-256")
        if not signature:
            return await answer_unread(request, _answer(
                401, event_label(headers.get("X-GitHub-Event", "")), "unsigned", {"error": "missing X-Hub-Signature-256"}
            ))
        if _SIGNATURE.fullmatch(signature) is None:
            return await answer_unread(request, _answer(
                401, event_label(headers.get("X-GitHub-Event", "")), "bad_signature", {"error": "signature does not match"}
            ))
        length = request.content_length
        if length is not None and length > MAX_BODY:
            return await answer_unread(request, _answer(
                413, event_label(headers.get("X-GitHub-Event", "")), "too_large", {"error": "payload too large"}
            ))
        body = await self._read_verified(request, signature[7:], length)
        if not isinstance(body, bytes):
            return body

        # From here the body is GitHub's (its signature holds); its headers are not covered by
        # the signature, so they are checked against the body before anything is stored.
        event_name = headers.get("X-GitHub-Event", "")
        label = event_label(event_name)
        delivery_id = headers.get("X-GitHub-Delivery", "")
        if not event_name or not delivery_id:
            return _answer(400, label, "bad_request", {"error": "missing X-GitHub-Delivery or X-GitHub-Event"})
        # aiohttp decodes header bytes that are not UTF-8 as lone surrogates: not storable text.
        if not (event_name.isprintable() and delivery_id.isprintable()):
            return _answer(400, label, "bad_request", {"error": "X-GitHub-Delivery or X-GitHub-Event is not text"})
        content_type = headers.get("Content-Type")
        try:
            if content_type is None or is_plain_json(content_type):
                data = parse_payload(body)
                stored_body = body
            else:
                # Form-encoded (or another charset): gidgethub decodes it; it is stored as its
                # JSON. The signature was checked above, so it is not checked a second time.
                lowered = {k.lower(): v for k, v in headers.items() if not k.lower().startswith("x-hub-signature")}
                data = Event.from_http(lowered, body).data
                stored_body = json.dumps(data).encode()
        # LookupError: an unknown charset, or a form without `payload`; RecursionError: JSON
        # nested deeper than Python's parser goes.
        except (BadRequest, ValueError, LookupError, RecursionError):
            return _answer(400, label, "bad_request", {"error": "body is not JSON"})
        if not isinstance(data, dict):
            return _answer(400, label, "bad_request", {"error": "body is not a JSON object"})
        misfit = payload_misfit(event_name, data)
        if misfit is not None:
            return _answer(400, label, "mismatched", {"error": f"payload does not fit X-GitHub-Event: {misfit}"})

        if not self._workers.has_room():
            return _answer(503, label, "queue_full", {"error": "queue full"}, {"Retry-After": RETRY_AFTER_SECONDS})
        delivery = NewDelivery(
            id=delivery_id,
            event=event_name,
            installation_id=_installation_id(data),
            headers={k: headers[k] for k in _KEPT_HEADERS if k in headers and headers[k].isprintable()},
            body=stored_body,  # as GitHub sent it, unless it came form-encoded
        )
        try:
            # Stored and claimed by this replica in one write: its own workers take it next.
            queued, claimed = await self._store.add_and_claim(delivery, self._owner, self._lease)
        except Exception as exc:
            log.error("delivery_not_stored", delivery=delivery_id, github_event=event_name, error=str(exc))
            return _answer(503, label, "store_unavailable", {"error": "store unavailable"}, {"Retry-After": RETRY_AFTER_SECONDS})
        if not queued:
            return _answer(200, label, "duplicate", {"status": "duplicate"})
        if claimed is not None:
            self._workers.submit(delivery_id, data if self._workers.keeps_payloads() else None, claimed)
        return _queued(delivery_id, label)

    async def _read_verified(self, request: web.Request, digest: str, length: int | None) -> bytes | web.StreamResponse:
        """The body, hashed as it arrives, once its signature holds; otherwise the answer."""
        label = event_label(request.headers.get("X-GitHub-Event", ""))
        unverified = self._unverified
        held = 0
        if length is not None:
            if not (unverified.take(length, body_size=length) or await unverified.wait_and_take(length, body_size=length)):
                return await answer_unread(request, _busy(label))
            held = length
        mac = self._mac.copy()
        chunks: list[bytes] = []
        size = 0
        content = request.content
        try:
            # A body that came whole with its headers (GitHub's usual) waits for nothing.
            deadline = contextlib.nullcontext() if content.is_eof() else asyncio.timeout(self._body_timeout)
            async with deadline:
                while chunk := await content.readany():
                    size += len(chunk)
                    if size > MAX_BODY:
                        return await answer_unread(request, _answer(413, label, "too_large", {"error": "payload too large"}))
                    if length is None:  # chunked: held as it comes
                        if not await unverified.wait_and_take(len(chunk), body_size=size):
                            return await answer_unread(request, _busy(label))
                        held += len(chunk)
                    mac.update(chunk)
                    chunks.append(chunk)
                    if size > SMALL_BODY:
                        await unverified.pace(len(chunk))
        except TimeoutError:
            return await answer_unread(request, _answer(408, label, "too_slow", {"error": "body not received in time"}))
        finally:
            unverified.give_back(held)
        if not hmac.compare_digest(mac.hexdigest(), digest):
            return _answer(401, label, "bad_signature", {"error": "signature does not match"})
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
