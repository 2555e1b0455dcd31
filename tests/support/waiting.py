"""Waiting in tests for a state to be reached, with a deadline, instead of sleeping a fixed time.

On a loaded machine a fixed sleep is either too short (the test fails for no fault of Moko's)
or far too long; waiting on the state itself is neither.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def wait_until(predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 60.0,
                     every: float = 0.02) -> None:
    """Return as soon as `predicate()` (plain or awaitable) is true; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not reached within {timeout} s")
        await asyncio.sleep(every)
