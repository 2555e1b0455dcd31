"""The audit trail's hash chain: canonical form of a record, its hash, and chain verification."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot.store.base import AuditEntry, AuditRecord

GENESIS_HASH = "0" * 64


def format_time(moment: datetime) -> str:
    """UTC ISO 8601 with microseconds and a Z, the one spelling used in hashes and output."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_fields(entry: AuditEntry | AuditRecord) -> dict[str, Any]:
    """The fields a record's hash covers, in a JSON-ready form."""
    return {
        "time": format_time(entry.time),
        "run_id": entry.run_id,
        "trigger": entry.trigger,
        "installation": entry.installation,
        "repo": entry.repo,
        "actor": entry.actor,
        "policy": entry.policy,
        "field": entry.field,
        "before": entry.before,
        "after": entry.after,
        "outcome": entry.outcome,
        "error": entry.error,
    }


def record_hash(entry: AuditEntry | AuditRecord, prev_hash: str) -> str:
    """SHA-256 over the previous hash and the record's canonical JSON."""
    payload = json.dumps(
        {"prev_hash": prev_hash, **canonical_fields(entry)},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def chain(entries: Iterable[AuditEntry], prev_hash: str, first_seq: int) -> list[AuditRecord]:
    """Link entries after prev_hash, numbering them from first_seq."""
    records = []
    for offset, entry in enumerate(entries):
        digest = record_hash(entry, prev_hash)
        records.append(
            AuditRecord(
                seq=first_seq + offset,
                prev_hash=prev_hash,
                hash=digest,
                **{name: getattr(entry, name) for name in _ENTRY_FIELDS},
            )
        )
        prev_hash = digest
    return records


_ENTRY_FIELDS = (
    "time", "run_id", "trigger", "installation", "repo", "actor",
    "policy", "field", "before", "after", "outcome", "error",
)


@dataclass(frozen=True)
class ChainBreak:
    """The first record that does not match the chain, and why."""

    seq: int
    reason: str


def verify_chain(records: Iterable[AuditRecord], anchor: str) -> ChainBreak | None:
    """Walk records in chain order from the anchor; None when every link and hash matches."""
    expected_prev = anchor
    for record in records:
        if record.prev_hash != expected_prev:
            return ChainBreak(record.seq, "prev_hash does not match the record before it")
        if record_hash(record, record.prev_hash) != record.hash:
            return ChainBreak(record.seq, "hash does not match the record's content")
        expected_prev = record.hash
    return None


def record_to_json(record: AuditRecord) -> dict[str, Any]:
    """The record as `moko audit --json` prints it."""
    return {**canonical_fields(record), "prev_hash": record.prev_hash, "hash": record.hash}
