"""Sweeping simulated organizations: requests, wall time and peak memory of `moko sweep`.

For 1,000 and 10,000 repositories, all compliant and 10 % drifted (wiki turned on), the fake
GitHub (tests/fakegithub, every request validated against GitHub's schemas) runs in one
process and the sweep in another, so the memory measured is the sweep's alone.

The bulk client spaces writes at least 1 s apart, as GitHub asks of integrators. Sleeping
that out would make a 10 %-drifted 10,000-repository sweep take 17 minutes of waiting, so
the sweep's sleep is injected: the wait is recorded (column "spacing asked"), not slept.
Add that column to the wall time for the real duration.

    python bench/sweep.py                      # the four standard cases and the markdown table
    python bench/sweep.py --sizes 1000 --drift 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ORG = "acme"
PROTECTION = {
    "required_status_checks": None,
    "enforce_admins": False,
    "required_pull_request_reviews": {"required_approving_review_count": 1},
    "restrictions": None,
}
COMPLIANT = {"has_issues": True, "has_wiki": False, "has_projects": False}


# --- the fake GitHub's process ------------------------------------------------------------

async def serve_fake(repositories: int, drift: float) -> None:
    """Build the organization, print where the fake listens, serve until stdin closes."""
    from tests.fakegithub.graphql import get_schema
    from tests.fakegithub.server import FakeGitHub

    get_schema()  # built once per process (seconds): not part of what is measured
    fake = FakeGitHub()
    await fake.start()
    fake.add_installation(1, ORG)
    every = round(1 / drift) if drift else 0
    for i in range(repositories):
        name = f"repo-{i:05d}"
        drifted = every and i % every == 0
        fake.add_repo(ORG, name, **{**COMPLIANT, "has_wiki": bool(drifted)})
        fake.set_protection(ORG, name, "main", PROTECTION)
    print(json.dumps({"url": fake.url, "app_id": fake.app_id, "key": fake.private_key_pem}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await fake.close()


# --- the sweep's process ------------------------------------------------------------------

class RecordedSpacing:
    """The client's monotonic clock and sleep: waits are recorded and the clock moved, not slept."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def clock(self) -> float:
        return self.now + time.monotonic()

    async def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds
        await asyncio.sleep(0)


async def run_sweep(url: str, app_id: str, key: str, database: str) -> dict[str, Any]:
    from bot.config import load_settings
    from bot.github_app import GitHubApp
    from bot.logs import configure_logging
    from handlers.wiring.app import client_options
    from handlers.wiring.cli import build_parser
    from handlers.wiring.cli_sweep import sweep_command

    configure_logging("error", "json")
    spacing = RecordedSpacing()

    def github(settings: Any, session: Any) -> GitHubApp:
        return GitHubApp(session=session, api_url=settings.api_url, graphql_url=settings.graphql_url,
                         app_id=settings.app_id, private_key=settings.private_key,
                         options=client_options(settings), clock=spacing.clock, sleep=spacing.sleep)

    settings = load_settings({
        "GITHUB_APP_ID": app_id, "GITHUB_PRIVATE_KEY": key, "GITHUB_API_URL": url,
        "MOKO_DATABASE_URL": f"sqlite:///{database}", "LOG_LEVEL": "error",
    })
    args = build_parser().parse_args(["sweep", "--org", ORG, "--json"])
    out = io.StringIO()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    code = await sweep_command(args, settings, out=out, err=io.StringIO(), github_factory=github)
    seconds = time.perf_counter() - started
    doc = json.loads(out.getvalue())
    return {
        "exit": code,
        "seconds": seconds,
        "spacing": spacing.slept,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "base_rss_mb": base_rss / 1024,
        **{k: v for k, v in doc.items() if k != "results"},
    }


# --- orchestration ------------------------------------------------------------------------

def measure(repositories: int, drift: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    fake = subprocess.Popen([sys.executable, __file__, "--serve-fake", str(repositories), str(drift)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert fake.stdout is not None and fake.stdin is not None
        where = json.loads(fake.stdout.readline())
        with tempfile.TemporaryDirectory() as tmp:
            sweep = subprocess.run(
                [sys.executable, __file__, "--run-sweep", where["url"], str(where["app_id"]), f"{tmp}/moko.db"],
                input=where["key"], capture_output=True, text=True, env=env, check=True,
            )
        return json.loads(sweep.stdout.strip().splitlines()[-1])
    finally:
        if fake.stdin:
            fake.stdin.close()
        fake.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--drift", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--serve-fake", nargs=2, metavar=("N", "DRIFT"), help=argparse.SUPPRESS)
    parser.add_argument("--run-sweep", nargs=3, metavar=("URL", "APP_ID", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        asyncio.run(serve_fake(int(args.serve_fake[0]), float(args.serve_fake[1])))
        return
    if args.run_sweep:
        url, app_id, database = args.run_sweep
        print(json.dumps(asyncio.run(run_sweep(url, app_id, sys.stdin.read(), database))))
        return
    print("| repositories | drifted | requests | of which writes | wall time | spacing asked (not slept) "
          "| wall time with spacing | peak RSS (process) | compliant / fixed / failed |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for size in args.sizes:
        for drift in args.drift:
            r = measure(size, drift)
            writes = r["fixed"]  # one PATCH per drifted repository
            print(f"| {size:,} | {drift:.0%} | {r['requests']:,} | {writes:,} | {r['seconds']:.1f} s "
                  f"| {r['spacing']:,.0f} s | {r['seconds'] + r['spacing']:,.0f} s "
                  f"| {r['peak_rss_mb']:.0f} MB ({r['base_rss_mb']:.0f} MB before the sweep) "
                  f"| {r['compliant']:,} / {r['fixed']:,} / {r['failed']} |", flush=True)


if __name__ == "__main__":
    main()
