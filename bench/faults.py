"""Fault campaign: deliveries under a failing GitHub, killed processes and a restarted database.

`moko serve` (one process on SQLite, or two replicas on PostgreSQL) gets a bounded stream of
signed, real-format deliveries from this process, about 10 installations of the fake GitHub
(tests/fakegithub, in a process of its own): new repositories (`repository.created`, half
with the wiki on), drift edits (`repository.edited` whose payload shows the wiki on),
protection deletions (`branch_protection_rule.deleted`, the protection gone), `/moko apply`
comments (after a silent drift: projects on) and policy pushes (`push` changing
`.github/moko.yml`, a whole-installation reconcile). Meanwhile:

- the fake answers 20 % of requests with a 500, 502 or a dropped connection (half of them
  after the work was done, as when only GitHub's answer is lost), 2 % with a secondary rate
  limit (403, `retry-after: 1`) and answers 5 % five seconds late (`random_faults`);
- a Moko process is killed with SIGKILL at random moments (`--kills`, spread over the
  stream) and started again; with `--backend postgres --restart-postgres`, the PostgreSQL
  server is restarted once, mid-stream.

The load generator re-sends, with the same delivery ID, what was refused (`503`) or not
answered within GitHub's 10 s, as GitHub's redelivery would, to the next replica. So that
the writes each delivery needs are known, a repository gets its next mutation only once
the last one's delivery has finished and the repository is compliant again, and a policy
push waits for a quiet installation (and holds it until processed). The plan is then one
settings PATCH per wiki/projects drift and one protection PUT per new or unprotected
repository; any fixer may make it (the delivery, or a reconcile), but only once.

Afterwards: deliveries acknowledged, stored, finished, lost; writes per repository against
the plan (2xx answers at the fake: a repository with more was changed twice) and the
audit trail's `applied` records per delivery, repository and field (more than one: applied
twice), and per repository against the plan whichever runs recorded them (more: two fixers
wrote the same fix); repositories compliant; `/moko apply` answered by exactly one comment each;
`moko audit --verify`; time from the last delivery to the last fix; peak RSS; descriptors.
Everything is counted once every delivery has finished: the backlog the kills and the late
answers leave is waited for as long as deliveries keep finishing (`--settle`: how long
without one finishing before giving up). Repositories a failed delivery left drifted are for
the continuous reconciliation: Moko is then restarted with `MOKO_SWEEP_INTERVAL=10s` and
given up to 3 minutes. The fake GitHub's request log (one JSON line a request) and Moko's
logs (`BENCH_LOG_LEVEL`) are in the run's directory; `--keep` keeps the PostgreSQL database.

    python bench/faults.py                                  # SQLite, 1,000 deliveries, 10 kills
    python bench/faults.py --backend postgres --restart-postgres
    python bench/faults.py --deliveries 200 --kills 3 --json   # what the test runs
    python bench/faults.py --soak 30 --installations 100 --plot bench/soak.png

The soak (`--soak MINUTES`) sends `--rate` deliveries a second (50) open-loop to one process
on SQLite under the same faults, without kills: 60 % find the repository compliant (a
description edited), the rest change something as above, unsequenced. Every 10 s it samples
the process's RSS, CPU and open descriptors, the database's size (with its WAL), the p99
acknowledgement time of those 10 s, the deliveries finished, and from Moko's /metrics where
the time goes (waits by reason, write turns waited for and held, busy workers, the queue,
the lowest rate-limit budget left); at the end the slopes after the first 5 minutes.

Everything listens on 127.0.0.1 and stops with the script.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import os
import random
import re
import resource
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECRET = "bench-faults-secret"
PROTECTION = {
    "required_status_checks": None,
    "enforce_admins": False,
    "required_pull_request_reviews": {"required_approving_review_count": 1},
    "restrictions": None,
}
COMPLIANT = {"has_issues": True, "has_wiki": False, "has_projects": False}
POLICY = """version: 1
repository:
  has_issues: true
  has_wiki: false
  has_projects: false
branches:
  - name: default
    protection:
      required_status_checks: null
      enforce_admins: false
      required_pull_request_reviews:
        required_approving_review_count: 1
      restrictions: null
commands:
  apply_permission: maintain
# revision {revision}
"""
KINDS = ("created", "edited", "protection", "apply", "push")
WEIGHTS = (0.25, 0.30, 0.20, 0.15, 0.10)
# The soak: most deliveries GitHub sends find a compliant repository (a description edited,
# which Moko answers from the payload alone); the rest change something, as in the campaign.
SOAK_KINDS = ("description", *KINDS)
SOAK_WEIGHTS = (0.6, 0.08, 0.12, 0.1, 0.0995, 0.0005)
WRITE = re.compile(r"^/repos/([^/]+)/([^/]+?)(/branches/[^/]+/protection)?$")
GITHUB_TIMEOUT = 10.0  # GitHub gives up on a delivery after 10 s
CLOCK = time.monotonic


# --- the fake GitHub's process ------------------------------------------------------------

class FakeSide:
    """The organizations, the mutations each step makes, and what the fake saw of Moko."""

    def __init__(self, fake: Any, installations: int, repositories: int) -> None:
        self.fake = fake
        self.orgs = [f"org-{i:02d}" for i in range(installations)]
        self.writes: dict[str, Counter[str]] = defaultdict(Counter)
        self.last_write = 0.0
        self.revision = 0
        self.commands: list[tuple[str, str, int]] = []
        self.drawn: dict[str, int] = {}
        self.requests = 0
        for number, org in enumerate(self.orgs, start=1):
            fake.add_installation(number, org)
            fake.add_repo(org, ".github", **COMPLIANT)
            fake.set_protection(org, ".github", "main", PROTECTION)
            fake.put_file(org, ".github", ".github/moko.yml", POLICY.format(revision=0))
            for r in range(repositories):
                fake.add_repo(org, f"repo-{r:03d}", **COMPLIANT)
                fake.set_protection(org, f"repo-{r:03d}", "main", PROTECTION)
        fake.on_request(self.count_write)

    def count_write(self, call: Any) -> None:
        if call.method not in ("PATCH", "PUT", "DELETE") or not 200 <= call.status < 300:
            return
        match = WRITE.match(call.path)
        if match is None:
            return
        self.writes[f"{match[1]}/{match[2]}"]["protection" if match[3] else "settings"] += 1
        self.last_write = time.time()

    def step(self, kind: str, org: str, repo: str, n: int) -> dict[str, Any]:
        fake = self.fake
        if kind == "created":
            fake.add_repo(org, repo, **{**COMPLIANT, "has_wiki": n % 2 == 0})
            return {"event": "repository", "payload": fake.event("repository", "created", owner=org, repo=repo)}
        if kind in ("edited", "description"):
            fake.repo(org, repo).update(description=f"edit {n}", **({"has_wiki": True} if kind == "edited" else {}))
            payload = fake.event("repository", "edited", owner=org, repo=repo,
                                 changes={"description": {"from": None}})
            return {"event": "repository", "payload": payload}
        if kind == "protection":
            before = fake.protection(org, repo, "main")
            fake.set_protection(org, repo, "main", None)
            payload = fake.event("branch_protection_rule", "deleted", owner=org, repo=repo,
                                 branch="main", protection=before)
            return {"event": "branch_protection_rule", "payload": payload}
        if kind == "apply":
            fake.repo(org, repo)["has_projects"] = True  # no webhook for a settings toggle
            user = f"maintainer-{n}"
            fake.set_permission(org, repo, user, "maintain")
            issue = 1000 + n
            self.commands.append((org, repo, issue))
            payload = fake.event("issue_comment", "created", owner=org, repo=repo, sender=user,
                                 issue_number=issue, body="/moko apply")
            return {"event": "issue_comment", "payload": payload}
        if kind == "push":
            self.revision += 1
            fake.put_file(org, ".github", ".github/moko.yml", POLICY.format(revision=self.revision))
            payload = fake.event("push", owner=org, repo=".github", ref="refs/heads/main",
                                 modified=[".github/moko.yml"])
            return {"event": "push", "payload": payload}
        raise ValueError(kind)

    def compliant(self, full_name: str) -> bool:
        org, repo = full_name.split("/", 1)
        data = self.fake.repo(org, repo)
        if any(data.get(key) != value for key, value in COMPLIANT.items()):
            return False
        stored = self.fake.protection(org, repo, "main") or {}
        return all(stored.get(key) == value for key, value in PROTECTION.items())

    def report(self) -> dict[str, Any]:
        fake = self.fake
        every = [repo.data["full_name"] for org in self.orgs
                 for repo in fake.state.repos.get(org, {}).values()]
        answers = {f"{o}/{r}#{i}": sum(1 for c in fake.comments(o, r, i) if c["user"]["login"] == fake.bot_login)
                   for o, r, i in self.commands}
        return {
            "compliant": {name: self.compliant(name) for name in every},
            "writes": {name: dict(counts) for name, counts in self.writes.items()},
            "answers": answers,
            "last_write": self.last_write,
            "violations": list(fake.violations[:5]),
            "violation_count": len(fake.violations),
            "faults": dict(self.drawn),
            "requests": self.requests,
        }


async def serve_fake(installations: int, repositories: int, request_log: str | None = None) -> None:
    """Build the organizations, print where the fake listens, answer one JSON line per line."""
    from tests.fakegithub.server import FakeGitHub

    fake = FakeGitHub()
    await fake.start()
    side = FakeSide(fake, installations, repositories)
    logged = open(request_log, "a", buffering=1) if request_log else None  # noqa: SIM115

    def counted(call: Any) -> None:
        side.requests += 1
        if logged is not None:
            # The request log: what Moko asked and what the fake answered (0: dropped).
            logged.write(json.dumps({"t": round(time.time(), 3), "method": call.method, "path": call.path,
                                     "query": call.query, "status": call.status}) + "\n")

    fake.on_request(counted)

    async def forget_calls() -> None:
        # The fake keeps every call for tests' assertions; the campaign counts its own.
        while True:
            await asyncio.sleep(5)
            fake.calls.clear()
            fake._arrived.clear()

    forgetting = asyncio.create_task(forget_calls())
    print(json.dumps({"url": fake.url, "app_id": fake.app_id, "key": fake.private_key_pem}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        order = json.loads(line)
        op = order.pop("op")
        answer: Any
        try:
            if op == "step":
                answer = side.step(**order)
            elif op == "faults":
                side.drawn = fake.random_faults(**order)
                answer = {}
            elif op == "compliant":
                answer = {name: side.compliant(name) for name in order["repos"]}
            elif op == "report":
                answer = side.report()
            else:
                answer = {"error": f"unknown op {op}"}
        except Exception as error:  # the bench shows it; the fake keeps serving
            answer = {"error": repr(error)}
        print(json.dumps(answer), flush=True)
    forgetting.cancel()
    if logged is not None:
        logged.close()
    await fake.close()


class Fake:
    """The fake GitHub's process, seen from the campaign."""

    def __init__(self, installations: int, repositories: int, request_log: Path | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve-fake", str(installations), str(repositories), str(request_log or "")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        assert self.process.stdout is not None
        self.info = json.loads(self.process.stdout.readline())
        self._lock = asyncio.Lock()

    def _ask(self, order: dict[str, Any]) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(order) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(f"the fake GitHub: {answer['error']}")
        return answer

    async def ask(self, op: str, **order: Any) -> Any:
        async with self._lock:
            return await asyncio.get_running_loop().run_in_executor(None, self._ask, {"op": op, **order})

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


# --- Moko's processes -----------------------------------------------------------------------

def proc_status(pid: int, key: str) -> float:
    """A /proc/PID/status field in MiB (VmHWM, VmRSS); 0 when the process is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used so far."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def open_fds(pid: int) -> int:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Replica:
    """One `moko serve` slot: its port stays, its process is killed and started again."""

    name: str
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    peak_rss_mib: float = 0.0
    starts: int = 0
    fds_at_start: int = 0
    up: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/github/webhooks"


class Mokos:
    """The Moko processes under test."""

    def __init__(self, count: int, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.replicas = [Replica(f"moko-{i}", free_port(), workdir / f"moko-{i}.log") for i in range(count)]
        self.kills = 0
        self.restarts_without_store = 0  # starts that found no database (it was restarting)
        self._next = 0

    async def start(self, replica: Replica, **extra: str) -> None:
        # A start during the PostgreSQL server's restart finds no server and exits: start again,
        # as a process supervisor would.
        for attempt in range(1, 31):
            try:
                return await self._start(replica, **extra)
            except SystemExit:
                if attempt == 30 or "store error" not in replica.log.read_text(errors="replace")[-2000:]:
                    raise
                self.restarts_without_store += 1
                await asyncio.sleep(1)

    async def _start(self, replica: Replica, **extra: str) -> None:
        import aiohttp

        env = {**os.environ, **self.env, **extra, "PORT": str(replica.port), "HOST": "127.0.0.1"}
        log = replica.log.open("ab")
        replica.process = subprocess.Popen(
            [sys.executable, "-m", "handlers.wiring.cli", "serve", "--host", "127.0.0.1", "--port", str(replica.port)],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        replica.starts += 1
        async with aiohttp.ClientSession() as session:
            for _ in range(1200):
                if replica.process.poll() is not None:
                    raise SystemExit(f"{replica.name} exited {replica.process.returncode}; see {replica.log}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(f"http://127.0.0.1:{replica.port}/healthz") as response:
                        if response.status == 200:
                            replica.up = True
                            replica.fds_at_start = open_fds(replica.process.pid)
                            return
                await asyncio.sleep(0.05)
        raise SystemExit(f"{replica.name} did not start; see {replica.log}")

    def note_peak(self, replica: Replica) -> None:
        if replica.process is not None:
            replica.peak_rss_mib = max(replica.peak_rss_mib, proc_status(replica.process.pid, "VmHWM"))

    def kill(self, replica: Replica) -> None:
        assert replica.process is not None
        self.note_peak(replica)
        replica.up = False
        replica.process.send_signal(signal.SIGKILL)
        replica.process.wait(10)
        self.kills += 1

    async def stop(self, replica: Replica) -> None:
        """SIGTERM: finish what is in flight, exit 0."""
        if replica.process is None or replica.process.poll() is not None:
            return
        self.note_peak(replica)
        replica.up = False
        replica.process.send_signal(signal.SIGTERM)
        for _ in range(1200):
            if replica.process.poll() is not None:
                return
            await asyncio.sleep(0.05)
        replica.process.kill()

    def url(self) -> str | None:
        """The next live replica's webhook URL (round robin)."""
        live = [r for r in self.replicas if r.up]
        if not live:
            return None
        self._next += 1
        return live[self._next % len(live)].url


# --- the store, read from outside ------------------------------------------------------------

class StoreReader:
    """Delivery states and audit counts, read from the database Moko writes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pg: Any = None
        self.errors: Counter[str] = Counter()  # failed reads, by error

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.url.startswith("sqlite:"):
            path = self.url.removeprefix("sqlite:///")

            def read() -> list[tuple[Any, ...]]:
                with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
                    return list(conn.execute(sql))

            return await asyncio.get_running_loop().run_in_executor(None, read)
        import asyncpg

        for attempt in range(60):
            try:
                if self._pg is None or self._pg.is_closed():
                    self._pg = await asyncpg.connect(self.url, timeout=5)
                # With a timeout: a query sent as the server restarts may never be answered.
                return [tuple(row) for row in await self._pg.fetch(sql, timeout=10)]
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                self.errors[type(error).__name__] += 1
                if self._pg is not None:
                    self._pg.terminate()
                self._pg = None  # the server restarting: connect again
                if attempt == 59:
                    raise
                await asyncio.sleep(0.5)
        return []

    async def states(self, ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            quoted = ",".join("'" + i.replace("'", "''") + "'" for i in chunk)
            rows = await self.query(f"SELECT id, state FROM deliveries WHERE id IN ({quoted})")
            found.update({str(i): str(s) for i, s in rows})
        return found

    async def close(self) -> None:
        if self._pg is not None:
            await self._pg.close()


# --- the load generator ---------------------------------------------------------------------

@dataclass
class Stream:
    """What was sent, acknowledged, and planned."""

    sent: dict[str, dict[str, Any]] = field(default_factory=dict)  # delivery id -> step
    acknowledged: set[str] = field(default_factory=set)
    resends: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds)
    plan: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    last_acknowledged: float = 0.0


def signed(event: str, payload: dict[str, Any], delivery: str) -> tuple[bytes, dict[str, str]]:
    from tests.fakegithub.webhooks import webhook_headers

    body = json.dumps(payload, separators=(",", ":")).encode()
    return body, webhook_headers(event, delivery, body, SECRET)


async def post_until_acknowledged(session: Any, mokos: Mokos, stream: Stream, delivery: str,
                                  body: bytes, headers: dict[str, str]) -> None:
    """Post as GitHub does, and send again (same ID) what was refused or not answered in 10 s."""
    import aiohttp

    first = True
    while True:
        url = mokos.url()
        if url is None:
            await asyncio.sleep(0.1)
            continue
        if not first:
            stream.resends += 1
        first = False
        started = CLOCK()
        try:
            async with session.post(url, data=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=GITHUB_TIMEOUT)) as response:
                await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            stream.refused[type(error).__name__] += 1
            await asyncio.sleep(random.uniform(0.1, 0.5))
            continue
        if status in (200, 202):
            now = CLOCK()
            stream.latencies.append((now, now - started))
            stream.acknowledged.add(delivery)
            stream.last_acknowledged = time.time()
            return
        if status == 503:
            stream.refused["503"] += 1
            await asyncio.sleep(random.uniform(0.1, 0.5))
            continue
        raise SystemExit(f"delivery {delivery} answered {status}: the bench sent something wrong")


class Campaign:
    """The bounded stream, its gates, the kills and the checks."""

    def __init__(self, args: argparse.Namespace, fake: Fake, mokos: Mokos, store: StoreReader) -> None:
        self.args = args
        self.fake = fake
        self.mokos = mokos
        self.store = store
        self.stream = Stream()
        self.rng = random.Random(args.seed)
        self.orgs = [f"org-{i:02d}" for i in range(args.installations)]
        self.repos = {org: [f"{org}/repo-{r:03d}" for r in range(args.repositories)] for org in self.orgs}
        self.busy: set[str] = set()  # repositories with a mutation not yet processed
        self.parked: set[str] = set()  # left drifted by a failed delivery: for the reconciliation
        self.pushing: set[str] = set()  # installations whose policy push is not yet processed
        self.outstanding: dict[str, str] = {}  # delivery id -> repository or org (push)
        self.finished: dict[str, str] = {}
        self.created = 0
        self.pg_restarted = False
        self.unsettled: dict[str, str] = {}  # delivery id -> target, not finished when the settle ended
        self.settle_seconds = 0.0  # from the last delivery sent (and the kills) to the last one finished
        self.parked_by: dict[str, str] = {}  # repository -> how the delivery that left it drifted ended
        self.watch_errors: Counter[str] = Counter()

    def pick(self) -> tuple[str, str, str] | None:
        kind = self.rng.choices(KINDS, WEIGHTS)[0]
        orgs = [o for o in self.orgs if o not in self.pushing]
        self.rng.shuffle(orgs)
        for org in orgs:
            if kind == "push":
                if (not any(o == org or o.startswith(org + "/") for o in self.outstanding.values())
                        and not any(r.startswith(org + "/") for r in self.busy)):
                    return kind, org, ".github"
                continue
            if kind == "created":
                self.created += 1
                name = f"{org}/new-{self.created:04d}"
                self.repos[org].append(name)
                return kind, org, name.split("/", 1)[1]
            free = [r for r in self.repos[org] if r not in self.busy and r not in self.parked]
            if free:
                return kind, org, self.rng.choice(free).split("/", 1)[1]
        return None

    def planned(self, kind: str, full_name: str, n: int) -> None:
        plan = self.stream.plan[full_name]
        if kind == "created":
            plan["protection"] += 1
            plan["settings"] += 1 if n % 2 == 0 else 0
        elif kind in ("edited", "apply"):
            plan["settings"] += 1
        elif kind == "protection":
            plan["protection"] += 1

    async def send_step(self, session: Any, n: int, kind: str, org: str, repo: str) -> None:
        full_name = f"{org}/{repo}"
        delivery = f"{kind}-{n}-{uuid.uuid4()}"
        answer = await self.fake.ask("step", kind=kind, org=org, repo=repo, n=n)
        self.planned(kind, full_name, n)
        body, headers = signed(answer["event"], answer["payload"], delivery)
        self.stream.sent[delivery] = {"kind": kind, "repo": full_name}
        self.outstanding[delivery] = org if kind == "push" else full_name
        await post_until_acknowledged(session, self.mokos, self.stream, delivery, body, headers)

    async def watch(self) -> None:
        """Free the gates of processed deliveries (done, or failed: parked for later)."""
        while True:
            await asyncio.sleep(0.3)
            try:
                await self._free_gates()
            except Exception as error:  # a failed round must not stop the gates for good
                self.watch_errors[repr(error)[:200]] += 1

    async def _free_gates(self) -> None:
        """One round: the deliveries that ended free their repository (or installation)."""
        ids = [d for d in self.outstanding if d in self.stream.acknowledged]
        if not ids:
            return
        states = await self.store.states(ids)
        ended = {d: s for d, s in states.items() if s in ("done", "failed")}
        if not ended:
            return
        repos = sorted({self.outstanding[d] for d in ended if "/" in self.outstanding[d]})
        compliant = await self.fake.ask("compliant", repos=repos) if repos else {}
        for delivery, state in ended.items():
            target = self.outstanding.pop(delivery)
            self.finished[delivery] = state
            if "/" in target:
                self.busy.discard(target)
                if not compliant.get(target):
                    self.parked.add(target)
                    self.parked_by[target] = state
            else:
                self.pushing.discard(target)
                # The push's reconcile may have fixed what a failed delivery left.
                waiting = [r for r in self.parked if r.startswith(target + "/")]
                if waiting:
                    fixed = await self.fake.ask("compliant", repos=waiting)
                    self.parked.difference_update(r for r, ok in fixed.items() if ok)

    async def kill_at(self, thresholds: list[int]) -> None:
        for threshold in thresholds:
            while len(self.stream.acknowledged) < threshold:
                await asyncio.sleep(0.05)
            await asyncio.sleep(self.rng.uniform(0.0, 0.5))
            live = [r for r in self.mokos.replicas if r.up]
            if not live:
                continue
            victim = self.rng.choice(live)
            self.mokos.kill(victim)
            await asyncio.sleep(self.rng.uniform(0.0, 1.0))
            await self.mokos.start(victim)

    async def restart_postgres_at(self, threshold: int) -> None:
        while len(self.stream.acknowledged) < threshold:
            await asyncio.sleep(0.05)
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"]
        await asyncio.get_running_loop().run_in_executor(None, lambda: subprocess.run(command, check=True))
        self.pg_restarted = True

    async def run(self) -> None:
        import aiohttp

        total = self.args.deliveries
        thresholds = sorted(self.rng.randint(int(total * 0.05), int(total * 0.95)) for _ in range(self.args.kills))
        background = [asyncio.create_task(self.watch()), asyncio.create_task(self.kill_at(thresholds))]
        if self.args.restart_postgres:
            background.append(asyncio.create_task(self.restart_postgres_at(total // 2)))
        in_flight: set[asyncio.Task[None]] = set()
        connector = aiohttp.TCPConnector(limit=self.args.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            n = 0
            while n < total:
                if len(in_flight) >= self.args.concurrency:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    in_flight = {t for t in in_flight if not t.done()}
                    continue
                choice = self.pick()
                if choice is None:
                    await asyncio.sleep(0.05)
                    continue
                kind, org, repo = choice
                if kind == "push":
                    self.pushing.add(org)
                else:
                    self.busy.add(f"{org}/{repo}")
                n += 1
                task = asyncio.create_task(self.send_step(session, n, kind, org, repo))
                in_flight.add(task)
            if in_flight:
                await asyncio.gather(*in_flight)
            # Every kill happens during the stream; then what is stored must all finish.
            await background[1]
            if self.args.restart_postgres:
                await background[2]
            # The backlog the kills and the 5 s answers left is processed at whatever pace the
            # machine allows: wait for it as long as deliveries keep finishing. A fixed window
            # ended with deliveries still queued on a loaded machine, and counted their
            # repositories as left drifted, and their commands as unanswered.
            ended = CLOCK()
            await self.until_finished(lambda: len(self.outstanding))
            self.settle_seconds = CLOCK() - ended
            background[0].cancel()
            self.unsettled = dict(self.outstanding)

    async def until_finished(self, unfinished: Callable[[], int | Awaitable[int]]) -> int:
        """Wait while ``unfinished`` deliveries remain and keep finishing: give up once none
        finished for ``--settle`` seconds. How many remain."""
        left, progress = None, CLOCK()
        while True:
            now = unfinished()
            now = await now if inspect.isawaitable(now) else now
            if now == 0 or (now == left and CLOCK() - progress > self.args.settle):
                return now
            if now != left:
                left, progress = now, CLOCK()
            await asyncio.sleep(0.3)

    async def unfinished(self) -> int:
        """Deliveries sent whose state in the store is not final (done or failed)."""
        states = await self.store.states(list(self.stream.sent))
        return sum(1 for d in self.stream.sent if states.get(d) not in ("done", "failed"))


# --- checks -----------------------------------------------------------------------------------

async def check(campaign: Campaign, report: dict[str, Any], audit_exit: int, audit_out: str) -> dict[str, Any]:
    stream, store = campaign.stream, campaign.store
    ids = list(stream.sent)
    states = await store.states(ids)
    table = "audit" if store.url.startswith("sqlite:") else "audit_log"
    duplicates = await store.query(
        f"SELECT run_id, repo, field, count(*) FROM {table} WHERE outcome = 'applied' "
        "GROUP BY run_id, repo, field HAVING count(*) > 1")
    retaken = (await store.query("SELECT count(*) FROM deliveries WHERE attempts > 1"))[0][0]
    ours = [row for row in duplicates if any(str(row[0]).endswith(d) for d in stream.sent)]
    # Across runs too: two fixers of one repository (two deliveries, a delivery and a push's
    # reconcile) each recording the same fix. A run makes one settings PATCH and one PUT a
    # branch, so its applied records of a repository's kind count as one write.
    # A run whose later step failed rolled its applied steps back: the change did not stand
    # (its record says `rolled-back`), and it cost two writes, the change and its undo, that
    # the repository's next fixer makes again. Neither counts as a change made twice.
    outcomes = await store.query(
        f"SELECT DISTINCT run_id, repo, policy, outcome FROM {table} "
        "WHERE outcome IN ('applied', 'rolled-back') AND policy IN ('repository', 'branch_protection')")
    applied_runs: dict[tuple[str, str], set[str]] = defaultdict(set)
    rolled_back: dict[tuple[str, str], set[str]] = defaultdict(set)
    for run_id, repo, policy, outcome in outcomes:
        kind = "settings" if policy == "repository" else "protection"
        (applied_runs if outcome == "applied" else rolled_back)[(repo, kind)].add(str(run_id))
    applied_over = {}
    for (repo, kind), runs in applied_runs.items():
        standing = len(runs - rolled_back[(repo, kind)])
        planned = stream.plan[repo][kind] if repo in stream.plan else 0
        if standing > planned:
            applied_over[f"{repo} {kind}"] = (standing, planned)
    over, under = {}, {}
    for name, plan in stream.plan.items():
        done = report["writes"].get(name, {})
        for kind in ("settings", "protection"):
            allowed = plan[kind] + 2 * len(rolled_back[(name, kind)])
            if done.get(kind, 0) > allowed:
                over[f"{name} {kind}"] = (done.get(kind, 0), plan[kind])
            elif done.get(kind, 0) < plan[kind]:
                under[f"{name} {kind}"] = (done.get(kind, 0), plan[kind])
    unplanned = {name: counts for name, counts in report["writes"].items() if name not in stream.plan}
    noncompliant = sorted(name for name, ok in report["compliant"].items() if not ok)
    answers = Counter(report["answers"].values())
    lost = [d for d in stream.acknowledged if states.get(d) not in ("done", "failed")]
    state_counts = Counter(states.get(d, "missing") for d in ids)
    latencies = [seconds for _, seconds in stream.latencies]
    return {
        "deliveries": len(ids),
        "acknowledged": len(stream.acknowledged),
        "resent": stream.resends,
        "refused_or_unanswered": dict(stream.refused),
        "stored": sum(1 for d in ids if d in states),
        "done": state_counts["done"],
        "failed": state_counts["failed"],
        "lost": len(lost),
        "retaken": int(retaken),
        "lost_ids": lost[:10],
        "writes_planned": sum(sum(p.values()) for p in stream.plan.values()),
        "writes_made": sum(sum(w.values()) for w in report["writes"].values()),
        "written_more_than_planned": over,
        "written_less_than_planned": under,
        "unplanned_writes": unplanned,
        "applied_twice_in_audit": [list(map(str, row)) for row in ours],
        "applied_more_than_planned": applied_over,
        "repositories": len(report["compliant"]),
        "noncompliant": noncompliant,
        "commands": len(report["answers"]),
        "commands_answered_once": answers[1],
        "commands_answered": {str(k): v for k, v in answers.items()},
        "audit_verify_exit": audit_exit,
        "audit_verify": audit_out.strip().splitlines()[-1:] if audit_out.strip() else [],
        "ack_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "ack_p99_ms": round(sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1000, 1) if latencies else None,
        "faults_drawn": report["faults"],
        "github_requests": report["requests"],
        "fake_violations": report["violation_count"],
        "violation_examples": report["violations"],
    }


def audit_verify(env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "handlers.wiring.cli", "audit", "--verify"],
                          env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


# --- orchestration ------------------------------------------------------------------------

def moko_env(fake: Fake, database: str, **extra: str) -> dict[str, str]:
    return {
        "GITHUB_APP_ID": str(fake.info["app_id"]), "GITHUB_PRIVATE_KEY": fake.info["key"],
        "GITHUB_WEBHOOK_SECRET": SECRET, "GITHUB_API_URL": fake.info["url"],
        "MOKO_DATABASE_URL": database, "MOKO_SWEEP_INTERVAL": "0", "MOKO_RECOVER_WINDOW": "0",
        "MOKO_RETRY_BASE_DELAY": "0.1", "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
        # A fifth of the answers fail: with the default 4 tries per request (backoff from a
        # tenth of a second), four faults in a row at one request (an installation's token,
        # once) failed a `/moko apply`'s delivery, which then ended failed and unanswered.
        "MOKO_RETRY_ATTEMPTS": "8",
        **extra,
    }


@contextlib.asynccontextmanager
async def database(backend: str, workdir: Path, keep: bool = False) -> Any:
    """A SQLite file in workdir, or a fresh PostgreSQL database dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir}/moko.db"
        return
    import asyncpg

    server = os.environ.get("MOKO_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"moko_faults_{os.getpid()}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        for _ in range(0 if keep else 60):
            try:
                admin = await asyncpg.connect(server)
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await admin.close()
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await asyncio.sleep(1)


async def campaign_main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="moko-faults-"))
    fake = Fake(args.installations, args.repositories, workdir / "github-requests.jsonl")
    fake_fds_start = open_fds(fake.process.pid)
    started = time.time()
    try:
        async with database(args.backend, workdir, args.keep) as url:
            env = moko_env(fake, url, **({"MOKO_WORKERS": str(args.workers)} if args.workers else {}))
            mokos = Mokos(2 if args.backend == "postgres" else 1, env, workdir)
            store = StoreReader(url)
            for replica in mokos.replicas:
                await mokos.start(replica)
            fds_start = {r.name: r.fds_at_start for r in mokos.replicas}
            await fake.ask("faults", server_error=args.server_errors / 2, reset=args.server_errors / 2,
                           secondary_limit=args.secondary, delay=args.delays, delay_seconds=args.delay_seconds,
                           after_effect=0.5, seed=args.seed)
            campaign = Campaign(args, fake, mokos, store)
            await campaign.run()
            last_delivery = campaign.stream.last_acknowledged
            report = await fake.ask("report")
            drifted = [name for name, ok in report["compliant"].items() if not ok]
            unfinished_at_report = len(campaign.unsettled)
            unsettled_targets = set(campaign.unsettled.values())
            unsettled_states = Counter((await store.states(list(campaign.unsettled))).values())
            reconciled = 0
            if drifted:
                # What failed deliveries left is the continuous reconciliation's: start it.
                reconciled = len(drifted)
                for replica in mokos.replicas:
                    await mokos.stop(replica)
                    await mokos.start(replica, MOKO_SWEEP_INTERVAL="10s")
                deadline = CLOCK() + 180
                while CLOCK() < deadline:
                    await asyncio.sleep(1)
                    left = await fake.ask("compliant", repos=drifted)
                    if all(left.values()):
                        break
                # Counted only once every delivery has finished: a command whose delivery is
                # still at work has not answered yet, and would be counted unanswered.
                unfinished_at_report = await campaign.until_finished(campaign.unfinished)
                report = await fake.ask("report")
            await fake.ask("faults")  # off: the checks read, they are not under test
            await asyncio.sleep(1)
            fds_end = {r.name: open_fds(r.process.pid) for r in mokos.replicas if r.process}
            for replica in mokos.replicas:
                mokos.note_peak(replica)
            fake_peak = proc_status(fake.process.pid, "VmHWM")
            fake_fds_end = open_fds(fake.process.pid)
            for replica in mokos.replicas:
                await mokos.stop(replica)
            audit_exit, audit_out = audit_verify(env)
            result = await check(campaign, report, audit_exit, audit_out)
            await store.close()
            result.update({
                "backend": args.backend,
                "replicas": len(mokos.replicas),
                "installations": args.installations,
                "kills": mokos.kills,
                "starts_without_store": mokos.restarts_without_store,
                "postgres_restarted": campaign.pg_restarted,
                "reconciled_after": reconciled,
                "unsettled": len(campaign.unsettled),
                "unsettled_states": dict(unsettled_states),
                "drifted_with_delivery_unsettled": sum(1 for name in drifted if name in unsettled_targets
                                                       or name.split("/")[0] in unsettled_targets),
                "drifted_after": {state: sum(1 for name in drifted if campaign.parked_by.get(name) == state)
                                  for state in ("done", "failed")},
                "unfinished_at_report": unfinished_at_report,
                "settle_s": round(campaign.settle_seconds, 1),
                "watch_errors": dict(campaign.watch_errors),
                "store_read_errors": dict(store.errors),
                "database": url,
                "seconds": round(time.time() - started, 1),
                "last_delivery_to_last_fix_s": round(max(0.0, report["last_write"] - last_delivery), 1),
                "peak_rss_mib": {r.name: round(r.peak_rss_mib, 1) for r in mokos.replicas}
                | {"fake": round(fake_peak, 1),
                   "load": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
                "fds_start_end": {name: [fds_start[name], fds_end.get(name)] for name in fds_start}
                | {"fake": [fake_fds_start, fake_fds_end]},
                "workdir": str(workdir),
            })
            return result
    finally:
        fake.close()


def verdict(result: dict[str, Any]) -> list[str]:
    """What the campaign claims and did not hold."""
    problems = []
    if result["lost"]:
        problems.append(f"{result['lost']} deliveries lost")
    if result["stored"] != result["deliveries"]:
        problems.append(f"{result['deliveries'] - result['stored']} deliveries not stored")
    if result["written_more_than_planned"] or result["unplanned_writes"]:
        problems.append(f"written more than planned: {result['written_more_than_planned']} "
                        f"{result['unplanned_writes']}")
    if result["applied_twice_in_audit"]:
        problems.append(f"applied twice (audit): {result['applied_twice_in_audit'][:5]}")
    if result["applied_more_than_planned"]:
        problems.append(f"applied more than planned (audit): {result['applied_more_than_planned']}")
    if result["unsettled"] or result["unfinished_at_report"]:
        problems.append(f"deliveries still unfinished: {result['unsettled']} after the stream, "
                        f"{result['unfinished_at_report']} when the answers were counted")
    if result["drifted_after"]["done"]:
        problems.append(f"{result['drifted_after']['done']} repositories drifted after their delivery ended done")
    if result["noncompliant"]:
        problems.append(f"not compliant: {result['noncompliant'][:10]}")
    if result["commands_answered_once"] != result["commands"]:
        problems.append(f"commands answered: {result['commands_answered']}")
    if result["audit_verify_exit"] != 0:
        problems.append(f"moko audit --verify exited {result['audit_verify_exit']}: {result['audit_verify']}")
    if result["fake_violations"]:
        problems.append(f"requests the fake refused: {result['violation_examples']}")
    return problems


def print_table(result: dict[str, Any]) -> None:
    rows = [
        ("backend", f"{result['backend']} ({result['replicas']} process(es)), "
                    f"{result['installations']} installations"),
        ("deliveries sent / acknowledged / stored", f"{result['deliveries']} / {result['acknowledged']} / {result['stored']}"),
        ("resent (refused or unanswered)", f"{result['resent']} {result['refused_or_unanswered']}"),
        ("finished done / failed / lost", f"{result['done']} / {result['failed']} / {result['lost']}"),
        ("claimed again after a kill (started or not)", str(result["retaken"])),
        ("writes planned / made (2xx)", f"{result['writes_planned']} / {result['writes_made']}"),
        ("repositories written more than planned", str(len(result['written_more_than_planned']))),
        ("applied twice (audit): by one run / by runs beyond the plan",
         f"{len(result['applied_twice_in_audit'])} / {len(result['applied_more_than_planned'])}"),
        ("repositories compliant", f"{result['repositories'] - len(result['noncompliant'])} / {result['repositories']}"),
        ("last delivery sent to the last one finished", f"{result['settle_s']} s"),
        ("deliveries unfinished then (their states); drifted repositories among theirs",
         f"{result['unsettled']} {json.dumps(result['unsettled_states'])}; {result['drifted_with_delivery_unsettled']}"),
        ("left to the reconciliation (the delivery that left it drifted: done / failed)",
         f"{result['reconciled_after']} ({result['drifted_after']['done']} / {result['drifted_after']['failed']})"),
        ("deliveries unfinished when the answers were counted", str(result["unfinished_at_report"])),
        ("the campaign's own failed reads: of the store / rounds of its watch",
         f"{json.dumps(result['store_read_errors'])} / {json.dumps(result['watch_errors'])}"),
        ("commands answered exactly once", f"{result['commands_answered_once']} / {result['commands']}"),
        ("moko audit --verify", f"exit {result['audit_verify_exit']}"),
        ("kills (SIGKILL) / PostgreSQL restarted", f"{result['kills']} / {result['postgres_restarted']}"),
        ("faults drawn", json.dumps(result["faults_drawn"])),
        ("GitHub requests", str(result["github_requests"])),
        ("acknowledgement p50 / p99", f"{result['ack_p50_ms']} ms / {result['ack_p99_ms']} ms"),
        ("last delivery to last fix", f"{result['last_delivery_to_last_fix_s']} s"),
        ("peak RSS (MiB)", json.dumps(result["peak_rss_mib"])),
        ("open descriptors start / end", json.dumps(result["fds_start_end"])),
        ("wall time", f"{result['seconds']} s"),
    ]
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


# --- soak ------------------------------------------------------------------------------------

async def soak_main(args: argparse.Namespace) -> dict[str, Any]:
    """Deliveries at a steady rate under the same faults (no kills): samples every 10 s."""
    import aiohttp

    workdir = Path(tempfile.mkdtemp(prefix="moko-soak-"))
    fake = Fake(args.installations, args.repositories)
    samples: list[dict[str, Any]] = []
    try:
        url = f"sqlite:///{workdir}/moko.db"
        extra = {"MOKO_WORKERS": str(args.workers)} if args.workers else {}
        mokos = Mokos(1, moko_env(fake, url, **extra), workdir)
        replica = mokos.replicas[0]
        await mokos.start(replica)
        await fake.ask("faults", server_error=args.server_errors / 2, reset=args.server_errors / 2,
                       secondary_limit=args.secondary, delay=args.delays, delay_seconds=args.delay_seconds,
                       after_effect=0.5, seed=args.seed)
        campaign = Campaign(args, fake, mokos, StoreReader(url))
        stream = campaign.stream
        rng = campaign.rng
        end = CLOCK() + args.soak * 60
        started = CLOCK()
        pending: set[asyncio.Task[None]] = set()
        connector = aiohttp.TCPConnector(limit=200)

        def db_mib() -> float:
            return sum(p.stat().st_size for p in workdir.glob("moko.db*") if p.is_file()) / 2**20

        async def finished() -> int:
            rows = await campaign.store.query("SELECT count(*) FROM deliveries WHERE state IN ('done', 'failed')")
            return int(rows[0][0])

        async def sample() -> None:
            since = CLOCK()
            assert replica.process is not None
            cpu_before = cpu_seconds(replica.process.pid)
            while True:
                await asyncio.sleep(10)
                cpu_now = cpu_seconds(replica.process.pid)
                cpu_share, cpu_before = (cpu_now - cpu_before) / max(1e-3, CLOCK() - since), cpu_now
                window = sorted(s for when, s in stream.latencies if when >= since)
                since = CLOCK()
                samples.append({
                    "t": round(CLOCK() - started), "rss_mib": round(proc_status(replica.process.pid, "VmRSS"), 1),
                    "fds": open_fds(replica.process.pid), "db_mib": round(db_mib(), 1),
                    "p99_ack_ms": round(window[max(0, int(len(window) * 0.99) - 1)] * 1000, 1) if window else None,
                    "cpu_pct": round(100 * cpu_share),
                    "acknowledged": len(stream.acknowledged), "finished": await finished(),
                    **await moko_metrics(replica),
                })
                print(json.dumps(samples[-1]), flush=True)

        sampler = asyncio.create_task(sample())
        async with aiohttp.ClientSession(connector=connector) as session:
            n = 0
            interval = 1 / args.rate
            next_at = CLOCK()
            while CLOCK() < end:
                # Open loop: a delivery every 1/rate s, whatever Moko's pace (GitHub's is its own).
                kind = rng.choices(SOAK_KINDS, SOAK_WEIGHTS)[0]
                org = rng.choice(campaign.orgs)
                if kind == "created":
                    campaign.created += 1
                    repo = f"new-{campaign.created:05d}"
                elif kind == "push":
                    repo = ".github"
                else:
                    repo = f"repo-{rng.randrange(args.repositories):03d}"
                n += 1
                pending.add(asyncio.create_task(campaign.send_step(session, n, kind, org, repo)))
                pending = {t for t in pending if not t.done()}
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - CLOCK()))
            await asyncio.gather(*pending)
        sampler.cancel()
        await fake.ask("faults")
        await mokos.stop(replica)
        states = Counter((await campaign.store.states(list(stream.sent))).values())
        late = [s for s in samples if s["t"] >= 300] or samples
        return {"samples": samples, "deliveries": n, "acknowledged": len(stream.acknowledged),
                "states": dict(states), "minutes": args.soak, "rate": args.rate,
                "installations": args.installations, "workers": args.workers,
                "after_5_min": {key: {"first": late[0][key], "last": late[-1][key],
                                      "min": min(s[key] for s in late), "max": max(s[key] for s in late),
                                      "slope_per_min": slope(late, key)}
                                for key in ("rss_mib", "fds", "db_mib")} if late else {},
                "db_bytes_per_delivery": round(samples[-1]["db_mib"] * 2**20 / max(1, n)) if samples else None,
                "workdir": str(workdir)}
    finally:
        fake.close()


# What /metrics says of where the time goes: wait seconds by reason, retries, the queue.
_METRIC_LINE = re.compile(r'^(moko_[a-z_]+?)(?:\{([^}]*)\})? ([0-9.e+-]+|NaN)$')


async def moko_metrics(replica: Replica) -> dict[str, Any]:
    """The figures of `moko serve`'s /metrics that show what bounds its pace (totals so far)."""
    import aiohttp

    found: dict[str, Any] = {"queue": None, "waits_s": {}, "retries": {}, "github_requests": 0,
                             "budget_min": None}
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{replica.port}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as response:
            text = await response.text()
        for line in text.splitlines():
            match = _METRIC_LINE.match(line)
            if match is None:
                continue
            name, labels, value = match[1], dict(re.findall(r'(\w+)="([^"]*)"', match[2] or "")), float(match[3])
            if name == "moko_queue_depth":
                found["queue"] = int(value)
            elif name == "moko_github_wait_seconds_total":
                found["waits_s"][labels["reason"]] = round(value, 1)
            elif name == "moko_github_retries_total":
                found["retries"][labels["reason"]] = int(value)
            elif name == "moko_github_requests_total":
                found["github_requests"] += int(value)
            elif name == "moko_workers_busy":
                found["workers_busy"] = int(value)
            elif name == "moko_github_write_turn_wait_seconds_total":
                found["write_turn_wait_s"] = round(value, 1)
            elif name == "moko_github_write_turn_held_seconds_total":
                found["write_turn_held_s"] = round(value, 1)
            elif name == "moko_github_rate_limit_remaining":
                found["budget_min"] = int(min(value, found["budget_min"] or value))
    return found


def slope(samples: list[dict[str, Any]], key: str) -> float:
    """Least-squares slope of a sampled value, per minute."""
    points = [(s["t"] / 60, s[key]) for s in samples if s[key] is not None]
    if len(points) < 2:
        return 0.0
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return round(sum((t - mean_t) * (v - mean_v) for t, v in points) / spread, 3) if spread else 0.0


def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    minutes = [s["t"] / 60 for s in samples]
    # Deliveries finished per second over each 10 s (the pace Moko kept, against the rate sent).
    for before, sample in zip([None, *samples], samples, strict=False):
        sample["finished_per_s"] = (
            round((sample["finished"] - before["finished"]) / max(1, sample["t"] - before["t"]), 1)
            if before is not None and "finished" in sample else None)
    keys = ("rss_mib", "fds", "db_mib", "p99_ack_ms", "finished_per_s")
    labels = ("RSS (MiB)", "open descriptors", "database (MiB)", "p99 acknowledgement (ms)",
              "deliveries finished / s")
    figure, axes = plt.subplots(len(keys), 1, figsize=(8, 11), sharex=True)
    for axis, key, label in zip(axes, keys, labels, strict=True):
        axis.plot(minutes, [s[key] if s.get(key) is not None else float("nan") for s in samples], marker=".")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    axes[-1].set_xlabel("minutes")
    installations = f", {result['installations']} installations" if "installations" in result else ""
    figure.suptitle(f"moko serve (SQLite), {result['rate']:g} deliveries/s for {result['minutes']:g} min{installations}\n"
                    "GitHub: 20 % 5xx or dropped, 2 % secondary limits, 5 % answered 5 s late")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--restart-postgres", action="store_true",
                        help="restart the PostgreSQL server once mid-stream (it is shared: mind others)")
    parser.add_argument("--installations", type=int, default=10)
    parser.add_argument("--repositories", type=int, default=20, help="per installation, at the start")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--server-errors", type=float, default=0.20, help="500, 502 or reset")
    parser.add_argument("--secondary", type=float, default=0.02)
    parser.add_argument("--delays", type=float, default=0.05)
    parser.add_argument("--delay-seconds", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=120.0,
                        help="seconds without a delivery finishing before the wait for the last ones gives up")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--soak", type=float, metavar="MINUTES")
    parser.add_argument("--rate", type=float, default=50.0, help="soak: deliveries per second")
    parser.add_argument("--plot", metavar="PNG", help="soak: where to draw the samples")
    parser.add_argument("--workers", type=int, help="MOKO_WORKERS (default: Moko's own)")
    parser.add_argument("--serve-fake", nargs=3, metavar=("INSTALLATIONS", "REPOS", "LOG"), help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database (its URL is printed)")
    args = parser.parse_args()
    if args.serve_fake:
        installations, repositories, request_log = args.serve_fake
        asyncio.run(serve_fake(int(installations), int(repositories), request_log or None))
        return
    if args.seed is None:
        args.seed = random.randrange(2**32)
    if args.soak:
        result = asyncio.run(soak_main(args))
        print(json.dumps(result))
        if args.plot:
            plot(result, args.plot)
        return
    if args.restart_postgres and args.backend != "postgres":
        parser.error("--restart-postgres needs --backend postgres")
    result = asyncio.run(campaign_main(args))
    result["seed"] = args.seed
    problems = verdict(result)
    result["problems"] = problems
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
        print("\n" + ("\n".join(f"FAILED: {p}" for p in problems) if problems else "all claims held")
              + f"  (seed {args.seed}; logs in {result['workdir']}"
              + (f"; database kept: {result['database']})" if args.keep and args.backend == "postgres" else ")"))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
