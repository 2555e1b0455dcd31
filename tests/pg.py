"""Pytest fixtures for the store: a throwaway PostgreSQL database, and one store per backend.

The PostgreSQL server is the one MOKO_TEST_POSTGRES_URL names (an administrative URL
that may CREATE and DROP databases). Each test session works in a fresh database
`moko_test_<random>` that is dropped afterwards; each test starts from an empty schema.
Without a reachable server the PostgreSQL cases fail when CI is set; elsewhere they are
skipped, and the end of the run says so in a banner that names the server and the reason.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from bot.store.base import Store

POSTGRES_URL_VARIABLE = "MOKO_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
CONNECT_TIMEOUT_SECONDS = 5

BACKENDS = ["sqlite", "postgres"]

# Why the PostgreSQL cases were skipped in this run, for the closing banner; None: they ran.
_skipped_because: list[str] = []


def admin_url() -> str:
    return os.environ.get(POSTGRES_URL_VARIABLE) or DEFAULT_POSTGRES_URL


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database (query string kept)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh database for the whole test session, dropped at the end; yields its URL."""
    server = admin_url()
    database = f"moko_test_{secrets.token_hex(6)}"
    try:
        # A sync fixture with its own short event loop: it outlives every test's loop.
        asyncio.run(_admin(server, f'CREATE DATABASE "{database}"'))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        reason = f"PostgreSQL at {server} ({POSTGRES_URL_VARIABLE}) is not usable: {error!r}"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI is set, so the PostgreSQL store tests must run")
        _skipped_because.append(reason)
        pytest.skip(reason + "; run .ci/pg-start or set " + POSTGRES_URL_VARIABLE)
    try:
        yield with_database(server, database)
    finally:
        asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


@pytest.fixture
async def postgres_url(postgres_database: str) -> str:
    """The session database with an empty public schema: no tables, no schema version."""
    conn = await asyncpg.connect(postgres_database, timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        await conn.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()
    return postgres_database


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """The URL of an empty store, once per backend (test ids end in [sqlite] / [postgres])."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path}/moko.db"


async def open_store_for_test(url: str) -> Store:
    """An opened store for url: PostgreSQL directly, SQLite through bot.store.open_store."""
    if url.startswith(("postgresql://", "postgres://")):
        from bot.store.postgres import PostgresStore

        store: Store = PostgresStore(url)
        await store.open()
        return store
    from bot.store import open_store

    opened = open_store(url)
    await opened.open()
    return opened


@pytest.fixture
def open_test_store() -> Callable[[str], Awaitable[Store]]:
    """Opens another store on a URL (a second replica, a restart); the test closes it."""
    return open_store_for_test


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An opened, empty store for each backend, closed after the test."""
    opened = await open_store_for_test(store_url)
    try:
        yield opened
    finally:
        await opened.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """A green run that skipped the PostgreSQL store proved nothing about it: say so loudly."""
    if not _skipped_because:
        return
    terminalreporter.section("PostgreSQL store NOT tested", sep="!", red=True, bold=True)
    terminalreporter.write_line(_skipped_because[0], red=True)
    terminalreporter.write_line(
        "Every PostgreSQL case was skipped. Start the server (bash .ci/pg-start) or set "
        f"{POSTGRES_URL_VARIABLE}; under CI=true this run would have failed.", red=True)
