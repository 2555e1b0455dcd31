"""Running Moko for tests: in-process on a loopback port, or as a real `moko serve` process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from gidgethub.routing import Router

from bot.config import load_settings
from bot.context import Hooks, Services
from bot.http_limits import LOOP_TIME, PaceTime
from bot.worker import SYSTEM_TIME, PoolTime, WorkerPool
from handlers.wiring.app import SERVICES, WORKERS, create_app
from tests.fakegithub.webhooks import webhook_headers

WEBHOOK_SECRET = "It's a Secret to Everybody"
WEBHOOK_PATH = "/api/github/webhooks"


ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def moko_environ(fake: Any, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a Moko pointed at the fake GitHub."""
    environ = {
        "GITHUB_APP_ID": str(fake.app_id),
        "GITHUB_PRIVATE_KEY": fake.private_key_pem,
        "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "GITHUB_API_URL": fake.url,
        "MOKO_DATABASE_URL": database_url,
        "MOKO_SWEEP_INTERVAL": "0",
        # Off unless a test is about it: it would list the App's deliveries at every start.
        "MOKO_RECOVER_WINDOW": "0",
        "MOKO_RETRY_BASE_DELAY": "0.01",
        "LOG_LEVEL": "warning",
    }
    environ.update(extra)
    return environ


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: Any


async def post_webhook(
    session: aiohttp.ClientSession,
    url: str,
    event: str,
    payload: Any,
    *,
    delivery: str | None = None,
    secret: str = WEBHOOK_SECRET,
    headers: Mapping[str, str | None] | None = None,
) -> Reply:
    """POST a webhook signed as GitHub signs it; headers maps names to override (None drops one)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    sent = dict(webhook_headers(event, delivery or str(uuid.uuid4()), body, secret))
    for name, value in (headers or {}).items():
        for existing in [k for k in sent if k.lower() == name.lower()]:
            del sent[existing]
        if value is not None:
            sent[name] = value
    async with session.post(url + WEBHOOK_PATH, data=body, headers=sent) as response:
        text = await response.text()
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = text
        return Reply(response.status, dict(response.headers), parsed)


@dataclass
class RunningMoko:
    """An in-process Moko: its URL, its services, and a client session for sending webhooks."""

    url: str
    app: web.Application
    session: aiohttp.ClientSession

    @property
    def services(self) -> Services:
        return self.app[SERVICES]

    @property
    def workers(self) -> WorkerPool:
        return self.app[WORKERS]

    async def send(self, event: str, payload: Any, **kwargs: Any) -> Reply:
        return await post_webhook(self.session, self.url, event, payload, **kwargs)

    async def deliver(self, event: str, payload: Any, **kwargs: Any) -> Reply:
        """Send and wait until every stored delivery has been processed."""
        reply = await self.send(event, payload, **kwargs)
        await self.settle()
        return reply

    async def settle(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self.workers.wait_idle(), timeout)


@asynccontextmanager
async def run_moko(
    environ: Mapping[str, str], *, router: Router | None = None, hooks: Hooks | None = None,
    timing: PoolTime = SYSTEM_TIME, pace_time: PaceTime = LOOP_TIME,
) -> AsyncIterator[RunningMoko]:
    """Moko in this process; timing and pace_time as create_app's (a test's clocks)."""
    settings = load_settings(environ)
    app = create_app(settings, router=router, hooks=hooks, timing=timing, pace_time=pace_time)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        try:
            yield RunningMoko(f"http://127.0.0.1:{port}", app, session)
        finally:
            await runner.cleanup()


@dataclass
class MokoProcess:
    """A real `moko serve` child process."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait without blocking the loop (the fake GitHub may share it)."""
        self.process.send_signal(signal.SIGTERM)
        for _ in range(int(timeout / 0.05)):
            if self.process.poll() is not None:
                return self.process.returncode
            await asyncio.sleep(0.05)
        self.process.kill()
        raise TimeoutError(f"moko serve did not stop: {self.log()}")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


async def start_moko_process(environ: Mapping[str, str], log_path: Path, *, port: int | None = None,
                             cwd: Path | None = None, without: tuple[str, ...] = ()) -> MokoProcess:
    """Start `moko serve` (in cwd, with the named variables taken out of this process's
    environment) and wait until /healthz answers."""
    port = port or free_port()
    inherited = {k: v for k, v in os.environ.items() if k not in without}
    env = {**inherited, **environ, "PORT": str(port), "HOST": "127.0.0.1"}
    if cwd is not None:  # `python -m handlers.wiring.cli` must still find Moko's code
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "handlers.wiring.cli", "serve"], env=env, stdout=log_file, stderr=subprocess.STDOUT,
        cwd=cwd,
    )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        # Up to 30 s: a loaded machine (CI runs the suite twice) starts Python slowly.
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError(f"moko serve exited {process.returncode}: {log_path.read_text()}")
            try:
                async with session.get(url + "/healthz") as response:
                    if response.status == 200:
                        return MokoProcess(process, url, log_path)
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    process.kill()
    raise RuntimeError(f"moko serve did not start: {log_path.read_text()}")
