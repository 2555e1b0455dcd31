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
