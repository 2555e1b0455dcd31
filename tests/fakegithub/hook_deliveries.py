"""The App's webhook deliveries, as GitHub keeps them: the fake sends a signed event to the
configured webhook URL, records each attempt (its answer, or that it failed to connect), lists
them newest first with cursor pagination, and redelivers one on request (same body, same
X-GitHub-Delivery guid, a new delivery record marked `redelivery`)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from .replies import HTTPError, Reply
from .rest import Context, handles
from .state import iso
from .webhooks import webhook_headers

# GitHub.com gives a receiver 10 seconds to answer before it records the delivery as failed.
DELIVERY_TIMEOUT = 10.0
CURSOR_PREFIX = "v1_"


@dataclass
class HookDelivery:
    """One attempt to deliver an event to the App's webhook URL."""

    id: int
    guid: str
    event: str
    action: str | None
    installation_id: int | None
    repository_id: int | None
    delivered_at: float  # epoch seconds
    redelivery: bool
    status: str  # "OK" when the receiver answered 2xx, else why it failed
    status_code: int  # the receiver's status, 0 when there was no answer
    duration: float
    body: bytes = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    def item(self) -> dict[str, Any]:
        """The "simple webhook delivery" object of GET /app/hook/deliveries."""
        return {"id": self.id, "guid": self.guid, "delivered_at": iso(self.delivered_at),
                "redelivery": self.redelivery, "duration": round(self.duration, 2),
                "status": self.status, "status_code": self.status_code, "event": self.event,
                "action": self.action, "installation_id": self.installation_id,
                "repository_id": self.repository_id, "throttled_at": None}


class HookDeliveries:
    """The deliveries of one fake GitHub's App webhook."""

    def __init__(self, fake: Any) -> None:
        self.fake = fake
        self.records: list[HookDelivery] = []
        self._next_id = 1_000_001
        self._pending: set[asyncio.Task[HookDelivery]] = set()

    async def send(self, event: str, body: bytes, *, guid: str, redelivery: bool = False,
                   delivered_at: float | None = None,
                   recorded_as: tuple[str, int] | None = None) -> HookDelivery:
        """POST the event to the configured URL and record how it went."""
        config = self.fake.hook_config
        secret = str(config.get("secret") or "")
        headers = webhook_headers(event, guid, body, secret, target_id=self.fake.app_id)
        started = time.monotonic()
        try:
            timeout = aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT)
            async with aiohttp.ClientSession(timeout=timeout) as session, \
                    session.post(str(config["url"]), data=body, headers=headers) as response:
                await response.read()
                status_code = response.status
            status = "OK" if 200 <= status_code < 300 else f"Invalid HTTP Response: {status_code}"
        except TimeoutError:
            status, status_code = "timed out", 0
        except aiohttp.ClientError:
            status, status_code = "failed to connect to host", 0
        if recorded_as is not None:  # e.g. the receiver got it but answered too late
            status, status_code = recorded_as
        payload = json.loads(body)
        record = HookDelivery(
            id=self._next_id, guid=guid, event=event, action=payload.get("action"),
            installation_id=(payload.get("installation") or {}).get("id"),
            repository_id=(payload.get("repository") or {}).get("id"),
            delivered_at=time.time() if delivered_at is None else delivered_at,
            redelivery=redelivery, status=status, status_code=status_code,
            duration=time.monotonic() - started, body=body)
        self._next_id += 1
        self.records.append(record)
        return record

    def redeliver_later(self, original: HookDelivery) -> None:
        task = asyncio.get_running_loop().create_task(
            self.send(original.event, original.body, guid=original.guid, redelivery=True))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def settled(self) -> None:
        """Wait until every redelivery asked for so far has been attempted."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


async def deliver(fake: Any, event: str, payload: dict[str, Any], *, guid: str | None = None,
                  delivered_at: float | None = None,
                  recorded_as: tuple[str, int] | None = None) -> HookDelivery:
    """Send an event to the App's webhook as GitHub would, and record the delivery."""
    body = json.dumps(payload).encode()
    return await fake.hook_deliveries.send(event, body, guid=guid or str(uuid.uuid4()),
                                           delivered_at=delivered_at, recorded_as=recorded_as)


@handles("apps/list-webhook-deliveries")
def list_deliveries(ctx: Context) -> Reply:
    """Newest first; `cursor` names the delivery a page starts at, the Link header the next."""
    items = sorted(ctx.fake.hook_deliveries.records, key=lambda d: (d.delivered_at, d.id), reverse=True)
    wanted = ctx.query.get("status")
    if wanted is not None:  # success: 200-399, failure: 400-599, as GitHub's parameter says
        low, high = (200, 399) if wanted == "success" else (400, 599)
        items = [d for d in items if low <= d.status_code <= high]
    per_page = max(1, min(int(ctx.query.get("per_page", 30)), 100))
    cursor = str(ctx.query.get("cursor") or "")
    if cursor:
        start = next((n for n, d in enumerate(items) if f"{CURSOR_PREFIX}{d.id}" == cursor), None)
        if start is None:
            raise HTTPError(400, "Invalid cursor")
        items = items[start:]
    page, rest = items[:per_page], items[per_page:]
    headers = {}
    if rest:
        url = URL(ctx.request_url).update_query(per_page=per_page, cursor=f"{CURSOR_PREFIX}{rest[0].id}")
        headers["Link"] = f'<{url}>; rel="next"'
    return Reply(200, [d.item() for d in page], headers)


@handles("apps/redeliver-webhook-delivery")
def redeliver(ctx: Context) -> Reply:
    """202 at once; the delivery is sent again in the background, as a new record."""
    wanted = ctx.params["delivery_id"]
    original = next((d for d in ctx.fake.hook_deliveries.records if d.id == wanted), None)
    if original is None:
        raise HTTPError(404, "Not Found")
    ctx.fake.hook_deliveries.redeliver_later(original)
    return Reply(202, {})
