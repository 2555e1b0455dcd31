"""`moko audit`: read the audit trail as a table or JSON lines, verify its hash chain and an
anchor noted outside the database. Reading never deletes: retention pruning is the server's."""

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

from bot.audit_chain import (
    KeyRequired,
    format_time,
    is_keyed,
    record_to_json,
    verify_anchor,
    verify_chain,
)
from bot.config import ConfigError, Settings, parse_duration
from bot.exit_codes import EXIT_FAILURES, EXIT_OK, EXIT_USAGE
from bot.store import open_store
from bot.store.base import AuditRecord, AuditTrail

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


async def read_records(store: AuditTrail, repo: str | None, since: datetime | None) -> list[AuditRecord]:
    """Records of a repository (named in any case, as on GitHub) since a time, in chain order."""
    records = await store.audit_records(repo=repo, since=since)
    if repo is not None and not records:
        # The trail keeps GitHub's spelling (Acme/Widgets); look past the case.
        records = [r for r in await store.audit_records(since=since) if r.repo.lower() == repo.lower()]
    return records


def parse_anchor(value: str) -> tuple[int, str]:
    """SEQ:HASH as the audit_head log line gives them (a keyed hash has a colon of its own)."""
    seq, _, digest = value.partition(":")
    if not seq.isdigit() or not digest:
        raise UsageError(f"--anchor: {value!r} is not SEQ:HASH (as logged in audit_head)")
    return int(seq), digest


async def verify(
    store: AuditTrail, out: IO[str], err: IO[str], *, key: str | None, anchor: tuple[int, str] | None
) -> int:
    start, records = await store.audit_chain()
    try:
        broken = verify_chain(records, start, key.encode() if key else None)
    except KeyRequired:
        err.write("moko: error: the audit chain is keyed: set MOKO_AUDIT_KEY to verify it\n")
        return EXIT_USAGE
    if broken is not None:
        err.write(f"moko: audit chain broken at record {broken.seq}: {broken.reason}\n")
        return EXIT_FAILURES
    if anchor is not None:
        head = (records[-1].seq, records[-1].hash) if records else await store.audit_head()
        missing = verify_anchor(records, head, anchor)
        if missing is not None:
            err.write(f"moko: audit anchor {anchor[0]} not found: {missing}\n")
            return EXIT_FAILURES
    unkeyed = sum(1 for record in records if not is_keyed(record.hash)) if key else 0
    note = f" ({unkeyed} written before MOKO_AUDIT_KEY was set)" if unkeyed else ""
    held = f", anchor {anchor[0]} held" if anchor is not None else ""
    out.write(f"audit chain verified: {len(records)} records{note}{held}\n")
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
        anchor = parse_anchor(args.anchor) if getattr(args, "anchor", None) else None
    except UsageError as error:
        err.write(f"moko: error: {error}\n")
        return EXIT_USAGE
    store = open_store(settings.database_url)
    await store.open()
    try:
        # Reading deletes nothing (retention is the server's): a reader that pruned could cut
        # the very records it was asked to show or check.
        if args.verify or anchor is not None:
            return await verify(store, out, err, key=settings.audit_key, anchor=anchor)
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
