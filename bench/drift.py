"""Drift without webhooks, fixed by the continuous reconciliation of a real `moko serve`:
time from drift to fix, and what the reconciliation costs against the installation's limits.

The fake GitHub (tests/fakegithub, with GitHub's rate-limit arithmetic: 5,000 REST requests
and 5,000 GraphQL points an hour per installation, a query's cost from its connections) runs
in this process with one organization of N compliant repositories; `moko serve` runs as its
own process against it, on a fresh SQLite file, with the default MOKO_SWEEP_BUDGET (0.10).
After Moko's first turn, the wiki is turned on in the fake's state directly (GitHub sends no
webhook for that) in random repositories at random moments (a Poisson process), for
--seconds or the interval the budget allowed, whichever is longer; a drift is fixed when
Moko's PATCH turns it off again. The run ends once every drift is fixed, or an interval and
two minutes after the last drift.

What each run reports:
- time from drift to fix, p50 and p99 (with few drifts, p99 is the slowest);
- REST requests and GraphQL points the installation used, as the fake's budgets count them,
  between the end of Moko's first measured turn and the end of its last: whole cycles,
  extrapolated to an hour;
- the interval the budget allowed (`moko_reconcile_interval_seconds`, and whether Moko
  logged `reconcile_interval_stretched`).

    python bench/drift.py                                # 1,000 and 10,000 repositories
    python bench/drift.py --repositories 1000 --interval 60s --seconds 240 --drifts-per-minute 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakegithub.graphql import get_schema  # noqa: E402
from tests.fakegithub.server import FakeGitHub  # noqa: E402
from tests.support.harness import moko_environ, start_moko_process  # noqa: E402
from tests.support.org import COMPLIANT, ORG  # noqa: E402
from tests.support.org import DEFAULT_PROTECTION as PROTECTION  # noqa: E402

INSTALLATION = 1
HOUR = 3600.0
LIMIT = 5000  # GitHub's hourly limit of an installation, REST requests and GraphQL points alike
_GAUGE = re.compile(r'^moko_reconcile_interval_seconds\{installation="1"\} (\S+)$', re.M)


@dataclass
class Turn:
    """One reconciliation turn as Moko logged it, and the fake's budgets when it was seen."""

    seen: float  # monotonic
    rest_used: int
    graphql_used: int
    logged: dict[str, Any]


@dataclass
class Run:
    repositories: int
    interval: str
    seconds: float
    drifts_per_minute: float
    drifted_at: dict[str, float] = field(default_factory=dict)  # repository -> monotonic
    fixed_at: dict[str, float] = field(default_factory=dict)
    turns: list[Turn] = field(default_factory=list)
    stretched: list[dict[str, Any]] = field(default_factory=list)
    gauge: float | None = None


def used(fake: FakeGitHub, resource: str) -> int:
    return int(fake.rate_limit(INSTALLATION, resource)["used"])


def build(fake: FakeGitHub, repositories: int) -> list[str]:
    fake.add_installation(INSTALLATION, ORG)
    names = [f"repo-{i:05d}" for i in range(repositories)]
    for name in names:
        fake.add_repo(ORG, name, **COMPLIANT)
        fake.set_protection(ORG, name, "main", PROTECTION)
    return names


def watch_fixes(fake: FakeGitHub, run: Run) -> None:
    """A drift is fixed when Moko's PATCH of that repository has turned its wiki off."""
    prefix = f"/repos/{ORG}/"

    def hook(call: Any) -> None:
        if call.method != "PATCH" or call.status != 200 or not call.path.startswith(prefix):
            return
        name = call.path[len(prefix):]
        if name in run.drifted_at and name not in run.fixed_at and fake.repo(ORG, name)["has_wiki"] is False:
            run.fixed_at[name] = time.monotonic()

    fake.on_request(hook)


async def follow_log(path: Path, fake: FakeGitHub, run: Run, stop: asyncio.Event) -> None:
    """Each finished turn, with the fake's budgets as they stand when it is seen (every 0.1 s)."""
    offset = 0
    while not stop.is_set():
        with path.open("rb") as log:
            log.seek(offset)
            chunk = log.read()
        complete = chunk.rfind(b"\n") + 1
        offset += complete
        for line in chunk[:complete].decode(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry.get("message") == "reconcile_turn_finished":
                run.turns.append(Turn(time.monotonic(), used(fake, "core"), used(fake, "graphql"), entry))
            elif entry.get("message") == "reconcile_interval_stretched":
                run.stretched.append(entry)
        await asyncio.sleep(0.1)


async def inject(fake: FakeGitHub, names: list[str], run: Run, until: float, rng: random.Random) -> None:
    """Turn the wiki on in a random compliant repository at random moments (a Poisson process)."""
    rate = run.drifts_per_minute / 60.0
    while True:
        await asyncio.sleep(rng.expovariate(rate))
        if time.monotonic() >= until:
            return
        name = rng.choice([n for n in names if n not in run.drifted_at])
        fake.repo(ORG, name)["has_wiki"] = True
        run.drifted_at[name] = time.monotonic()


async def measure(run: Run, seed: int) -> Run:
    get_schema()  # built once per process (seconds): not part of what is measured
    fake = FakeGitHub()
    await fake.start()
    names = build(fake, run.repositories)
    watch_fixes(fake, run)
    stop = asyncio.Event()
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "moko.log"
        env = moko_environ(fake, f"sqlite:///{tmp}/moko.db", MOKO_SWEEP_INTERVAL=run.interval,
                           LOG_LEVEL="info", LOG_FORMAT="json", PYTHONUNBUFFERED="1")
        moko = await start_moko_process(env, log_path)
        follower = asyncio.create_task(follow_log(log_path, fake, run, stop))
        try:
            started = time.monotonic()
            while not run.turns:  # the first turn: the organization as Moko first finds it
                if time.monotonic() - started > run.seconds:
                    raise RuntimeError(f"no reconciliation turn in {run.seconds:.0f} s")
                await asyncio.sleep(0.2)
            first_turn = time.monotonic()
            # The interval the budget allows, as the first turn set it: drift is injected for at
            # least that long, so drifts fall at every moment of a cycle.
            logged = run.turns[0].logged
            allowed = float(logged.get("seconds", 0.0)) + float(logged.get("next_in_seconds", 0.0))
            await inject(fake, names, run, first_turn + max(run.seconds, allowed), random.Random(seed))
            # The last drifts are found by the next turn: at most an interval, and its sweep.
            deadline = time.monotonic() + allowed + 120.0
            while len(run.fixed_at) < len(run.drifted_at) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            # The turn that made the last fix ends the measured cycles: wait for it to finish.
            last_fix = max(run.fixed_at.values(), default=first_turn)
            while run.turns[-1].seen < last_fix and time.monotonic() < deadline + 120.0:
                await asyncio.sleep(0.2)


            async with aiohttp.ClientSession() as session, session.get(moko.url + "/metrics") as response:
                found = _GAUGE.search(await response.text())
                run.gauge = float(found.group(1)) if found else None
        finally:
            stop.set()
            await follower
            code = await moko.stop()
            await fake.close()
        if code != 0:
            raise RuntimeError(f"moko serve exited {code}: {moko.log()[-2000:]}")
        if fake.violations:
            raise RuntimeError(f"requests GitHub would refuse: {fake.violations[:5]}")
    return run


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def report(run: Run) -> dict[str, Any]:
    fixes = [run.fixed_at[n] - run.drifted_at[n] for n in run.drifted_at if n in run.fixed_at]
    first, last = run.turns[0], run.turns[-1]
    window = last.seen - first.seen
    cycles = len(run.turns) - 1
    per_hour = HOUR / window if window > 0 else float("nan")
    rest = (last.rest_used - first.rest_used) * per_hour
    points = (last.graphql_used - first.graphql_used) * per_hour
    turn_seconds = [t.logged.get("seconds", 0.0) for t in run.turns]
    return {
        "repositories": run.repositories,
        "configured_interval": run.interval,
        "interval_allowed_s": run.gauge,
        "stretched": sorted({s.get("reason") for s in run.stretched if s.get("reason")}),
        "drifts": len(run.drifted_at),
        "fixed": len(fixes),
        "p50_s": statistics.median(fixes) if fixes else None,
        "p99_s": percentile(fixes, 99) if fixes else None,
        "max_s": max(fixes) if fixes else None,
        "cycles_measured": cycles,
        "window_s": window,
        "rest_per_hour": rest,
        "graphql_points_per_hour": points,
        "rest_per_turn": [t.logged.get("rest_requests") for t in run.turns],
        "points_per_turn": [t.logged.get("graphql_points") for t in run.turns],
        "turn_seconds_max": max(turn_seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repositories", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--interval", default="60s", help="MOKO_SWEEP_INTERVAL (default 60s: a run spans cycles)")
    parser.add_argument("--seconds", type=float, default=240.0,
                        help="how long drift is injected after Moko's first turn, at least (never "
                             "less than the interval the budget allows)")
    parser.add_argument("--drifts-per-minute", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on a shared 2-core machine", flush=True)
    for size in args.repositories:
        run = asyncio.run(measure(Run(size, args.interval, args.seconds, args.drifts_per_minute), args.seed))
        result = report(run)
        print(json.dumps(result), flush=True)
        budget = 0.10 * LIMIT
        print(f"| {size:,} | {args.interval} | {result['interval_allowed_s']:.0f} s "
              f"| {result['fixed']}/{result['drifts']} | {result['p50_s']:.1f} s | {result['p99_s']:.1f} s "
              f"| {result['rest_per_hour']:.0f} ({result['rest_per_hour'] / budget:.0%} of {budget:.0f}) "
              f"| {result['graphql_points_per_hour']:.0f} ({result['graphql_points_per_hour'] / budget:.0%}) "
              f"| {result['cycles_measured']} in {result['window_s']:.0f} s |", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
