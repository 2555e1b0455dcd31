"""`moko audit`: read the audit trail as a table or JSON lines, prune it, verify its hash chain."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import IO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bot.audit_chain import format_time, record_to_json, verify_chain
from bot.config import ConfigError, Settings, parse_duration
from bot.store import open_store
from bot.store.base import AuditRecord, Store

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2
TABLE_COLUMNS = ("time", "run", "trigger", "repo", "actor", "policy", "field", "before", "after", "outcome", "error")


class UsageError(Exception):
    """An argument that cannot be used; the message is the one line the operator sees."""


def parse_since(value: str, now: datetime) -> datetime:
    """'7d', '12h', '30m' back from now, or an ISO 8601 date/time (UTC unless it says)."""
    try:
        return now - timedelta(seconds=parse_duration("--since", value))
    except ConfigError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since: {value!r} is neither a duration like 7d nor an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_repo(value: str) -> str:
    owner, _, name = value.partition("/")
    if not owner or not name or "/" in name:
        raise UsageError(f"--repo: {value!r} is not OWNER/NAME")
    return value


def _short(value: object, width: int = 40) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(records: list[AuditRecord]) -> Table:
    table = Table(title=f"{len(records)} audit records")
    for column in TABLE_COLUMNS:
        table.add_column(column, overflow="fold")
    for r in records:
        cells = (
            format_time(r.time), r.run_id, r.trigger, r.repo, r.actor, r.policy, r.field,
            _short(r.before), _short(r.after), r.outcome, r.error or "",
        )
        table.add_row(*(Text(cell) for cell in cells))  # as written: "moko[bot]" is no markup
    return table


async def read_records(store: Store, repo: str | None, since: datetime | None) -> list[AuditRecord]:
    """Records of a repository (named in any case, as on GitHub) since a time, in chain order."""
    records = await store.audit_records(repo=repo, since=since)
    if repo is not None and not records:
        # The trail keeps GitHub's spelling (Acme/Widgets); look past the case.
        records = [r for r in await store.audit_records(since=since) if r.repo.lower() == repo.lower()]
    return records


async def verify(store: Store, out: IO[str], err: IO[str]) -> int:
    anchor, records = await store.audit_chain()
    broken = verify_chain(records, anchor)
    if broken is not None:
        err.write(f"moko: audit chain broken at record {broken.seq}: {broken.reason}\n")
        return EXIT_FAILURES
    out.write(f"audit chain verified: {len(records)} records\n")
    return EXIT_OK


async def audit_command(
    args: argparse.Namespace,
    settings: Settings,
    *,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    now: datetime | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    now = now or datetime.now(UTC)
    try:
        since = parse_since(args.since, now) if args.since else None
        repo = parse_repo(args.repo) if args.repo else None
    except UsageError as error:
        err.write(f"moko: error: {error}\n")
        return EXIT_USAGE
    store = open_store(settings.database_url)
    await store.open()
    try:
        # Retention: records older than MOKO_AUDIT_RETENTION_DAYS go, from the start of the
        # chain; the last one pruned becomes the anchor, so what stays still verifies.
        await store.prune_audit(now - timedelta(days=settings.audit_retention_days))
        if args.verify:
            return await verify(store, out, err)
        records = await read_records(store, repo, since)
    finally:
        await store.close()
    if args.json:
        for record in records:
            out.write(json.dumps(record_to_json(record), default=str) + "\n")
    else:
        console = Console(file=out)
        if not console.is_terminal:
            console = Console(file=out, width=200)
        console.print(render_table(records))
    return EXIT_OK


def run_audit(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return asyncio.run(audit_command(args, settings))
    except BrokenPipeError:  # `moko audit --json | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
