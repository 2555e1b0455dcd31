"""Per-installation admission to GitHub: in-flight bound, one write at a time, bulk spacing, rate-limit pacing."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache

from bot.logs import get_logger
from bot.metrics import (
    GITHUB_RATE_LIMIT_REMAINING,
    GITHUB_WAIT_SECONDS,
    GITHUB_WRITE_TURN_HELD,
    GITHUB_WRITE_TURN_WAIT,
    labelled,
)
from bot.turns import give_back_turn

if TYPE_CHECKING:
    from bot.github_client import ClientOptions, Timing

log = get_logger("moko.github")

MUTATING_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})


@dataclass(frozen=True)
class RateLimitSnapshot:
    """The primary rate limit of one resource (core, graphql, search) as GitHub last reported it."""

    resource: str
    limit: int
    remaining: int
    reset: float  # epoch seconds

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], resource: str) -> RateLimitSnapshot | None:
        try:
            return cls(
                resource=resource,
                limit=int(headers["x-ratelimit-limit"]),
                remaining=int(headers["x-ratelimit-remaining"]),
                reset=float(headers["x-ratelimit-reset"]),
            )
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True)
class Send:
    """What admission needs to know about one request."""

    method: str
    path: str  # for logs: never the full URL
    resource: str
    write: bool
    bulk: bool


@dataclass
class Admission:
    """The locks one request holds while it is sent; released once, whatever happens."""

    held: list[asyncio.Lock | asyncio.Semaphore] = field(default_factory=list)
    on_release: list[Callable[[], None]] = field(default_factory=list)

    def release(self) -> None:
        while self.held:
            self.held.pop().release()
        while self.on_release:
            self.on_release.pop()()


class EtagCache(MutableMapping[str, Any]):
    """One installation's part of the process's ETag cache: its own URLs (an answer is never
    served to another installation), with every installation's entries bounded together, the
    least recently used going first. Bounded per installation instead, the cache grew with the
    number of installations (an answer is 7–8 KiB in memory; 500 an installation was 4 MiB each)."""

    def __init__(self, shared: LRUCache[tuple[str, str], Any], label: str) -> None:
        self._shared = shared
        self._label = label

    def __getitem__(self, url: str) -> Any:
        return self._shared[(self._label, url)]

    def __setitem__(self, url: str, value: Any) -> None:
        self._shared[(self._label, url)] = value

    def __delitem__(self, url: str) -> None:
        del self._shared[(self._label, url)]

    def __iter__(self) -> Iterator[str]:
        return iter([url for label, url in list(self._shared) if label == self._label])

    def __len__(self) -> int:
        return sum(1 for label, _url in list(self._shared) if label == self._label)


class InstallationLimits:
    """State shared by every client of one installation (or of the App itself)."""

    def __init__(
        self,
        label: str,
        options: ClientOptions,
        timing: Timing,
        etags: LRUCache[tuple[str, str], Any] | None = None,
    ) -> None:
        self.label = label  # metrics and logs: the installation id, or "app"
        shared = etags if etags is not None else LRUCache(maxsize=options.etag_cache_size)
        self.etag_cache = EtagCache(shared, label)
        self._options = options
        self._timing = timing
        # One of the max_in_flight places is the write's (there is at most one at a time): a
        # write holding the installation's write turn never waits for slow reads to end.
        self._in_flight = asyncio.Semaphore(max(1, options.max_in_flight - 1))
        self._write_lock = asyncio.Lock()
        # Bulk writers queue here, not on the write lock, so a webhook's write never waits
        # behind a queue of bulk writes sleeping out their spacing.
        self._bulk_lane = asyncio.Lock()
        self._budgets: dict[str, RateLimitSnapshot] = {}
        self._last_slot: dict[str, float] = {}
        self._last_write_end = -math.inf
        self._paused_until = -math.inf
        self._write_turn_since = 0.0

    def budget(self, resource: str = "core") -> RateLimitSnapshot | None:
        return self._budgets.get(resource)

    async def admit(self, send: Send) -> Admission:
        """Wait for this request's turn; the caller must release the admission after sending."""
        admission = Admission()
        try:
            if send.write and send.bulk:
                self._give_back_if_taken(self._bulk_lane)
                await self._bulk_lane.acquire()
                admission.held.append(self._bulk_lane)
            if send.write:
                await self._acquire_write_lock(send)
                admission.held.append(self._write_lock)
                admission.on_release.append(self._write_turn_ended)
            else:
                self._give_back_if_taken(self._in_flight)
                await self._in_flight.acquire()
                admission.held.append(self._in_flight)
            await self.wait_turn(send, attempt=1)
        except BaseException:
            admission.release()
            raise
        return admission

    async def _acquire_write_lock(self, send: Send) -> None:
        while True:
            if send.bulk:
                await self._space_bulk_write(send, attempt=1)
            self._give_back_if_taken(self._write_lock)
            asked = self._timing.clock()
            await self._write_lock.acquire()
            self._write_turn_since = self._timing.clock()
            # Counted apart from the waits before sending: this is the installation's
            # writes going one at a time, the bound GitHub sets on mutations.
            GITHUB_WRITE_TURN_WAIT.inc(self._write_turn_since - asked)
            if not send.bulk or self._bulk_spacing_left() <= 0:
                return
            # Another write went out while we slept: wait again without blocking it.
            self._write_lock.release()

    def _write_turn_ended(self) -> None:
        GITHUB_WRITE_TURN_HELD.inc(self._timing.clock() - self._write_turn_since)

    @staticmethod
    def _give_back_if_taken(gate: asyncio.Lock | asyncio.Semaphore) -> None:
        """Waiting on this installation's gate: the worker can serve another installation meanwhile."""
        if gate.locked():
            give_back_turn()

    async def wait_turn(self, send: Send, *, attempt: int) -> None:
        """The waits before each attempt: a paused installation, primary-limit pacing, bulk spacing."""
        while (pause := self._paused_until - self._timing.clock()) > 0:
            await self._wait("installation_paused", pause, send, attempt)
        pacing = self._pacing_delay(send.resource)
        if pacing > 0:
            await self._wait("rate_limit_pacing", pacing, send, attempt)
        if send.write and send.bulk:
            await self._space_bulk_write(send, attempt=attempt)

    def _pacing_delay(self, resource: str) -> float:
        """Reserve this request's slot: evenly spaced so the budget lasts until the reset."""
        now = self._timing.clock()
        slot = now
        budget = self._budgets.get(resource)
        if budget is not None:
            until_reset = budget.reset - self._timing.wall_clock()
            paced = budget.remaining < self._options.rate_limit_reserve * budget.limit
            if until_reset > 0 and paced:
                interval = until_reset / max(budget.remaining, 1)
                slot = max(now, self._last_slot.get(resource, -math.inf) + interval)
                if budget.remaining <= 0:
                    slot = max(slot, now + until_reset)
        self._last_slot[resource] = max(self._last_slot.get(resource, -math.inf), slot)
        return slot - now

    def _bulk_spacing_left(self) -> float:
        return self._last_write_end + self._options.bulk_write_interval - self._timing.clock()

    async def _space_bulk_write(self, send: Send, *, attempt: int) -> None:
        while (left := self._bulk_spacing_left()) > 0:
            await self._wait("bulk_write_spacing", left, send, attempt)

    async def _wait(self, reason: str, delay: float, send: Send, attempt: int) -> None:
        log.info(
            "github_wait",
            reason=reason,
            method=send.method,
            path=send.path,
            installation=self.label,
            attempt=attempt,
            delay=round(delay, 3),
        )
        GITHUB_WAIT_SECONDS.labels(reason).inc(delay)
        give_back_turn()
        await self._timing.sleep(delay)

    def record_answer(self, send: Send, headers: Mapping[str, str]) -> None:
        """Every answer, 304s included, carries the budget as GitHub counts it; nothing is guessed."""
        budget = RateLimitSnapshot.from_headers(headers, send.resource)
        if budget is None:
            return
        self._budgets[send.resource] = budget
        if send.resource == "core":
            labelled(GITHUB_RATE_LIMIT_REMAINING, self.label).set(budget.remaining)

    def write_sent(self) -> None:
        self._last_write_end = self._timing.clock()

    def pause(self, seconds: float) -> None:
        """Hold every request of this installation (a secondary limit applies to all of them)."""
        self._paused_until = max(self._paused_until, self._timing.clock() + seconds)
