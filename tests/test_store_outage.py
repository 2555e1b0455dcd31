"""When the store cannot be written (another process holds the SQLite file's lock, the disk is
full): Moko answers quickly, says it is not ready, and changes nothing it could not record."""

from __future__ import annotations

import asyncio
import os
import resource
import sqlite3
import time
from pathlib import Path

import aiohttp

from tests.fakegithub.webhooks import load_example
from tests.support.harness import moko_environ, post_webhook, start_moko_process
from tests.support.org import INSTALLATION, ORG
from tests.support.waiting import wait_until


async def test_a_locked_sqlite_file_is_answered_503_with_retry_after_within_two_seconds(fake_github, tmp_path):
    db = tmp_path / "moko.db"
    server = await start_moko_process(moko_environ(fake_github, f"sqlite:///{db}"), tmp_path / "serve.log")
    try:
        async with aiohttp.ClientSession() as session:
            other = sqlite3.connect(db, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # e.g. `moko sweep` or a backup holding the write lock
            try:
                started = time.monotonic()
                reply = await post_webhook(session, server.url, "ping", load_example("ping"), delivery="while-locked")
                waited = time.monotonic() - started
            finally:
                other.execute("ROLLBACK")
                other.close()
            assert reply.status == 503 and reply.headers.get("Retry-After")
            assert 1.5 < waited < 4, waited  # gave up after 2 s, well within GitHub's 10 s
            again = await post_webhook(session, server.url, "ping", load_example("ping"), delivery="while-locked")
            assert again.status == 202  # GitHub's redelivery (same ID) is taken once the lock is gone
    finally:
        assert await server.stop() == 0, server.log()


async def readyz(session: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    async with session.get(url + "/readyz") as response:
        return response.status, await response.json()


async def wait_for_readyz(session: aiohttp.ClientSession, url: str, status: int, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer, body = await readyz(session, url)
        if answer == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz stayed {answer} {body}")
        await asyncio.sleep(0.1)


async def test_readyz_is_503_while_the_disk_refuses_writes_and_200_again_after(fake_github, tmp_path):
    db = tmp_path / "moko.db"
    # The log goes to /dev/null: the file size limit below would refuse a log file's lines too.
    server = await start_moko_process(moko_environ(fake_github, f"sqlite:///{db}"), Path(os.devnull))
    soft, hard = resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE)
    try:
        async with aiohttp.ClientSession() as session:
            assert (await readyz(session, server.url))[0] == 200
            # No file of the process may grow any more: to SQLite, that is a full disk.
            resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE, (1, hard))
            body = await wait_for_readyz(session, server.url, 503)
            assert body == {"status": "unavailable", "problems": ["store"]}
            refused = await post_webhook(session, server.url, "ping", load_example("ping"), delivery="full")
            assert refused.status == 503 and refused.headers.get("Retry-After")
            resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE, (soft, hard))  # space freed
            assert await wait_for_readyz(session, server.url, 200) == {"status": "ready"}
            accepted = await post_webhook(session, server.url, "ping", load_example("ping"), delivery="full")
            assert accepted.status == 202
    finally:
        assert await server.stop() == 0


async def test_readyz_writes_at_most_once_for_a_burst_of_probes(moko):
    store = moko.services.store
    before = store.commits
    answers = await asyncio.gather(*(readyz(moko.session, moko.url) for _ in range(20)))
    assert [status for status, _ in answers] == [200] * 20
    # One heartbeat for all of them (and perhaps the recovery loop's claim of a moment ago).
    assert store.commits - before <= 2
    written = store.commits
    again = await readyz(moko.session, moko.url)
    assert again[0] == 200 and store.commits == written  # the answer is kept for a moment


def trail(db: Path) -> list[tuple[str, str, str]]:
    """(field, outcome, run_id) of every audit record, in chain order, read as another process."""
    with sqlite3.connect(db) as conn:
        return [tuple(row) for row in conn.execute("SELECT field, outcome, run_id FROM audit ORDER BY seq")]



async def test_the_intent_is_on_disk_before_github_is_asked_and_the_outcome_follows(fake_github, tmp_path):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, "widgets", has_wiki=True, has_issues=True, has_projects=False)
    db = tmp_path / "moko.db"
    seen_at_request: dict[str, list[tuple[str, str, str]]] = {}
    fake_github.on_request(lambda call: seen_at_request.setdefault(f"{call.method} {call.path}", trail(db))
                           if call.method in ("PATCH", "PUT") else None)
    server = await start_moko_process(moko_environ(fake_github, f"sqlite:///{db}"), tmp_path / "serve.log")
    try:
        async with aiohttp.ClientSession() as session:
            created = fake_github.event("repository", "created", owner=ORG, repo="widgets")
            assert (await post_webhook(session, server.url, "repository", created, delivery="new-1")).status == 202
            await wait_until(lambda: len(trail(db)) == 4)
    finally:
        assert await server.stop() == 0, server.log()
    # While GitHub handled each request, its pending record was already written (and committed).
    assert seen_at_request[f"PATCH /repos/{ORG}/widgets"] == [("has_wiki", "pending", "new-1")]
    assert seen_at_request[f"PUT /repos/{ORG}/widgets/branches/main/protection"] == [
        ("has_wiki", "pending", "new-1"), ("has_wiki", "applied", "new-1"), ("main", "pending", "new-1")]
    assert trail(db) == [("has_wiki", "pending", "new-1"), ("has_wiki", "applied", "new-1"),
                         ("main", "pending", "new-1"), ("main", "applied", "new-1")]


async def test_no_repository_changes_while_the_store_cannot_record_it(fake_github, tmp_path):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, "core", has_wiki=False, has_issues=True, has_projects=False)
    db = tmp_path / "moko.db"
    protection = f"/repos/{ORG}/core/branches/main/protection"
    locker: list[sqlite3.Connection] = []

    def lock_the_store(call) -> None:
        # Moko holds the repository's lock and reads its protection: from now on another
        # process holds the SQLite file's write lock, so the PUT's record cannot be written.
        if not locker and call.method == "GET" and call.path == protection:
            conn = sqlite3.connect(db, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            locker.append(conn)

    fake_github.on_request(lock_the_store)
    log = tmp_path / "serve.log"
    # The repository's lock row outlives a failed release by the lease: keep that short.
    env = moko_environ(fake_github, f"sqlite:///{db}", MOKO_LEASE_SECONDS="2")
    server = await start_moko_process(env, log)
    try:
        async with aiohttp.ClientSession() as session:
            deleted = fake_github.event("branch_protection_rule", "deleted", owner=ORG, repo="core", branch="main")
            assert (await post_webhook(session, server.url, "branch_protection_rule", deleted, delivery="d-1")).status == 202
            await wait_until(lambda: "handler_failed" in log.read_text())  # the intent could not be written
            locker[0].execute("ROLLBACK")
            locker[0].close()
            assert fake_github.count("PUT", ".") == 0 and fake_github.protection(ORG, "core", "main") is None
            await wait_until(lambda: delivery_state(db, "d-1") == "failed")
            assert trail(db) == []
            # GitHub's redelivery (same ID) of the failed delivery does it, with its records.
            again = await post_webhook(session, server.url, "branch_protection_rule", deleted, delivery="d-1")
            assert again.status == 202
            await wait_until(lambda: delivery_state(db, "d-1") == "done")
    finally:
        assert await server.stop() == 0, server.log()
    assert fake_github.protection(ORG, "core", "main") is not None
    assert trail(db) == [("main", "pending", "d-1"), ("main", "applied", "d-1")]


def delivery_state(db: Path, delivery: str) -> str | None:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT state FROM deliveries WHERE id = ?", (delivery,)).fetchone()
    return row[0] if row else None
