"""`moko audit`: read the audit trail as a table or JSON lines, prune it, verify its hash chain."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta

from rich.console import Console
from rich.table import Table

from bot.audit_chain import format_time, record_to_json, verify_chain
from bot.config import ConfigError, Settings, parse_duration
from bot.store import open_store
from bot.store.base import AuditRecord

EXIT_OK, EXIT_FAILURES = 0, 1


def parse_since(value: str, now: datetime) -> datetime:
    """'7d', '12h', '30m' back from now, or an ISO 8601 date/time."""
    try:
        return now - timedelta(seconds=parse_duration("--since", value))
    except ConfigError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--since: {value!r} is neither a duration like 7d nor an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _short(value: object, width: int = 40) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(records: list[AuditRecord]) -> Table:
    table = Table(title=f"{len(records)} audit records")
    for column in ("time", "repo", "actor", "policy", "field", "before", "after", "outcome", "error"):
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(
            format_time(r.time), r.repo, r.actor, r.policy, r.field,
            _short(r.before), _short(r.after), r.outcome, r.error or "",
        )
    return table


async def audit_command(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings.database_url)
    await store.open()
    try:
        # Retention: records past MOKO_AUDIT_RETENTION_DAYS go, from the start of the chain.
        await store.prune_audit(datetime.now(UTC) - timedelta(days=settings.audit_retention_days))
        if args.verify:
            records = await store.audit_records()
            broken = verify_chain(records, await store.audit_anchor())
            if broken is not None:
                print(f"audit chain broken at record {broken.seq}: {broken.reason}", file=sys.stderr)
                return EXIT_FAILURES
            print(f"audit chain verified: {len(records)} records")
            return EXIT_OK
        since = parse_since(args.since, datetime.now(UTC)) if args.since else None
        records = await store.audit_records(repo=args.repo, since=since)
    finally:
        await store.close()
    if args.json:
        for record in records:
            sys.stdout.write(json.dumps(record_to_json(record), sort_keys=True, default=str) + "\n")
    else:
        Console(width=200).print(render_table(records))
    return EXIT_OK


def run_audit(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(audit_command(args, settings))
