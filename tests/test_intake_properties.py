"""Property-based: whatever headers and body anyone sends, the webhook intake stays sound.

For arbitrary requests, signed with the webhook secret or not: never a 5xx other than the
documented 503s (with Retry-After), never an unhandled exception in the server, never a
stored delivery nor a request to GitHub from a request whose signature does not hold, and
every answer within REQUEST_SECONDS. Bounded (max_examples, derandomized) so the suite
stays fast and the same on every run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.github_events import GITHUB_EVENTS
from bot.store.base import DONE, FAILED, PROCESSING, QUEUED
from tests.fakegithub.webhooks import load_example, sign
from tests.support.harness import WEBHOOK_SECRET

REQUEST_SECONDS = 2.0
BOUNDED = settings(
    max_examples=80, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
EXAMPLES = [load_example(name) for name in
            ("ping", "push", "repository.created", "installation.created", "issue_comment.created")]

# Header bytes as anyone can send them: mostly what HTTP allows in a value (visible ASCII,
# space, tab, and any byte from 0x80 on), sometimes any byte but CR and LF.
_VALUE_BYTES = [9, *range(0x20, 0x7F), *range(0x80, 0x100)]
header_bytes = st.one_of(
    st.lists(st.sampled_from(_VALUE_BYTES), max_size=80).map(bytes),
    st.binary(max_size=80).filter(lambda b: b"\r" not in b and b"\n" not in b),
)
event_names = st.one_of(st.sampled_from(sorted(GITHUB_EVENTS)), header_bytes.map(lambda b: b.decode("latin-1")))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
json_objects = st.one_of(
    st.dictionaries(st.sampled_from(["action", "repository", "installation", "sender", "zen", "hook"]) | st.text(max_size=10),
                    json_values, max_size=6),
    st.sampled_from(EXAMPLES),
    st.tuples(st.sampled_from(EXAMPLES), st.sampled_from(["action", "repository", "installation"])).map(
        lambda pair: {k: v for k, v in pair[0].items() if k != pair[1]}),
)
bodies = st.one_of(
    json_objects.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=300),
    st.integers(min_value=1, max_value=200_000).map(lambda depth: b'{"a": ' + b"[" * depth + b"]" * depth + b"}"),
    st.sampled_from([b"", b"[]", b"null", b'"text"', b"{", b'{"a": 1e999999}', b'{"a": "\\ud800"}']),
)
content_types = st.one_of(
    st.none(),
    st.sampled_from([b"application/json", b"application/json; charset=utf-8", b"application/json; charset=latin-1",
                     b"application/json; charset=x-unknown", b"application/x-www-form-urlencoded", b"text/plain",
                     b"multipart/form-data; boundary=x"]),
    header_bytes,
)
requests = st.fixed_dictionaries({
    "event": event_names,
    "delivery": st.one_of(st.uuids().map(str), header_bytes.map(lambda b: b.decode("latin-1"))),
    "content_type": content_types,
    "body": bodies,
    "extra": st.lists(st.tuples(st.sampled_from([b"X-GitHub-Hook-ID", b"User-Agent", b"X-Hub-Signature",
                                                 b"X-GitHub-Hook-Installation-Target-ID"]), header_bytes), max_size=3),
})
forged_signatures = st.one_of(
    st.none(),
    header_bytes,
    st.binary(min_size=32, max_size=32).map(lambda b: b"sha256=" + b.hex().encode()),
    st.sampled_from([b"sha256=", b"sha1=abc", "sha256=\u00e9".encode()]),
)


async def send(url: str, request: dict, signature: bytes | None) -> tuple[int, bytes, float]:
    """One request over its own connection, header bytes as given: status, headers, seconds taken."""
    host, port = url.removeprefix("http://").split(":")
    body: bytes = request["body"]
    lines = [b"POST /api/github/webhooks HTTP/1.1", b"Host: moko", b"Connection: close",
             b"Content-Length: %d" % len(body), b"X-GitHub-Event: " + request["event"].encode("utf-8", "surrogateescape"),
             b"X-GitHub-Delivery: " + request["delivery"].encode("utf-8", "surrogateescape")]
    if request["content_type"] is not None:
        lines.append(b"Content-Type: " + request["content_type"])
    if signature is not None:
        lines.append(b"X-Hub-Signature-256: " + signature)
    lines += [name + b": " + value for name, value in request["extra"]]
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    seconds = time.monotonic() - started
    head = answer.partition(b"\r\n\r\n")[0]
    assert head.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), f"no HTTP answer: {answer[:200]!r}"
    return int(head.split()[1]), head, seconds


class ServerErrors(logging.Handler):
    """Errors aiohttp logs for exceptions a handler did not handle (not for requests that
    are not HTTP at all, which its parser answers 400 and logs too)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not (record.exc_info and isinstance(record.exc_info[1], HttpProcessingError)):
            self.records.append(record)


async def stored(moko) -> int:
    store = moko.services.store
    return sum([await store.count_deliveries(state) for state in (QUEUED, PROCESSING, DONE, FAILED)])


def acceptable(status: int, head: bytes) -> bool:
    return status < 500 or (status == 503 and b"Retry-After:" in head)


async def check(moko, fake_github, request: dict, signature: bytes | None, *, verified: bool) -> None:
    errors = ServerErrors()
    logging.getLogger("aiohttp.server").addHandler(errors)
    try:
        await moko.settle()
        stored_before, calls_before = await stored(moko), len(fake_github.calls)
        status, head, seconds = await send(moko.url, request, signature)
        await moko.settle()
    finally:
        logging.getLogger("aiohttp.server").removeHandler(errors)
    assert acceptable(status, head), head
    assert not errors.records, errors.records[0].getMessage()
    assert seconds < REQUEST_SECONDS
    if not verified:
        assert status not in (200, 202)
        assert await stored(moko) == stored_before
        assert len(fake_github.calls) == calls_before


@BOUNDED
@given(request=requests, signature=forged_signatures)
async def test_unsigned_or_forged_requests_are_refused_and_change_nothing(moko, fake_github, request, signature):
    await check(moko, fake_github, request, signature, verified=False)


@BOUNDED
@given(request=requests)
async def test_signed_requests_of_any_shape_never_break_the_intake(moko, fake_github, request):
    signature = sign(request["body"], WEBHOOK_SECRET).encode()
    await check(moko, fake_github, request, signature, verified=True)


@BOUNDED
@given(request=requests, tamper=st.integers(min_value=0))
async def test_a_signature_of_other_bytes_is_refused(moko, fake_github, request, tamper):
    # Signed with the right secret, but over a body that differs from the one sent by one byte.
    body = request["body"] or b"{}"
    at = tamper % len(body)
    other = body[:at] + bytes([body[at] ^ 1]) + body[at + 1:]
    await check(moko, fake_github, request | {"body": body}, sign(other, WEBHOOK_SECRET).encode(), verified=False)
