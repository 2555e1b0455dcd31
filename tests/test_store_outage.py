"""When the store cannot be written (another process holds the SQLite file's lock, the disk is
full): Moko answers quickly, says it is not ready, and changes nothing it could not record."""

from __future__ import annotations

import sqlite3
import time

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
