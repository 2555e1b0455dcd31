"""The audit trail's hash chain: canonical form of a record, its hash, and chain verification.

A record's hash covers the previous record's hash and the record's content. Without a key it
is SHA-256, which anyone able to write the database can recompute after rewriting a record;
with MOKO_AUDIT_KEY (kept outside the database) it is an HMAC-SHA256 with that key, spelt
`hmac-sha256:<hex>` so that a reader knows which a record carries. Cutting the newest
records, or all of them, leaves a chain that still links: only a head noted outside the
database (the `audit_head` log line) shows that, through verify_anchor.
"""

from __future__ import annotations

import hashlib
import hmac
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


KEYED_PREFIX = "hmac-sha256:"


def is_keyed(digest: str) -> bool:
    """Whether a record's hash is an HMAC with the audit key (else a plain SHA-256)."""
    return digest.startswith(KEYED_PREFIX)


# The canonical JSON's encoder, made once: json.dumps with options builds one for each call,
# and every record written is hashed.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def record_hash(entry: AuditEntry | AuditRecord, prev_hash: str, key: bytes | None = None) -> str:
    """SHA-256 (or, with a key, HMAC-SHA256) over the previous hash and the record's canonical JSON."""
    payload = _CANONICAL_JSON.encode({"prev_hash": prev_hash, **canonical_fields(entry)}).encode()
    if key is None:
        return hashlib.sha256(payload).hexdigest()
    return KEYED_PREFIX + hmac.new(key, payload, hashlib.sha256).hexdigest()


def chain(
    entries: Iterable[AuditEntry], prev_hash: str, first_seq: int, key: bytes | None = None
) -> list[AuditRecord]:
    """Link entries after prev_hash, numbering them from first_seq (keyed hashes with a key)."""
    records = []
    for offset, entry in enumerate(entries):
        digest = record_hash(entry, prev_hash, key)
        records.append(
            AuditRecord(
                seq=first_seq + offset, time=entry.time, run_id=entry.run_id, trigger=entry.trigger,
                installation=entry.installation, repo=entry.repo, actor=entry.actor, policy=entry.policy,
                field=entry.field, before=entry.before, after=entry.after, outcome=entry.outcome,
                error=entry.error, prev_hash=prev_hash, hash=digest,
            )
        )
        prev_hash = digest
    return records


@dataclass(frozen=True)
class ChainBreak:
    """The first record that does not match the chain, and why."""

    seq: int
    reason: str


class KeyRequired(Exception):
    """The chain holds keyed records and no key was given to check them."""


def verify_chain(records: Iterable[AuditRecord], anchor: str, key: bytes | None = None) -> ChainBreak | None:
    """Walk records in chain order from the anchor; None when every link and hash matches.

    Records written before the key was set carry plain hashes and may only come first: a
    plain record after a keyed one was rewritten by someone without the key. With a key, the
    plain records must be followed by a keyed one, whose HMAC covers the last plain hash and
    so vouches for them: anyone can rewrite the whole trail with plain hashes. A keyed record
    without a key to check it raises KeyRequired.
    """
    expected_prev = anchor
    keyed_seen = False
    first_plain: int | None = None
    for record in records:
        if record.prev_hash != expected_prev:
            return ChainBreak(record.seq, "prev_hash does not match the record before it")
        if is_keyed(record.hash):
            if key is None:
                raise KeyRequired(record.seq)
            keyed_seen = True
            if not hmac.compare_digest(record_hash(record, record.prev_hash, key), record.hash):
                return ChainBreak(
                    record.seq, "hash does not match the record's content (or MOKO_AUDIT_KEY is not its key)"
                )
        elif keyed_seen:
            return ChainBreak(record.seq, "hash is not keyed although records before it are")
        elif record_hash(record, record.prev_hash) != record.hash:
            return ChainBreak(record.seq, "hash does not match the record's content")
        elif first_plain is None:
            first_plain = record.seq
        expected_prev = record.hash
    if key is not None and first_plain is not None and not keyed_seen:
        return ChainBreak(first_plain, UNVOUCHED)
    return None


UNVOUCHED = (
    "hash is not keyed and no keyed record follows to vouch for it "
    "(the trail was rewritten without MOKO_AUDIT_KEY, or no keyed record was written since it was set)"
)


def verify_anchor(records: list[AuditRecord], head: tuple[int, str], anchor: tuple[int, str]) -> str | None:
    """Whether a head noted earlier (seq, hash) is still in the chain; None when it is, else why not.

    records: the whole kept chain in order; head: the chain's current head (its newest record,
    or the last pruned one when none is kept)."""
    seq, digest = anchor
    for record in records:
        if record.seq == seq:
            if hmac.compare_digest(record.hash, digest):
                return None
            return f"record {seq} no longer has the anchor's hash: the trail was rewritten"
    if head == anchor:
        return None  # every record up to the anchor was pruned, and nothing written since
    if seq > head[0]:
        return f"the trail ends at record {head[0]}, before the anchor's record {seq}: records were cut"
    return f"record {seq} is no longer in the trail (cut, or pruned by retention)"


def record_to_json(record: AuditRecord) -> dict[str, Any]:
    """The record as `moko audit --json` prints it."""
    return {**canonical_fields(record), "prev_hash": record.prev_hash, "hash": record.hash}
