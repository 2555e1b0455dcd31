"""Whether the store can write, as /readyz reports it: one tiny write, its answer kept briefly.

A full disk or a read-only database still answers reads, so a read says nothing; a write
per probe would cost an fsync each, so the answer is kept for a moment and concurrent
probes share one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from bot.logs import get_logger
from bot.redact import REDACTOR
from bot.store.base import Health

log = get_logger("moko.readiness")

# How long an answer is reused, and how long one write may take before it counts as failed.
CHECK_TTL = 2.0
CHECK_TIMEOUT = 2.0


class StoreWritable:
    """Answers whether the store took a tiny write, at most one write per CHECK_TTL."""

    def __init__(
        self,
        store: Health,
        *,
        ttl: float = CHECK_TTL,
        timeout: float = CHECK_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._answer: tuple[float, bool] | None = None
        self._running: asyncio.Future[bool] | None = None

    async def ok(self) -> bool:
        if self._answer is not None and self._clock() - self._answer[0] < self._ttl:
            return self._answer[1]
        if self._running is None:
            self._running = asyncio.ensure_future(self._check())
        # Shielded: a probe that gives up does not cancel the write the others wait for.
        return await asyncio.shield(self._running)

    async def _check(self) -> bool:
        error: Exception | None = None
        try:
            await asyncio.wait_for(self._store.heartbeat(), self._timeout)
        except Exception as exc:
            error = exc
        finally:
            self._running = None
        self._answer = (self._clock(), error is None)
        if error is not None:
            # A full disk may refuse the log line as well: the answer must not depend on it.
            with contextlib.suppress(OSError):
                log.warning("store_not_writable", error=REDACTOR.text(f"{type(error).__name__}: {error}"))
        return error is None
