"""The intake at its edges: a body streamed without a length (chunked), a body at GitHub's
25 MiB cap, headers GitHub did not send, a database that refuses the delivery, and the pace
large bodies are read at (on a clock that only the intake's waits move, FastForwardTime: a
25 MiB body is read at full speed and the test sees the 3 s it was held back)."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
from collections.abc import AsyncIterator

import pytest

from bot.http_limits import LARGE_BODY_RATE, SMALL_BODY
from bot.store.base import DONE
from tests.fakegithub.webhooks import load_example, webhook_headers
from tests.support.harness import WEBHOOK_PATH, WEBHOOK_SECRET, moko_environ, run_moko
from tests.support.virtual_time import FastForwardTime
from tests.support.waiting import wait_until

PING = json.dumps(load_example("ping")).encode()
GITHUB_CAP = 25 * 1024 * 1024  # bytes: GitHub sends no larger payload


async def in_pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]
        await asyncio.sleep(0)


async def test_a_signed_delivery_sent_chunked_without_a_length_is_stored_and_processed(moko):
    headers = webhook_headers("ping", "chunked", PING, WEBHOOK_SECRET)
    # aiohttp sends a generator's pieces with Transfer-Encoding: chunked, and no Content-Length.
    async with moko.session.post(moko.url + WEBHOOK_PATH, data=in_pieces(PING, 100), headers=headers) as reply:
        assert reply.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert (reply.status, await reply.json()) == (202, {"delivery": "chunked", "status": "queued"})
    await moko.settle()
    stored = await moko.services.store.get_delivery("chunked")
    assert stored is not None and stored.state == DONE and stored.body == PING


async def test_a_chunked_delivery_of_a_forged_signature_is_401_and_not_stored(moko):
    headers = webhook_headers("ping", "forged", PING, "guessed")
    async with moko.session.post(moko.url + WEBHOOK_PATH, data=in_pieces(PING, 100), headers=headers) as reply:
        assert reply.status == 401
    assert await moko.services.store.get_delivery("forged") is None


@pytest.mark.parametrize(("length", "answer"), [(GITHUB_CAP, b"408"), (GITHUB_CAP + 1, b"413")])
async def test_a_body_up_to_25_mib_is_read_and_a_larger_one_refused_from_its_length(fake_github, tmp_path, length, answer):
    # Sent slower than the body's deadline: one within GitHub's cap is read, and answered 408
    # once the deadline passes; one a byte over is answered 413 at once, from its headers.
    env = moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db", MOKO_BODY_TIMEOUT="0.3")
    async with run_moko(env) as moko:
        headers = webhook_headers("ping", "at-the-cap", PING, WEBHOOK_SECRET)
        host, port = moko.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: moko\r\nContent-Length: {length}\r\n"
        writer.write((head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode() + PING)
        await writer.drain()
        status = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
        writer.close()
    assert status.startswith(b"HTTP/1.1 " + answer + b" ")


async def test_a_delivery_without_githubs_optional_headers_is_stored_with_those_it_has(moko):
    # A hook's ID and target headers are GitHub's, but a delivery is stored without them too.
    reply = await moko.deliver("ping", load_example("ping"), delivery="plain", headers={
        "X-GitHub-Hook-ID": None, "X-GitHub-Hook-Installation-Target-ID": None})
    assert reply.status == 202
    stored = await moko.services.store.get_delivery("plain")
    assert stored is not None and stored.state == DONE
    kept = {k.lower(): v for k, v in stored.headers.items()}
    assert "x-github-hook-id" not in kept and "x-github-hook-installation-target-id" not in kept
    assert (kept["x-github-delivery"], kept["x-github-event"]) == ("plain", "ping")


async def test_a_delivery_the_database_refuses_is_answered_503_for_github_to_send_again(fake_github, tmp_path):
    db = tmp_path / "moko.db"
    async with run_moko(moko_environ(fake_github, f"sqlite:///{db}")) as moko:
        with sqlite3.connect(db) as admin:  # the database refuses new rows, as a full disk would
            admin.execute("CREATE TRIGGER refuse BEFORE INSERT ON deliveries BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        refused = await moko.send("ping", load_example("ping"), delivery="refused")
        assert (refused.status, refused.body, refused.headers.get("Retry-After")) == (
            503, {"error": "store unavailable"}, "5")
        assert await moko.services.store.get_delivery("refused") is None
        with sqlite3.connect(db) as admin:
            admin.execute("DROP TRIGGER refuse")
        # GitHub's redelivery of it is taken.
        assert (await moko.deliver("ping", load_example("ping"), delivery="refused")).status == 202
        stored = await moko.services.store.get_delivery("refused")
    assert stored is not None and stored.state == DONE


def ping_of(size: int) -> bytes:
    """GitHub's ping, its zen padded to exactly size bytes."""
    bare = json.dumps({**load_example("ping"), "zen": ""}).encode()
    return json.dumps({**load_example("ping"), "zen": "x" * (size - len(bare))}).encode()


async def test_the_bytes_a_chunked_body_held_are_given_back_exactly(fake_github, tmp_path):
    env = moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db", MOKO_UNVERIFIED_MIB="1")
    async with run_moko(env) as moko:
        # Chunked, 1 MiB exactly: a small body, it may take the whole budget.
        whole = ping_of(1024 * 1024)
        headers = webhook_headers("ping", "chunked", whole, WEBHOOK_SECRET)
        async with moko.session.post(moko.url + WEBHOOK_PATH, data=in_pieces(whole, 64 * 1024), headers=headers) as reply:
            assert reply.status == 202
        # A body on its way holds 900 KiB of the budget; the rest is free again, to the byte.
        on_its_way = ping_of(900 * 1024)
        host, port = moko.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: moko\r\nContent-Length: {len(on_its_way)}\r\n"
        sent = webhook_headers("ping", "on-its-way", on_its_way, WEBHOOK_SECRET)
        writer.write((head + "".join(f"{k}: {v}\r\n" for k, v in sent.items()) + "\r\n").encode() + on_its_way[:1000])
        await writer.drain()
        try:
            rest = 1024 * 1024 - 900 * 1024
            tries = itertools.count()

            async def one_byte_over_is_busy() -> bool:  # once the 900 KiB are held
                reply = await moko.send("ping", ping_of(rest + 1), delivery=f"over-{next(tries)}")
                return (reply.status, reply.body) == (503, {"error": "busy"})

            await wait_until(one_byte_over_is_busy, timeout=10)
            assert (await moko.send("ping", ping_of(rest), delivery="fits")).status == 202
        finally:
            writer.close()


MIB = 1024 * 1024


async def test_a_signed_body_of_exactly_25_mib_is_stored_after_about_3_seconds_of_pace(fake_github, tmp_path):
    clock = FastForwardTime()
    async with run_moko(moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db"), pace_time=clock) as moko:
        body = ping_of(GITHUB_CAP)
        reply = await moko.send("ping", body, delivery="at-the-cap")
        assert (reply.status, reply.body) == (202, {"delivery": "at-the-cap", "status": "queued"})
        await moko.settle()
        stored = await moko.services.store.get_delivery("at-the-cap")
    assert stored is not None and stored.state == DONE and stored.body == body
    # Past its first MiB, read at 8 MiB a second: 3 s in all, within GitHub's 10 s. (Give or
    # take one read's share, a few hundred KiB at most: the pace starts with the read that
    # crosses the first MiB, and the clock moves by the waits before each read.)
    assert LARGE_BODY_RATE == 8 * MIB
    assert 2.9 <= clock.now <= 3.1


async def test_a_chunked_body_past_25_mib_is_answered_413_however_well_signed(fake_github, tmp_path):
    env = moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db", MOKO_BODY_TIMEOUT="10")
    async with run_moko(env, pace_time=FastForwardTime()) as moko:
        body = ping_of(GITHUB_CAP + 1)
        headers = webhook_headers("ping", "past-the-cap", body, WEBHOOK_SECRET)
        host, port = moko.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: moko\r\nTransfer-Encoding: chunked\r\n"
        writer.write((head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode())
        # Every byte of it, in 1 MiB chunks: the last byte is the one too many. (The chunk that
        # ends a chunked body is not sent: the answer is due without it.)
        for start in range(0, len(body), MIB):
            piece = body[start:start + MIB]
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        assert await moko.services.store.get_delivery("past-the-cap") is None
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 413 Request Entity Too Large"
    assert json.loads(rest.partition(b"\r\n\r\n")[2]) == {"error": "payload too large"}


async def test_bodies_up_to_1_mib_are_never_held_back_however_many_come(fake_github, tmp_path):
    clock = FastForwardTime()
    async with run_moko(moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db"), pace_time=clock) as moko:
        for n, size in enumerate([4096, 4096, 4096, SMALL_BODY, SMALL_BODY, SMALL_BODY]):
            reply = await moko.send("ping", ping_of(size), delivery=f"small-{n}")
            assert reply.status == 202
            assert clock.now == 0.0  # nothing waited
        # One byte more is a large body: read at the pace (its first MiB as fast as it comes).
        assert (await moko.send("ping", ping_of(SMALL_BODY + 1), delivery="large")).status == 202
        assert (await moko.send("ping", ping_of(2 * SMALL_BODY), delivery="larger")).status == 202
        assert clock.now > 0.0
