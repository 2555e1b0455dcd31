"""Choosing the store implementation from MOKO_DATABASE_URL."""

from __future__ import annotations

from bot.store.base import Store


def open_store(url: str) -> Store:
    """A store for the URL (not yet opened): sqlite:///… is embedded, postgresql://… is shared."""
    if url.startswith("sqlite:///"):
        from bot.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from bot.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]}")


__all__ = ["Store", "open_store"]
