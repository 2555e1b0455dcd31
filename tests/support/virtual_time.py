"""Time moved by hand, for the worker pool's loops (bot.worker.PoolTime) and the store's leases.

A sleep ends only when the test moves the clock past its end, so a test runs an hour of
leases, recovery rounds and pruning in well under a second, and what it asserts before a
deadline is what Moko did up to that instant. The store is given `wall` as its clock, so a
lease the store writes runs out on the same clock the pool renews it by.

FastForwardTime is for the intake's pace of large bodies (bot.http_limits.PaceTime): every
sleep ends at once and moves the clock by its length, so a test reads how long a body was
held back, at the production rate, without waiting for it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time


class VirtualTime:
    """Monotonic and wall clocks that move only by advance(); sleepers wake in order of their end."""

    def __init__(self) -> None:
        self.now = 0.0
        self._wall_at_zero = time.time()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._slept = asyncio.Event()  # set at each new sleep

    def monotonic(self) -> float:
        return 10_000.0 + self.now  # as time.monotonic, from an origin of no meaning

    def wall(self) -> float:
        return self._wall_at_zero + self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:  # as asyncio.sleep: the loop's next turn
            await asyncio.sleep(0)
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), woken))
        self._slept.set()
        await woken

    def sleeping(self) -> int:
        """How many sleeps wait for the clock (cancelled ones not counted)."""
        return sum(not woken.done() for _, _, woken in self._sleepers)

    async def parked(self, sleepers: int, timeout: float = 10.0) -> None:
        """Wait (in real time) until that many sleeps wait for the clock: the loops that
        sleep have done what they do at this instant."""
        async with asyncio.timeout(timeout):
            while self.sleeping() < sleepers:
                self._slept.clear()
                await self._slept.wait()

    async def advance(self, seconds: float) -> None:
        """Move the clock on by seconds, waking each sleep at its end, in order, and letting
        whatever it wakes run until it sleeps again before the clock moves on."""
        end = self.now + seconds
        while self._sleepers and self._sleepers[0][0] <= end:
            waiting = self.sleeping()  # the one woken next among them: it sleeps again when done
            until, _, woken = heapq.heappop(self._sleepers)
            if woken.done():  # cancelled
                continue
            self.now = max(self.now, until)
            woken.set_result(None)
            await asyncio.sleep(0)
            await self.parked(waiting)
        self.now = end


class FastForwardTime:
    """A monotonic clock that moves only by the sleeps taken on it, each of which ends at once
    (after one turn of the loop): its time is how long the code chose to wait, in total, with
    no real waiting. For code that sleeps only when it must hold something back (the intake's
    pace), not for loops that sleep between rounds, which it would run back to back."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return 10_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)
