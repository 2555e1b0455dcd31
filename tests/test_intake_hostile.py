"""Requests an attacker (or a broken sender) can make: the intake answers 4xx, stores nothing."""

from __future__ import annotations

import asyncio
import json

import pytest

from bot.store.base import DONE, FAILED, PROCESSING, QUEUED
from tests.fakegithub.webhooks import load_example, sign
from tests.support.harness import WEBHOOK_SECRET

PING = load_example("ping")
EXAMPLES = ["ping", "push", "repository.created", "installation.created", "issue_comment.created"]


async def raw_post(url: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bytes]:
    """POST with header bytes exactly as given (clients refuse to send some): status and body."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = b"POST /api/github/webhooks HTTP/1.1\r\nHost: moko\r\nConnection: close\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def signed_headers(body: bytes, *, event: bytes = b"ping", delivery: bytes = b"d-raw") -> list[tuple[bytes, bytes]]:
    return [
        (b"Content-Type", b"application/json"),
        (b"X-GitHub-Event", event),
        (b"X-GitHub-Delivery", delivery),
        (b"X-Hub-Signature-256", sign(body, WEBHOOK_SECRET).encode()),
    ]


async def nothing_stored(moko) -> bool:
    await moko.settle()
    store = moko.services.store
    return [await store.count_deliveries(state) for state in (QUEUED, PROCESSING, DONE, FAILED)] == [0, 0, 0, 0]


async def metrics_text(moko) -> str:
    async with moko.session.get(moko.url + "/metrics") as metrics:
        return await metrics.text()


async def received(moko, event: str, outcome: str) -> float:
    """moko_webhooks_received_total for one event and outcome (the registry is the process's)."""
    line = f'moko_webhooks_received_total{{event="{event}",outcome="{outcome}"}} '
    found = [row for row in (await metrics_text(moko)).splitlines() if row.startswith(line)]
    return float(found[0][len(line):]) if found else 0.0


@pytest.mark.parametrize("value", ["sha256=ünïcode", "sha256=" + "A" * 64, "sha256=" + "0" * 63, "sha256 =" + "0" * 64])
async def test_a_malformed_signature_is_401_before_the_body_is_read(moko, value):
    body = json.dumps(PING).encode()
    headers = signed_headers(body)[:-1] + [(b"X-Hub-Signature-256", value.encode())]
    status, answer = await raw_post(moko.url, headers, body)
    assert status == 401
    assert json.loads(answer) == {"error": "signature does not match"}
    assert await nothing_stored(moko)


@pytest.mark.parametrize("case", ["deep nesting", "unknown charset", "delivery id not UTF-8", "event not UTF-8"])
async def test_signed_but_malformed_requests_are_400(moko, case):
    body = json.dumps(PING).encode()
    content_type, event, delivery = b"application/json", b"ping", b"d-raw"
    if case == "deep nesting":
        body = b'{"zen": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    elif case == "unknown charset":
        content_type = b"application/json; charset=x-no-such-charset"
    elif case == "delivery id not UTF-8":
        delivery = b"d-\xff\xfe"
    else:
        event = b"pi\xc3ng"
    headers = signed_headers(body, event=event, delivery=delivery)
    headers[0] = (b"Content-Type", content_type)
    status, _ = await raw_post(moko.url, headers, body)
    assert status == 400
    assert await nothing_stored(moko)


@pytest.mark.parametrize("example", EXAMPLES)
async def test_githubs_own_payloads_fit_their_events(moko, example):
    event = example.split(".")[0]
    reply = await moko.send(event, load_example(example), delivery=f"own-{example}")
    assert reply.status == 202, reply.body


@pytest.mark.parametrize(
    ("example", "sent_as", "why"),
    [
        ("push", "repository", "every repository payload has an action"),
        ("ping", "issue_comment", "every issue_comment payload has an action"),
        ("installation.created", "push", "every push payload has a repository"),
        ("installation.created", "repository", "every repository payload has a repository"),
    ],
)
async def test_a_captured_body_replayed_as_another_event_is_400(moko, example, sent_as, why):
    # The signature covers the body only: a captured body keeps a valid signature under any
    # X-GitHub-Event. One that cannot be that event is refused, and nothing is stored.
    before = await received(moko, sent_as, "mismatched")
    reply = await moko.send(sent_as, load_example(example), delivery="replayed")
    assert reply.status == 400
    assert reply.body == {"error": f"payload does not fit X-GitHub-Event: {why}"}
    assert await moko.services.store.get_delivery("replayed") is None
    assert await received(moko, sent_as, "mismatched") == before + 1


async def test_accepted_deliveries_are_counted_under_githubs_event_names_only(moko):
    # A signed delivery of an event Moko does not know is still acknowledged (GitHub adds
    # events), but its name does not become a label.
    before = await received(moko, "unknown", "queued")
    reply = await moko.deliver("made_up_event_9c1", {"zen": "?"}, delivery="made-up")
    assert reply.status == 202
    assert (await moko.services.store.get_delivery("made-up")).event == "made_up_event_9c1"
    assert await received(moko, "unknown", "queued") == before + 1
    assert "made_up_event_9c1" not in await metrics_text(moko)
