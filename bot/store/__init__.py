"""Choosing the store implementation from MOKO_DATABASE_URL."""

from __future__ import annotations

import time
from collections.abc import Callable

from bot.store.base import Store


def open_store(
    url: str, *, lease_seconds: float | None = None, audit_key: str | None = None, owner: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Store:
    """A store for the URL (not yet opened): sqlite:///… is embedded, postgresql://… is shared.

    owner is the process's identity in claims and locks (a new one if not given).
    lease_seconds bounds how long a repository lock outlives a process that stopped renewing
    it without dying (SQLite; a dead one's is taken at once; on PostgreSQL the lock is a
    session advisory lock that dies with its connection).
    audit_key (MOKO_AUDIT_KEY): the audit records it appends are hashed with HMAC-SHA256.
    clock (epoch seconds) is what SQLite's leases and locks run out by; PostgreSQL's use the
    server's clock.
    """
    if url.startswith("sqlite:///"):
        from bot.store.sqlite import REPO_LOCK_TTL, SQLiteStore

        return SQLiteStore(
            url, lock_ttl=min(lease_seconds or REPO_LOCK_TTL, REPO_LOCK_TTL), audit_key=audit_key, owner=owner,
            clock=clock,
        )
    if url.startswith(("postgresql://", "postgres://")):
        from bot.store.postgres import PostgresStore

        return PostgresStore(url, audit_key=audit_key, owner=owner)
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]}")


__all__ = ["open_store"]
