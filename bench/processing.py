"""Processing benchmark: CPU per handled `repository.created` delivery, Moko against Probot.

The work Moko exists for, not `ping`: GitHub's own `repository.created` example, each
delivery about a repository of its own, under an organization policy of settings only
(`has_issues: true, has_wiki: false, has_projects: false`), so that Moko and the reference
do the same GitHub calls:

- `compliant`: the payload already matches the policy: no API call at all;
- `drifted`: the wiki is on: one `PATCH /repos/{owner}/{repo}` to the fake GitHub, which
  answers at once.

The fake GitHub (tests/fakegithub, every request checked against GitHub's OpenAPI
description) runs in its own process. Each round sends `--warmup` deliveries, not measured,
then `--deliveries` measured ones, `--concurrency` at a time, from this process (bodies
signed beforehand), to one server at a time, alternating Moko and the minimal Probot app of
bench/probot_reference (which handles `repository.created` the same way, with Octokit's
throttling off). Measured per server and workload:

- deliveries/s: measured deliveries over the time from the first sent until the last one
  processed (Moko acknowledges first and processes after; Probot answers once its handler
  has finished, so its last answer is its last processed delivery);
- CPU per delivery until idle: the server process's user + system CPU over the same span;
- acknowledged/s: measured deliveries over the time until the last answer;
- peak RSS of the server process (VmHWM);
- with both servers, Moko's CPU per delivery over Probot's in each round, and their median.

Afterwards the fake's count of PATCHes must equal the drifted deliveries sent, per server.

    python bench/processing.py [--rounds 2] [--deliveries 3000] [--warmup 3000] [--concurrency 50]
    python bench/processing.py --only moko --workloads compliant --profile /tmp/prof   # where it goes
    python bench/processing.py --only moko --rounds 1 --deliveries 300 --warmup 300 --callgrind
        # instructions per delivery under valgrind: the same however loaded the machine is,
        # for comparing two versions of Moko (not Moko with Node: their instructions differ)
    python bench/processing.py --only moko --workloads drifted --rounds 1 --syscalls
        # system calls per measured delivery, by name, every thread of the server counted
        # (perf's syscall tracepoints): fsyncs, WAL writes, socket calls a delivery
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECRET = "bench-secret"
EXAMPLE = ROOT / "tests" / "fixtures" / "webhook-examples" / "repository.created.json"
REFERENCE = ROOT / "bench" / "probot_reference"
POLICY = "version: 1\nrepository:\n  has_issues: true\n  has_wiki: false\n  has_projects: false\nbranches: []\n"
COMPLIANT = {"has_issues": True, "has_wiki": False, "has_projects": False}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# What --syscalls counts (each tracepoint counted costs the server a little): the store's
# (WAL writes, reads and fsyncs, file locks), the threads' hand-offs, the sockets' and the loop's.
COUNTED_SYSCALLS = ("fdatasync", "fsync", "pwrite64", "pread64", "fcntl", "futex", "epoll_pwait", "epoll_wait",
                    "read", "write", "writev", "sendto", "recvfrom", "sendmsg", "recvmsg", "getpid")


# --- the fake GitHub's process ------------------------------------------------------------

async def serve_fake(owner: str, drifted: int) -> None:
    """Build the organization, print where the fake listens, answer `count` lines on stdin."""
    from tests.fakegithub.server import FakeGitHub

    fake = FakeGitHub()
    await fake.start()
    fake.add_installation(1, owner)
    # The runs make more writes than an installation's 5,000 requests an hour: with GitHub's
    # budget Moko would pace them out (and the reference would be refused); neither is measured.
    fake.set_rate_limit(1, limit=10_000_000, remaining=10_000_000)
    fake.add_repo(owner, ".github", **COMPLIANT)
    fake.put_file(owner, ".github", ".github/moko.yml", POLICY)
    for i in range(drifted):
        fake.add_repo(owner, f"drifted-{i:05d}", **{**COMPLIANT, "has_wiki": True})
    print(json.dumps({"url": fake.url, "app_id": fake.app_id, "key": fake.private_key_pem}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "count":
            patches = fake.count("PATCH", rf"^/repos/{owner}/drifted-\d+$")
            kinds: dict[str, int] = {}
            for call in fake.calls:
                kind = f"{call.method} {re.sub(r'drifted-[0-9]+', '{repo}', call.path)}"
                kinds[kind] = kinds.get(kind, 0) + 1
            print(json.dumps({"patches": patches, "calls": kinds, "violations": list(fake.violations)}), flush=True)
            fake.reset_calls()
    await fake.close()


class Fake:
    """The fake GitHub's process, seen from the bench."""

    def __init__(self, owner: str, drifted: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve-fake", owner, str(drifted)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        assert self.process.stdout is not None
        self.info = json.loads(self.process.stdout.readline())

    def patches(self) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("count\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        if answer["violations"]:
            raise SystemExit(f"requests the fake GitHub refused: {answer['violations'][:3]}")
        self.calls = answer["calls"]
        return int(answer["patches"])

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


# --- deliveries ---------------------------------------------------------------------------

def deliveries(run: str, count: int, *, drifted: bool, first: int = 0) -> list[tuple[bytes, dict[str, str]]]:
    """Signed `repository.created` deliveries, each about a repository of its own."""
    example = json.loads(EXAMPLE.read_text())
    signed = []
    for i in range(first, first + count):
        payload = copy.deepcopy(example)
        repository = payload["repository"]
        name = f"drifted-{i:05d}" if drifted else f"{run}-{i:05d}"
        repository.update(COMPLIANT, name=name, full_name=f"{repository['owner']['login']}/{name}",
                          id=10_000_000 + i, node_id=f"R_bench{i}")
        if drifted:
            repository["has_wiki"] = True
        body = json.dumps(payload, separators=(",", ":")).encode()
        signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        signed.append((body, {
            "Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/bench",
            "X-GitHub-Event": "repository", "X-GitHub-Delivery": f"{run}-{i}-{uuid.uuid4()}",
            "X-GitHub-Hook-ID": "1", "X-GitHub-Hook-Installation-Target-ID": "1",
            "X-GitHub-Hook-Installation-Target-Type": "integration", "X-Hub-Signature-256": signature,
        }))
    return signed


async def send_all(url: str, batch: list[tuple[bytes, dict[str, str]]], concurrency: int) -> float:
    """Post every delivery, `concurrency` at a time; the time of the last answer (monotonic)."""
    import aiohttp

    queue = list(reversed(batch))
    refused: list[int] = []

    async def sender(session: aiohttp.ClientSession) -> None:
        while queue:
            body, headers = queue.pop()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status >= 300:
                    refused.append(response.status)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(sender(session) for _ in range(concurrency)))
    if refused:
        raise SystemExit(f"{len(refused)} deliveries refused: {sorted(set(refused))}")
    return time.monotonic()


# --- the servers --------------------------------------------------------------------------

def _cpu(stat: str, part: str = "both") -> float:
    """CPU seconds from a /proc .../stat line: user, system (the kernel's work for it) or both."""
    fields = stat.rsplit(")", 1)[1].split()
    user, system = int(fields[11]), int(fields[12])
    return {"user": user, "system": system, "both": user + system}[part] / CLOCK_TICKS


def _status_field(status: str, name: str) -> int:
    """The first number of a /proc .../status field (``VmHWM``, ``voluntary_ctxt_switches``)."""
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith(name + ":"))


def cpu_seconds(pid: int, part: str = "both") -> float:
    """The process's CPU time so far: user, system or both."""
    return _cpu(Path(f"/proc/{pid}/stat").read_text(), part)


def threads(pid: int) -> dict[str, tuple[float, int]]:
    """Each thread's CPU seconds so far and how often it slept (voluntary context switches):
    the main thread (Moko's event loop) apart from the others (Moko's commit thread), which are
    summed; a thread gone since is not counted."""
    seen: dict[str, tuple[float, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except OSError:
            continue
        name = "main" if task.name == str(pid) else "others"
        before = seen.get(name, (0.0, 0))
        seen[name] = (before[0] + _cpu(stat), before[1] + _status_field(status, "voluntary_ctxt_switches"))
    return seen


def peak_rss_mib(pid: int) -> float:
    return _status_field(Path(f"/proc/{pid}/status").read_text(), "VmHWM") / 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    for _ in range(int(seconds / 0.05)):
        if process.poll() is not None:
            raise SystemExit(f"the server exited {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
            return
        time.sleep(0.05)
    raise SystemExit("the server did not listen")


class Server:
    """One server under test: Moko (`moko serve` on a fresh SQLite file) or the Probot app."""

    def __init__(self, kind: str, fake: dict[str, Any], workdir: Path, profile: str | None = None,
                 callgrind: bool = False, syscalls: bool = False) -> None:
        self.kind = kind
        self.syscalls_out = workdir / f"{kind}.syscalls" if syscalls else None
        self.perf: subprocess.Popen[bytes] | None = None
        self.callgrind_out = workdir / f"{kind}.callgrind" if callgrind else None
        # Under callgrind, instructions are counted only between start_counting and stop_counting.
        prefix = ([
            "valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-line=no",
            f"--callgrind-out-file={self.callgrind_out}",
        ] if callgrind else [])
        self.port = free_port()
        self.database = workdir / f"{kind}.db"
        log = (workdir / f"{kind}.log").open("wb")
        if kind == "moko":
            env = {
                **os.environ, "GITHUB_APP_ID": str(fake["app_id"]), "GITHUB_PRIVATE_KEY": fake["key"],
                "GITHUB_WEBHOOK_SECRET": SECRET, "GITHUB_API_URL": fake["url"],
                "MOKO_DATABASE_URL": f"sqlite:///{self.database}", "MOKO_SWEEP_INTERVAL": "0",
                "MOKO_RECOVER_WINDOW": "0", "MOKO_QUEUE_MAX": "1000000",
                "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
            }
            command = [sys.executable, "-m", "handlers.wiring.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
            if profile:
                # cProfile of the event loop's thread, written when the server stops.
                command[1:1] = ["-m", "cProfile", "-o", profile]
            self.process = subprocess.Popen(prefix + command, env=env, cwd=workdir, stdout=subprocess.DEVNULL,
                                            stderr=log)
        else:
            if not (REFERENCE / "node_modules" / "probot").is_dir():
                subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=REFERENCE, check=True)
            env = {
                **os.environ, "APP_ID": str(fake["app_id"]), "PRIVATE_KEY": fake["key"], "WEBHOOK_SECRET": SECRET,
                "PORT": str(self.port), "BASE_URL": fake["url"], "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warn"),
            }
            # Node's JIT rewrites its code: valgrind must look for self-modifying code everywhere.
            node = ["node", "index.js"]
            if callgrind:
                prefix.insert(1, "--smc-check=all")
            self.process = subprocess.Popen(prefix + node, cwd=REFERENCE, env=env, stdout=log, stderr=log)
        wait_listening(self.port, self.process, 600 if callgrind else 60)
        self.url = f"http://127.0.0.1:{self.port}/api/github/webhooks"

    def unfinished(self, run: str) -> int:
        """Moko: the run's deliveries not yet done (a failed one ends the bench: it must not fail)."""
        with contextlib.closing(sqlite3.connect(self.database, timeout=30)) as conn:
            failed = conn.execute("SELECT count(*) FROM deliveries WHERE id LIKE ? AND state = 'failed'",
                                  (run + "-%",)).fetchone()[0]
            if failed:
                raise SystemExit(f"{failed} deliveries failed in Moko; its log: {self.database.with_suffix('.log')}")
            return int(conn.execute("SELECT count(*) FROM deliveries WHERE id LIKE ? AND state != 'done'",
                                    (run + "-%",)).fetchone()[0])

    def idle(self, run: str, last_answer: float) -> float:
        """When the last delivery of the run was processed (monotonic)."""
        if self.kind != "moko":
            return last_answer
        left, progressed = self.unfinished(run), time.monotonic()
        while left:
            time.sleep(0.02)
            now_left = self.unfinished(run)
            if now_left < left:
                left, progressed = now_left, time.monotonic()
            elif time.monotonic() - progressed > 120:
                raise SystemExit(f"Moko processed nothing for 2 minutes, {left} deliveries left")
        return time.monotonic()

    def start_counting(self) -> None:
        if self.callgrind_out:
            subprocess.run(["callgrind_control", "--instr=on", str(self.process.pid)], check=True,
                           stdout=subprocess.DEVNULL)
        if self.syscalls_out:
            # Counted in the kernel by tracepoint (the server runs at its own pace, unlike
            # under strace), for every thread of the process, the commit thread included.
            self.perf = subprocess.Popen(
                ["perf", "stat", "-x", ",", "-o", str(self.syscalls_out), "-e", ",".join(f"syscalls:sys_enter_{name}" for name in COUNTED_SYSCALLS),
                 "-p", str(self.process.pid)], stderr=subprocess.DEVNULL)
            time.sleep(2)  # perf attaches before the first measured delivery is sent

    def stop_syscalls(self) -> dict[str, int] | None:
        """System calls made since start_counting, by name (None when not counted)."""
        if self.perf is None or self.syscalls_out is None:
            return None
        self.perf.send_signal(signal.SIGINT)
        self.perf.wait(60)
        calls: dict[str, int] = {}
        for line in self.syscalls_out.read_text().splitlines():
            fields = line.split(",")
            # "count,unit,event,..." with event syscalls:sys_enter_NAME
            if len(fields) > 2 and fields[0].isdigit() and int(fields[0]) and "sys_enter_" in fields[2]:
                calls[fields[2].split("sys_enter_", 1)[1]] = int(fields[0])
        return calls

    def stop_counting(self) -> int | None:
        """Instructions executed since start_counting (None when not under callgrind)."""
        if not self.callgrind_out:
            return None
        subprocess.run(["callgrind_control", "--instr=off", str(self.process.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["callgrind_control", "--dump", str(self.process.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        total = 0
        for dump in self.callgrind_out.parent.glob(self.callgrind_out.name + "*"):
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith("totals:"):
                    total += int(line.split()[1])
                    break
        return total

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def measure(server: Server, fake: Fake, workload: str, args: argparse.Namespace, round_no: int) -> dict[str, Any]:
    drifted = workload == "drifted"
    run = f"{server.kind}{round_no}{workload}"
    # Drifted repositories exist at the fake; both servers PATCH the same ones in turn.
    warm = deliveries(run + "w", args.warmup, drifted=drifted, first=0)
    batch = deliveries(run, args.deliveries, drifted=drifted, first=args.warmup)
    asyncio.run(send_all(server.url, warm, args.concurrency))
    server.idle(run + "w", time.monotonic())
    fake.patches()  # resets the count
    server.start_counting()
    cpu_before = cpu_seconds(server.process.pid)
    system_before = cpu_seconds(server.process.pid, "system")
    threads_before = threads(server.process.pid)
    started = time.monotonic()
    last_answer = asyncio.run(send_all(server.url, batch, args.concurrency))
    idle = server.idle(run, last_answer)
    cpu = cpu_seconds(server.process.pid) - cpu_before
    instructions = server.stop_counting()
    syscalls = server.stop_syscalls()
    system = cpu_seconds(server.process.pid, "system") - system_before
    by_thread = {name: (cpu - threads_before.get(name, (0.0, 0))[0], sleeps - threads_before.get(name, (0.0, 0))[1])
                 for name, (cpu, sleeps) in threads(server.process.pid).items()}
    patches = fake.patches()
    expected = args.deliveries if drifted else 0
    if patches != expected:
        raise SystemExit(f"{server.kind} {workload}: {patches} PATCHes, expected {expected}")
    return {
        "server": server.kind, "workload": workload, "round": round_no,
        "deliveries_per_s": round(args.deliveries / (idle - started)),
        "acknowledged_per_s": round(args.deliveries / (last_answer - started)),
        "cpu_ms_per_delivery": round(cpu * 1000 / args.deliveries, 3),
        "system_cpu_ms_per_delivery": round(system * 1000 / args.deliveries, 3),
        "peak_rss_mib": round(peak_rss_mib(server.process.pid), 1),
        # A thread's sleep and wake-up costs CPU of its own (on this virtual machine, tens of
        # microseconds each, whatever it slept for): how often each thread slept per delivery.
        "sleeps_per_delivery": round(sum(sleeps for _, sleeps in by_thread.values()) / args.deliveries, 2),
        "threads": {name: {"cpu_ms_per_delivery": round(cpu * 1000 / args.deliveries, 3),
                           "sleeps_per_delivery": round(sleeps / args.deliveries, 2)}
                    for name, (cpu, sleeps) in sorted(by_thread.items()) if cpu or sleeps},
        **({"instructions_per_delivery": round(instructions / args.deliveries)} if instructions is not None else {}),
        **({"syscalls_per_delivery": round(sum(syscalls.values()) / args.deliveries, 1),
            "syscalls_by_name": {name: round(count / args.deliveries, 2) for name, count in
                                 sorted(syscalls.items(), key=lambda item: -item[1])}}
           if syscalls is not None else {}),
        "patches": patches,
        "github_calls": fake.calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--only", choices=["moko", "probot"], action="append", help="default: both, alternating")
    parser.add_argument("--workloads", default="compliant,drifted")
    parser.add_argument("--profile", metavar="DIR", help="write a cProfile of each Moko run into DIR")
    parser.add_argument("--callgrind", action="store_true",
                        help="run each server under valgrind's callgrind and count the instructions per "
                             "measured delivery: the same figure however loaded the machine is (about 50 "
                             "times slower; use small --deliveries and --warmup)")
    parser.add_argument("--keep", action="store_true",
                        help="keep each server's work folder (its database, log and callgrind dumps)")
    parser.add_argument("--syscalls", action="store_true",
                        help="count each server's system calls per measured delivery (perf stat on the "
                             "kernel's syscall tracepoints; needs perf and root)")
    parser.add_argument("--serve-fake", nargs=2, metavar=("OWNER", "DRIFTED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        asyncio.run(serve_fake(args.serve_fake[0], int(args.serve_fake[1])))
        return
    kinds = args.only or ["moko", "probot"]
    if "probot" in kinds and (shutil.which("node") is None or shutil.which("npm") is None):
        raise SystemExit("node and npm are needed for the reference")
    owner = json.loads(EXAMPLE.read_text())["repository"]["owner"]["login"]
    workloads = args.workloads.split(",")
    fake = Fake(owner, args.warmup + args.deliveries)
    results = []
    try:
        for round_no in range(1, args.rounds + 1):
            for workload in workloads:
                # Alternate which server goes first, so neither always meets a warmer machine.
                order = kinds if round_no % 2 else list(reversed(kinds))
                for kind in order:
                    workdir = Path(tempfile.mkdtemp(prefix="moko-bench-processing-"))
                    profile = args.profile and f"{args.profile}/{kind}-{workload}-{round_no}.prof"
                    server = Server(kind, fake.info, workdir, profile if kind == "moko" else None, args.callgrind,
                                    args.syscalls)
                    try:
                        result = measure(server, fake, workload, args, round_no)
                    finally:
                        server.stop()
                    if args.keep:
                        print(f"kept: {workdir}", flush=True)
                    else:
                        shutil.rmtree(workdir)  # kept, with the server's log, when the run failed
                    print(json.dumps(result), flush=True)
                    results.append(result)
    finally:
        fake.close()
    print("\n| workload | measure | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---:|" * len(kinds))
    measures = ["deliveries_per_s", "acknowledged_per_s", "cpu_ms_per_delivery", "system_cpu_ms_per_delivery",
                "sleeps_per_delivery", "peak_rss_mib"] + (["instructions_per_delivery"] if args.callgrind else []) + (
                    ["syscalls_per_delivery"] if args.syscalls else [])
    for workload in workloads:
        for measure_name in measures:
            cells = []
            for kind in kinds:
                values = [r[measure_name] for r in results if r["server"] == kind and r["workload"] == workload]
                cells.append(f"{statistics.median(values):g}" if values else "—")
            print(f"| {workload} | {measure_name} | " + " | ".join(cells) + " |")
    if set(kinds) == {"moko", "probot"}:
        # The machine's load moves both servers' figures from round to round: the two runs of
        # one round met about the same machine, so their ratio is the steadier figure.
        print()
        for workload in workloads:
            ratios = []
            for round_no in range(1, args.rounds + 1):
                cpu = {r["server"]: r["cpu_ms_per_delivery"] for r in results
                       if r["workload"] == workload and r["round"] == round_no}
                ratios.append(cpu["moko"] / cpu["probot"])
            print(f"{workload}: Moko / Probot CPU per delivery, by round: "
                  + ", ".join(f"{ratio:.2f}" for ratio in ratios) + f" (median {statistics.median(ratios):.2f})")
            if args.callgrind:
                counted = {r["server"]: r["instructions_per_delivery"] for r in results if r["workload"] == workload}
                print(f"{workload}: Moko / Probot instructions per delivery: "
                      f"{counted['moko'] / counted['probot']:.2f}")


if __name__ == "__main__":
    main()
