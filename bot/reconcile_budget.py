"""How often an installation may be reconciled: MOKO_SWEEP_INTERVAL, stretched when one turn's
cost, as GitHub reported it, would spend more than MOKO_SWEEP_BUDGET of the installation's
hourly REST requests or GraphQL points, or when its limit is nearly spent until the reset."""

from __future__ import annotations

from dataclasses import dataclass

from bot.github_limits import RateLimitSnapshot

HOUR = 3600.0
# GitHub's limit for an installation before it grows with repositories and users, for a
# resource no answer has described yet.
DEFAULT_LIMIT = 5000

# Why an interval was stretched (the log line and /moko status say which).
BUDGET = "budget"
LIMIT_NEARLY_SPENT = "limit_nearly_spent"


@dataclass(frozen=True)
class TurnCost:
    """What one reconciliation turn of an installation used, and its budgets as GitHub last
    reported them (None for a resource no answer described)."""

    rest_requests: int
    graphql_points: int
    core: RateLimitSnapshot | None = None
    graphql: RateLimitSnapshot | None = None


@dataclass(frozen=True)
class Interval:
    """The interval until an installation's next turn, and why it is longer than configured."""

    seconds: float
    configured: float
    reason: str | None = None  # None: as configured

    @property
    def stretched(self) -> bool:
        return self.reason is not None


def interval_for(
    cost: TurnCost, *, configured: float, budget: float, reserve: float, elapsed: float, now: float
) -> Interval:
    """The interval (from one turn's start to the next's) that keeps the installation's
    reconciliation within `budget` of each limit per hour.

    reserve: the fraction of a limit left to webhooks and commands; when less than that
    (plus another turn) remains, the next turn waits for the reset. elapsed: how long this
    turn took; now: the wall clock (epoch seconds), against GitHub's reset times.
    """
    seconds, reason = configured, None
    for used, snapshot in ((cost.rest_requests, cost.core), (cost.graphql_points, cost.graphql)):
        limit = snapshot.limit if snapshot is not None and snapshot.limit > 0 else DEFAULT_LIMIT
        needed = used * HOUR / (budget * limit)
        if needed > seconds:
            seconds, reason = needed, BUDGET
        if snapshot is not None and used and snapshot.remaining < used + reserve * limit:
            until_reset = elapsed + max(0.0, snapshot.reset - now)
            if until_reset > seconds:
                seconds, reason = until_reset, LIMIT_NEARLY_SPENT
    return Interval(seconds, configured, reason)
