"""Limits on what HTTP clients can hold: connections at once, time to send, unverified bytes.

aiohttp's keep-alive timer runs from a connection's opening, and again from each answer,
until the next request's headers are complete: one knob that limits both the time to send
headers and how long an idle keep-alive connection stays open. A cap on connections and a
budget of unverified body bytes are not in aiohttp, so they are here.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol, cast

from aiohttp import web

from bot.metrics import CONNECTIONS_REFUSED

# A body this large or smaller is "small": it may use the whole unverified budget. Larger
# ones may not take its last quarter, so big unsigned posts never crowd out GitHub's usual
# deliveries (a few KB each).
SMALL_BODY = 1024 * 1024

# Large bodies, all together, are read at most this fast before their signature holds: a
# 25 MiB delivery then takes about 3 s, within GitHub's 10 s. At 32 MiB/s an attack of big
# unsigned posts still tripled a ping's p99 on a busy 2-core machine; at 8 MiB/s it doubled.
LARGE_BODY_RATE = 8 * 1024 * 1024
# How long a request waits for room in the unverified budget before it is answered 503.
ROOM_WAIT = 1.0

_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n"
)


def handler_args(header_timeout: float) -> dict[str, Any]:
    """aiohttp's per-connection settings: headers (and idle keep-alive) within header_timeout."""
    return {"keepalive_timeout": header_timeout}


async def answer_unread(request: web.Request, response: web.Response) -> web.StreamResponse:
    """Send an answer to a request whose body is still on its way, and close the connection.

    aiohttp would otherwise read the rest of the body and throw it away, for up to 10 s:
    reading what an unsigned client sends, as fast as it sends, is what the refusal saves.
    """
    if request.content.is_eof():
        return response  # it all came already: nothing more to read, the connection is kept
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


class PaceTime(Protocol):
    """The clock and the sleep the large-body pace runs on: the event loop's in production
    (LOOP_TIME), one a test drives, which then sees how long each read was held back
    without waiting for it."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class _LoopTime:
    """The running event loop's clock (uvloop's or asyncio's), which its timeouts use too."""

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


LOOP_TIME: PaceTime = _LoopTime()


class UnverifiedBodies:
    """Bytes of request bodies held before their signature is checked, across all requests.

    Large bodies are also read at a bounded pace: whoever posts big unsigned bodies as fast
    as the network allows would otherwise keep the process busy all the time, and on a
    shared machine a process that never sleeps waits its turn for the CPU like everything
    else, so every small delivery would wait with it.
    """

    def __init__(
        self, limit: int, *, large_rate: float = LARGE_BODY_RATE, wait: float = ROOM_WAIT, pace_time: PaceTime = LOOP_TIME
    ) -> None:
        self.limit = limit
        self.held = 0
        self._large_limit = limit - limit // 4
        self._large_rate = large_rate
        self._pace_time = pace_time
        self._wait = wait
        self._freed = asyncio.Event()
        self._next_large_read = 0.0

    def _fits(self, size: int, body_size: int) -> bool:
        room = self.limit if body_size <= SMALL_BODY else self._large_limit
        return self.held + size <= room

    def take(self, size: int, *, body_size: int) -> bool:
        """Hold size more bytes for a body that is (or has grown to) body_size; False: no room now."""
        if not self._fits(size, body_size):
            return False
        self.held += size
        return True

    async def wait_and_take(self, size: int, *, body_size: int) -> bool:
        """take(), waiting a little for room (the request meanwhile is not read); False: none came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        while not self.take(size, body_size=body_size):
            left = deadline - loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), left)
        return True

    def give_back(self, size: int) -> None:
        if size:
            self.held -= size
            freed, self._freed = self._freed, asyncio.Event()
            freed.set()

    async def pace(self, size: int) -> None:
        """Wait so that large bodies, all together, are read at most at large_rate bytes a second."""
        now = self._pace_time.monotonic()
        start = max(now, self._next_large_read)
        self._next_large_read = start + size / self._large_rate
        if start > now:
            await self._pace_time.sleep(start - now)


class _Refused(asyncio.Protocol):
    """A connection past the cap: answered 503 at once and closed, without reading it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        writer = cast(asyncio.WriteTransport, transport)  # uvloop's transports are not subclasses
        writer.write(_REFUSAL)
        writer.close()


class CappedSite(web.BaseSite):
    """A TCP listener that refuses connections past max_connections instead of queueing them,
    so that a crowd of slow clients cannot slow down the connections already served."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, max_connections: int, backlog: int = 128
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._max_connections = max_connections

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        cap = self._max_connections

        def connection() -> asyncio.BaseProtocol:
            if len(server.connections) >= cap:
                CONNECTIONS_REFUSED.inc()
                return _Refused()
            return server()

        self._server = await asyncio.get_running_loop().create_server(
            connection, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
