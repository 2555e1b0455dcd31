"""When the store's connections or a repository's lock end under Moko's feet (a PostgreSQL
restart, a session ended by an administrator, a lease taken over): writes go on over new
connections, and the work under a lost lock stops and starts over under a new one."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from bot.audit import settled
from bot.store.base import DONE, NewDelivery, RepositoryLockLost
from bot.store.postgres import PostgresStore
from bot.store.sqlite import SQLiteStore
from tests.support.harness import moko_environ, run_moko
from tests.support.org import INSTALLATION, ORG
from tests.support.waiting import wait_until
from tests.test_store_contract import audit_entry


async def end_sessions(url: str) -> None:
    """pg_terminate_backend every other session of this test's own database, as a restart
    would end them, and wait until they are gone (only this database: others share the server)."""
    conn = await asyncpg.connect(url)
    try:
        pids = [row["pid"] for row in await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
        await conn.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
        for _ in range(250):
            if not await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the sessions did not end")
    finally:
        await conn.close()


async def test_store_writes_go_on_after_their_connections_were_ended(postgres_url):
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        delivery = NewDelivery("d-1", "ping", None, {"x-github-event": "ping"}, b"{}")
        assert (await store.add_and_claim(delivery, "me", 60))[1] is not None
        await end_sessions(postgres_url)
        written = await store.append_audit([audit_entry(1)])
        await store.finish_delivery("d-1", "me", DONE)
        assert (await store.get_delivery("d-1")).state == DONE
        assert await store.audit_head() == (1, written[0].hash)
    finally:
        await store.close()


class SlowCloseProxy:
    """A TCP proxy to PostgreSQL that passes every byte at once but, when the server closes a
    connection, closes the client's side only after a delay: as a busy machine may deliver a
    session's last message (FATAL, the session was ended) well before the socket's end."""

    def __init__(self, url: str, close_delay: float) -> None:
        parts = urlsplit(url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._url = parts
        self._delay = close_delay
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        netloc = self._url.netloc.rsplit("@", 1)[0] + "@" if "@" in self._url.netloc else ""
        return urlunsplit(self._url._replace(netloc=f"{netloc}127.0.0.1:{port}"))

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self._upstream)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
            try:
                while chunk := await reader.read(65536):
                    writer.write(chunk)
                    await writer.drain()
            except ConnectionError:
                pass
            await asyncio.sleep(delay)
            writer.close()

        for task in (asyncio.ensure_future(pipe(server_reader, client_writer, self._delay)),
                     asyncio.ensure_future(pipe(client_reader, server_writer, 0.0))):
            self._tasks.add(task)


async def test_store_writes_go_on_when_an_ended_sessions_last_message_comes_before_its_end(postgres_url):
    async with SlowCloseProxy(postgres_url, close_delay=1.0) as proxied:
        store = PostgresStore(proxied)
        await store.open()
        try:
            await store.append_audit([audit_entry(1)])  # the pool's connection is open and idle
            await end_sessions(postgres_url)
            await asyncio.sleep(0.1)  # its FATAL message has arrived; its end has not
            written = await store.append_audit([audit_entry(2)])
            assert await store.audit_head() == (2, written[0].hash)
        finally:
            await store.close()


async def test_a_repository_lock_is_taken_on_a_new_connection_when_its_idle_one_was_ended(postgres_url):
    # As when the server restarts between two deliveries about a repository: the lock pool's
    # idle connection is gone (its end not yet seen), and the next delivery still gets the lock.
    async with SlowCloseProxy(postgres_url, close_delay=1.0) as proxied:
        store = PostgresStore(proxied)
        await store.open()
        try:
            async with store.repository_lock("acme/widgets"):
                pass  # the lock pool's connection is open and idle
            await end_sessions(postgres_url)
            await asyncio.sleep(0.1)  # its FATAL message has arrived; its end has not
            async with asyncio.timeout(10), store.repository_lock("acme/widgets") as held:
                await held.ensure()
            # The other pool's idle connection was ended too: an operation replaces it (closing
            # the store over it fails, which is not what this test is about).
            await store.audit_head()
        finally:
            async with asyncio.timeout(10):  # every connection is back in its pool
                await store.close()


async def waiting_for_an_advisory_lock(url: str) -> bool:
    """Whether a session of this test's database waits in pg_advisory_lock."""
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE 'SELECT pg_advisory_lock(%'"))
    finally:
        await conn.close()


async def test_a_repository_lock_given_up_while_waiting_leaves_its_connection_to_the_next_one(postgres_url):
    # As when a drain's grace runs out on a delivery that waits for another one's repository:
    # the connection it waited on goes back to the lock pool, so the pool (two connections
    # here) still holds as many locks at once as it has connections.
    store = PostgresStore(postgres_url, max_lock_connections=2)
    await store.open()
    try:
        async def wait_for_the_lock() -> None:
            async with store.repository_lock("acme/widgets"):
                raise AssertionError("the lock was held by another all along")

        async with store.repository_lock("acme/widgets"):
            waiter = asyncio.create_task(wait_for_the_lock())
            await wait_until(lambda: waiting_for_an_advisory_lock(postgres_url), timeout=10)
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        async with asyncio.timeout(10), store.repository_lock("acme/gadgets") as one, \
                store.repository_lock("acme/widgets") as two:
            await one.ensure()
            await two.ensure()
    finally:
        async with asyncio.timeout(10):
            await store.close()


async def test_a_repository_lock_whose_session_ended_is_lost_and_free_for_another_replica(postgres_url):
    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    await first.open()
    await second.open()
    try:
        async with first.repository_lock("acme/widgets") as held:
            await held.ensure()  # held: nothing happens
            await end_sessions(postgres_url)
            with pytest.raises(RepositoryLockLost, match="acme/widgets"):
                await held.ensure()
            async with asyncio.timeout(5), second.repository_lock("acme/widgets") as other:
                await other.ensure()  # the other replica has it now
    finally:
        await first.close()
        await second.close()


async def test_a_sqlite_repository_lock_taken_over_by_another_process_is_lost(tmp_path: Path):
    store = SQLiteStore(f"sqlite:///{tmp_path}/moko.db", lock_ttl=0.3)
    await store.open()
    try:
        async with store.repository_lock("acme/widgets") as held:
            await held.ensure()
            with sqlite3.connect(tmp_path / "moko.db") as db:  # its lease ran out and another took it
                db.execute("UPDATE locks SET owner = 'another-process', expires = 1e12 WHERE name = 'repo:acme/widgets'")
            for _ in range(100):
                if held.lost:
                    break
                await asyncio.sleep(0.02)
            with pytest.raises(RepositoryLockLost, match="another process took it"):
                await held.ensure()
    finally:
        await store.close()


async def test_a_remediation_whose_database_sessions_end_mid_way_finishes_under_a_new_lock(fake_github, postgres_url):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, "widgets", has_wiki=True, has_issues=True, has_projects=False)

    async def restart_database(call) -> None:
        if call.method == "PATCH":  # GitHub is changing the repository: the database restarts
            await end_sessions(postgres_url)

    fake_github.on_request(restart_database)
    async with run_moko(moko_environ(fake_github, postgres_url)) as moko:
        created = fake_github.event("repository", "created", owner=ORG, repo="widgets")
        assert (await moko.deliver("repository", created, delivery="new-1")).status == 202
        store = moko.services.store
        assert (await store.get_delivery("new-1")).state == DONE
        raw = await store.audit_records(repo=f"{ORG}/widgets")
    assert fake_github.repo(ORG, "widgets")["has_wiki"] is False
    assert fake_github.protection(ORG, "widgets", "main") is not None
    # The lock died with its session: before the next change Moko stopped, took the lock
    # again and read the repository afresh, so the PATCH was not sent twice.
    assert [(c.method, c.path) for c in fake_github.calls if c.path.startswith(f"/repos/{ORG}/widgets")] == [
        ("PATCH", f"/repos/{ORG}/widgets"),
        ("GET", f"/repos/{ORG}/widgets"),
        ("GET", f"/repos/{ORG}/widgets/branches/main/protection"),
        ("PUT", f"/repos/{ORG}/widgets/branches/main/protection"),
    ]
    assert [(r.field, r.outcome) for r in raw] == [
        ("has_wiki", "pending"), ("has_wiki", "applied"), ("main", "pending"), ("main", "applied")]
    assert [(r.field, r.outcome) for r in settled(raw)] == [("has_wiki", "applied"), ("main", "applied")]


async def test_a_remediation_whose_lock_is_lost_again_under_the_new_one_stops_with_what_it_made(
    fake_github, postgres_url
):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, "widgets", has_wiki=True, has_issues=True, has_projects=False)
    protection = f"/repos/{ORG}/widgets/branches/main/protection"

    async def restart_database(call) -> None:
        # The database restarts while the settings change, and again while the protection is read.
        if call.method == "PATCH" or (call.method == "GET" and call.path == protection):
            await end_sessions(postgres_url)

    fake_github.on_request(restart_database)
    async with run_moko(moko_environ(fake_github, postgres_url)) as moko:
        created = fake_github.event("repository", "created", owner=ORG, repo="widgets")
        await moko.deliver("repository", created, delivery="new-1")
        delivery = await moko.services.store.get_delivery("new-1")
        raw = await moko.services.store.audit_records(repo=f"{ORG}/widgets")
    # Twice is the most: the protection is left for the next delivery, the failure says why.
    assert [(c.method, c.path) for c in fake_github.calls if c.path.startswith(f"/repos/{ORG}/widgets")] == [
        ("PATCH", f"/repos/{ORG}/widgets"), ("GET", f"/repos/{ORG}/widgets"), ("GET", protection)]
    assert delivery.state == "failed" and "lock" in delivery.error
    assert [(r.field, r.outcome) for r in settled(raw)] == [("has_wiki", "applied")]


async def test_a_remediation_whose_lock_is_lost_and_whose_repository_cannot_be_read_again_stops(
    fake_github, postgres_url
):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, "widgets", has_wiki=True, has_issues=True, has_projects=False)

    async def restart_database(call) -> None:
        if call.method == "PATCH":
            await end_sessions(postgres_url)

    fake_github.on_request(restart_database)
    fake_github.fail("GET", f"^/repos/{ORG}/widgets$", 404, times=20)
    async with run_moko(moko_environ(fake_github, postgres_url)) as moko:
        created = fake_github.event("repository", "created", owner=ORG, repo="widgets")
        await moko.deliver("repository", created, delivery="new-1")
        delivery = await moko.services.store.get_delivery("new-1")
        raw = await moko.services.store.audit_records(repo=f"{ORG}/widgets")
    # What GitHub says now cannot be known: nothing more is written from the payload.
    writes = [(c.method, c.path) for c in fake_github.calls if c.method != "GET" and c.path.startswith("/repos/")]
    assert writes == [("PATCH", f"/repos/{ORG}/widgets")]
    assert delivery.state == "failed" and "404" in delivery.error
    assert [(r.field, r.outcome) for r in settled(raw)] == [("has_wiki", "applied")]


async def test_an_apply_command_whose_lock_is_lost_mid_way_reports_every_change_it_made(fake_github, postgres_url):
    # The PATCH lands under the first lock, the PUT under the second: the answer lists both,
    # not only what the second attempt did.
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, "widgets", has_wiki=True, has_issues=True, has_projects=False)
    fake_github.set_permission(ORG, "widgets", "mia", "maintain")

    async def restart_database(call) -> None:
        if call.method == "PATCH":
            await end_sessions(postgres_url)

    fake_github.on_request(restart_database)
    async with run_moko(moko_environ(fake_github, postgres_url)) as moko:
        asked = fake_github.event("issue_comment", "created", owner=ORG, repo="widgets",
                                  body="/moko apply", sender="mia")
        await moko.deliver("issue_comment", asked, delivery="apply-1")
        assert (await moko.services.store.get_delivery("apply-1")).state == DONE
    answer = [c["body"] for c in fake_github.comments(ORG, "widgets", 1)
              if c["user"]["login"] == fake_github.bot_login]
    assert len(answer) == 1
    done = [line for line in answer[0].splitlines() if line.endswith("— **done**")]
    assert [line.split(":")[0] for line in done] == ["- has\\_wiki", "- protect branch main"]


async def test_while_the_servers_restart_cut_every_replica_s_liveness_no_replica_takes_claims_in_flight(postgres_url):
    # A restart ends every session, each replica's liveness lock with it: until each takes
    # its lock again, every replica looks dead to the others, and to itself, however long
    # that takes (the clock is moved past the grace a replica gives the others once back).
    now = [1000.0]
    first, second = (PostgresStore(postgres_url, clock=lambda: now[0]) for _ in range(2))
    await first.open()
    await second.open()
    try:
        for store, name in ((first, "d-1"), (second, "d-2")):
            delivery = NewDelivery(name, "ping", None, {"x-github-event": "ping"}, b"{}")
            assert (await store.add_and_claim(delivery, store.owner, 60))[1] is not None
        await end_sessions(postgres_url)
        await asyncio.sleep(0.1)  # each store has seen its liveness connection end
        now[0] += 60

        assert await second.claim_pending(second.owner, 60, 10) == []
        assert await first.claim_pending(first.owner, 60, 10) == []
        for name in ("d-1", "d-2"):
            held = await first.get_delivery(name)
            assert (held.state, held.attempts) == ("processing", 1)  # claimed once, by its own
    finally:
        await first.close()
        await second.close()


async def test_a_replica_back_after_the_servers_restart_leaves_another_s_claims_alone_until_it_could_be_back(
    postgres_url,
):
    now = [1000.0]
    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url, clock=lambda: now[0])
    await first.open()
    await second.open()
    delivery = NewDelivery("d-1", "ping", None, {"x-github-event": "ping"}, b"{}")
    assert (await first.add_and_claim(delivery, first.owner, 60))[1] is not None
    # The first will not take its liveness lock again (a process not back yet, or never).
    assert first._live_keeper is not None
    first._live_keeper.cancel()
    try:
        await end_sessions(postgres_url)
        conn = await asyncpg.connect(postgres_url)
        try:
            # The second takes its liveness lock again at its next check.
            held = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
                    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
            async with asyncio.timeout(20):
                while await conn.fetchval(held) < 1:
                    await asyncio.sleep(0.1)
        finally:
            await conn.close()

        assert await second.claim_pending(second.owner, 60, 10) == []
        now[0] += 10  # by then a replica still without its lock is gone
        assert [d.id for d in await second.claim_pending(second.owner, 60, 10)] == ["d-1"]
    finally:
        await second.close()
        with contextlib.suppress(Exception):
            await first.close()
