"""Intake benchmark: signed deliveries acknowledged per second, ack latency, CPU per delivery.

Starts `moko serve` (one or more replicas) on a database, drives it with wrk (Debian's
package `wrk`) at 50 concurrent connections, each request a signed `ping` with its own
delivery ID, then checks that every acknowledged delivery is in the database. The CPU figure is the
server's CPU time from the first request until the last delivery is processed, divided
by the deliveries acknowledged (the intake's share alone is printed beside it).

    python bench/intake.py [--seconds 10] [--connections 50] [--replicas 1] [--database URL]

With --reference, the same load goes to the issue's reference instead: a minimal Probot app
that stores nothing (bench/probot_reference, installed with npm on first use), so that both
are measured on one machine under one load.

    python bench/intake.py --reference
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret"
PING = ROOT / "tests" / "fixtures" / "webhook-examples" / "ping.json"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

WRK_SCRIPT = """
local counter = 0
local thread_id = 0
local threads = {}
function setup(thread)
  thread:set("tid", thread_id)
  thread_id = thread_id + 1
end
wrk.method = "POST"
wrk.body = BODY
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "ping"
wrk.headers["X-Hub-Signature-256"] = SIGNATURE
wrk.headers["User-Agent"] = "GitHub-Hookshot/bench"
request = function()
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = RUN .. "-" .. tid .. "-" .. counter
  return wrk.format(nil, "/api/github/webhooks")
end
"""


def private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def parse_wrk(output: str) -> dict[str, float]:
    def duration(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", output, re.M))
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    return {
        "requests": requests,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "p50_ms": duration(latency["50"]),
        "p99_ms": duration(latency["99"]),
        "socket_errors": errors.group(1) if errors else "",
    }


async def wait_healthy(port: int, process: subprocess.Popen[bytes]) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for _ in range(400):
            if process.poll() is not None:
                raise SystemExit(f"moko serve exited {process.returncode}")
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit("moko serve did not become ready")


def count_stored(database: str, run: str, *, unfinished: bool = False) -> int:
    """The run's deliveries in the database (unfinished: only those not yet done or failed)."""
    where = "id LIKE ?" + (" AND state NOT IN ('done', 'failed')" if unfinished else "")
    if database.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(database[len("sqlite:///"):], timeout=30)) as conn:
            return conn.execute(f"SELECT count(*) FROM deliveries WHERE {where}", (run + "-%",)).fetchone()[0]
    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(database)
        try:
            return await conn.fetchval(f"SELECT count(*) FROM deliveries WHERE {where.replace('?', '$1')}", run + "-%")
        finally:
            await conn.close()

    return asyncio.run(count())


def wait_processed(database: str, run: str, limit: float = 120.0) -> float:
    """Wait until every delivery of the run is done or failed; return how long that took."""
    started = time.monotonic()
    while count_stored(database, run, unfinished=True) and time.monotonic() - started < limit:
        time.sleep(0.2)
    return time.monotonic() - started


def warm_up(ports: list[int], workdir: Path, body: str, signature: str, seconds: int, connections: int) -> None:
    """A short load first, not measured: both servers are measured warm (Node's JIT most of all)."""
    if seconds <= 0:
        return
    loads = []
    for index, port in enumerate(ports):
        script = workdir / f"warmup{index}.lua"
        script.write_text(
            f"BODY = {lua_string(body)}\nSIGNATURE = {lua_string(signature)}\n"
            f"RUN = {lua_string(f'warmup-{index}')}\n" + WRK_SCRIPT
        )
        loads.append(subprocess.Popen(
            ["wrk", "-t1", f"-c{max(1, connections // len(ports))}", f"-d{seconds}s", "-s", str(script),
             f"http://127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
        ))
    for load in loads:
        load.wait()


def run(
    seconds: int, connections: int, replicas: int, database: str | None, threads: int, warmup: int = 2
) -> dict[str, object]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    workdir = Path(tempfile.mkdtemp(prefix="moko-bench-"))
    database = database or f"sqlite:///{workdir}/moko.db"
    body = json.dumps(json.loads(PING.read_text()), separators=(",", ":"))
    signature = "sha256=" + hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
    run_id = f"bench{int(time.time())}"
    env = {
        **os.environ,
        "GITHUB_APP_ID": "1",
        "GITHUB_PRIVATE_KEY": private_key_pem(),
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "GITHUB_API_URL": "http://127.0.0.1:9",
        "MOKO_DATABASE_URL": database,
        "MOKO_SWEEP_INTERVAL": "0",
        "MOKO_QUEUE_MAX": "1000000",
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
    }
    ports = [20000 + (os.getpid() % 1000) * 4 + i for i in range(replicas)]
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "handlers.wiring.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=(workdir / f"serve{i}.log").open("wb"),
        )
        for i, port in enumerate(ports)
    ]
    try:
        for port, server in zip(ports, servers, strict=True):
            asyncio.run(wait_healthy(port, server))
        warm_up(ports, workdir, body, signature, warmup, connections)
        wait_processed(database, "warmup")
        scripts = []
        for index in range(replicas):
            # Each load generator has its own delivery IDs: every request is a new delivery.
            script = workdir / f"ping{index}.lua"
            script.write_text(
                f"BODY = {lua_string(body)}\nSIGNATURE = {lua_string(signature)}\n"
                f"RUN = {lua_string(f'{run_id}-{index}')}\n" + WRK_SCRIPT
            )
            scripts.append(script)
        cpu_before = [cpu_seconds(s.pid) for s in servers]
        per_replica = max(1, connections // replicas)
        loads = [
            subprocess.Popen(
                ["wrk", f"-t{threads}", f"-c{per_replica}", f"-d{seconds}s", "--latency", "-s", str(script),
                 f"http://127.0.0.1:{port}"],
                stdout=subprocess.PIPE, text=True,
            )
            for port, script in zip(ports, scripts, strict=True)
        ]
        outputs = [load.communicate()[0] for load in loads]
        intake_cpu = sum(cpu_seconds(s.pid) - before for s, before in zip(servers, cpu_before, strict=True))
        # Deliveries acknowledged faster than they are processed wait in the queue: the
        # CPU figure counts their processing too, so wait for the last one.
        backlog_seconds = wait_processed(database, run_id)
        cpu = sum(cpu_seconds(s.pid) - before for s, before in zip(servers, cpu_before, strict=True))
        results = [parse_wrk(output) for output in outputs]
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(60)
    total = sum(int(r["requests"]) for r in results)
    acknowledged = total - sum(int(r["non2xx"]) for r in results)
    stored = count_stored(database, run_id)
    return {
        "replicas": replicas,
        "database": database.split("://", 1)[0],
        "connections": connections,
        "seconds": seconds,
        "acknowledged": acknowledged,
        "deliveries_per_second": round(acknowledged / seconds),
        "p50_ms": max(float(r["p50_ms"]) for r in results),
        "p99_ms": max(float(r["p99_ms"]) for r in results),
        "cpu_ms_per_delivery": round(cpu * 1000 / max(acknowledged, 1), 3),
        "intake_cpu_ms_per_delivery": round(intake_cpu * 1000 / max(acknowledged, 1), 3),
        "backlog_processed_in_s": round(backlog_seconds, 1),
        "stored": stored,
        "socket_errors": [r["socket_errors"] for r in results if r["socket_errors"]],
    }


REFERENCE = ROOT / "bench" / "probot_reference"


def run_reference(seconds: int, connections: int, threads: int, warmup: int = 2) -> dict[str, object]:
    """The same load against the minimal Probot app; its CPU is the node process's."""
    if shutil.which("wrk") is None or shutil.which("node") is None or shutil.which("npm") is None:
        raise SystemExit("wrk, node and npm are needed")
    if not (REFERENCE / "node_modules" / "probot").is_dir():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=REFERENCE, check=True)
    workdir = Path(tempfile.mkdtemp(prefix="moko-bench-reference-"))
    body = json.dumps(json.loads(PING.read_text()), separators=(",", ":"))
    signature = "sha256=" + hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
    port = 20000 + (os.getpid() % 1000) * 4
    env = {
        **os.environ, "APP_ID": "1", "PRIVATE_KEY": private_key_pem(), "WEBHOOK_SECRET": SECRET,
        "PORT": str(port), "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warn"),
    }
    server = subprocess.Popen(["node", "index.js"], cwd=REFERENCE, env=env, stdout=subprocess.DEVNULL,
                              stderr=(workdir / "probot.log").open("wb"))
    try:
        for _ in range(200):
            if server.poll() is not None:
                raise SystemExit(f"the reference exited {server.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            time.sleep(0.05)
        warm_up([port], workdir, body, signature, warmup, connections)
        script = workdir / "ping.lua"
        script.write_text(
            f"BODY = {lua_string(body)}\nSIGNATURE = {lua_string(signature)}\nRUN = {lua_string('reference')}\n"
            + WRK_SCRIPT
        )
        before = cpu_seconds(server.pid)
        output = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
             f"http://127.0.0.1:{port}"],
            capture_output=True, text=True, check=True,
        ).stdout
        cpu = cpu_seconds(server.pid) - before
    finally:
        server.terminate()
        server.wait(30)
    result = parse_wrk(output)
    acknowledged = int(result["requests"]) - int(result["non2xx"])
    return {
        "server": "probot " + json.loads((REFERENCE / "node_modules" / "probot" / "package.json").read_text())["version"],
        "connections": connections,
        "seconds": seconds,
        "acknowledged": acknowledged,
        "deliveries_per_second": round(acknowledged / seconds),
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "cpu_ms_per_delivery": round(cpu * 1000 / max(acknowledged, 1), 3),
        "socket_errors": result["socket_errors"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads per replica")
    parser.add_argument("--database", help="default: a fresh SQLite file")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load first")
    parser.add_argument("--reference", action="store_true", help="measure the minimal Probot app instead")
    args = parser.parse_args()
    if args.reference:
        print(json.dumps(run_reference(args.seconds, args.connections, args.threads, args.warmup), indent=2))
        return
    result = run(args.seconds, args.connections, args.replicas, args.database, args.threads, args.warmup)
    print(json.dumps(result, indent=2))
    if result["stored"] < result["acknowledged"]:
        raise SystemExit("an acknowledged delivery is missing from the store")


if __name__ == "__main__":
    main()
