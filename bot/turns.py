"""Workers' turns: work about to wait on its installation (its write turn, its share of requests,
a pause, a late answer) gives its worker back, so the workers go to installations that can progress.

The worker pool sets a turn in each worker task's context; the GitHub client's admission calls
give_back_turn() before it waits. Outside a worker (the CLI, a sweep) there is no turn and the
call does nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar, Token


class Turn:
    """One worker's hold on a delivery; given back at most once."""

    __slots__ = ("given_back", "_on_give_back")

    def __init__(self, on_give_back: Callable[[], None]) -> None:
        self.given_back = False
        self._on_give_back = on_give_back

    def give_back(self) -> None:
        if not self.given_back:
            self.given_back = True
            self._on_give_back()


_TURN: ContextVar[Turn | None] = ContextVar("moko_worker_turn", default=None)


def hold_turn(turn: Turn) -> Token[Turn | None]:
    """Make turn the one the current task (and the tasks it starts) gives back."""
    return _TURN.set(turn)


def give_back_if_late(seconds: float) -> asyncio.TimerHandle | None:
    """The caller awaits an answer: if it is not in within seconds, give the worker back (a
    late answer would hold it while other installations' work waits). Cancel the handle once
    the answer is in."""
    turn = _TURN.get()
    if turn is None or turn.given_back:
        return None
    return asyncio.get_running_loop().call_later(seconds, turn.give_back)


def give_back_turn() -> None:
    """The caller is about to wait on its installation: let its worker take other work."""
    turn = _TURN.get()
    if turn is not None:
        turn.give_back()
