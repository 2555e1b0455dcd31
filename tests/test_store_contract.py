"""The Store contract: the same cases against SQLite and PostgreSQL, plus PostgreSQL replicas."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from bot.audit_chain import GENESIS_HASH, verify_chain
from bot.store.base import (
    DONE,
    FAILED,
    PROCESSING,
    QUEUED,
    SCHEMA_VERSION,
    AuditEntry,
    NewDelivery,
    Store,
)

# The fixtures store, store_url, postgres_url and open_test_store are tests/pg.py's (conftest loads it).

# A lease short enough to let expire in a test, and a wait that is surely past it.
SHORT_LEASE = 0.05
PAST_SHORT_LEASE = 0.2
LONG_LEASE = 60.0
# How long a second lock holder is kept waiting in the mutual-exclusion cases.
HOLD_SECONDS = 0.2

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def new_delivery(delivery_id: str, *, body: bytes = b'{"zen": "ok"}') -> NewDelivery:
    return NewDelivery(
        id=delivery_id,
        event="repository",
        installation_id=42,
        headers={"X-GitHub-Event": "repository", "X-GitHub-Delivery": delivery_id},
        body=body,
    )


def audit_entry(
    n: int,
    *,
    repo: str = "acme/widgets",
    run_id: str = "run-1",
    time: datetime | None = None,
) -> AuditEntry:
    return AuditEntry(
        time=time or T0 + timedelta(seconds=n),
        run_id=run_id,
        trigger="repository.edited",
        installation=42,
        repo=repo,
        actor="octocat",
        policy="repository",
        field=f"field_{n}",
        before={"zeta": n, "alpha": [1, 2.5, None, {"b": True, "a": "x"}]},
        after=n % 2 == 0,
        outcome="applied",
        error=None,
    )


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


async def tamper_after(url: str, seq: int, after_json: str) -> None:
    """Change one stored record's `after` behind the store's back."""
    if is_postgres(url):
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("UPDATE audit_log SET after = $1 WHERE seq = $2", after_json, seq)
        finally:
            await conn.close()
        return
    await asyncio.to_thread(_tamper_sqlite, url.removeprefix("sqlite:///"), seq, after_json)


def _tamper_sqlite(path: str, seq: int, after_json: str) -> None:
    # The SQLite schema is the other implementation's: find the table holding the chain.
    with sqlite3.connect(path, timeout=5) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]
            after = [c for c in columns if c == "after"] or [c for c in columns if c.startswith("after")]
            if "seq" in columns and "prev_hash" in columns and after:
                db.execute(f'UPDATE "{table}" SET "{after[0]}" = ? WHERE seq = ?', (after_json, seq))
                return
    raise AssertionError(f"no audit table found in {path}")


# --- schema ---------------------------------------------------------------------------


async def test_schema_is_created_at_the_current_version_and_survives_reopening(store_url: str, open_test_store):
    first = await open_test_store(store_url)
    try:
        assert await first.schema_version() == SCHEMA_VERSION
        await first.ping()
        assert await first.add_delivery(new_delivery("d-1"))
    finally:
        await first.close()

    second = await open_test_store(store_url)
    try:
        assert await second.schema_version() == SCHEMA_VERSION
        assert (await second.get_delivery("d-1")).state == QUEUED
        assert not await second.add_delivery(new_delivery("d-1"))
    finally:
        await second.close()


# --- deliveries -----------------------------------------------------------------------


async def test_the_intake_stores_and_claims_in_one_step(store: Store):
    stored, claimed = await store.add_and_claim(new_delivery("d-claim"), "intake", LONG_LEASE)
    assert stored and claimed is not None and claimed.state == PROCESSING and claimed.attempts == 1
    assert json_body(claimed) == {"zen": "ok"}
    # Its own worker holds it: nobody else can claim it, and a second copy is a duplicate.
    assert await store.claim_delivery("d-claim", "other", LONG_LEASE) is None
    assert await store.add_and_claim(new_delivery("d-claim"), "intake", LONG_LEASE) == (False, None)
    await store.finish_delivery("d-claim", "intake", FAILED, "boom")
    stored, again = await store.add_and_claim(new_delivery("d-claim"), "intake-2", LONG_LEASE)
    assert stored and again is not None and again.attempts == 2
    await store.finish_delivery("d-claim", "intake-2", DONE)
    assert (await store.get_delivery("d-claim")).state == DONE


def json_body(delivery) -> object:
    import json

    return json.loads(delivery.body)


async def test_a_new_delivery_is_queued_and_a_second_copy_is_a_duplicate(store: Store):
    assert await store.add_delivery(new_delivery("d-1"))
    assert not await store.add_delivery(new_delivery("d-1"))
    stored = await store.get_delivery("d-1")
    assert stored is not None
    assert (stored.id, stored.event, stored.installation_id, stored.state) == ("d-1", "repository", 42, QUEUED)
    assert stored.error is None
    assert stored.received_at.tzinfo is not None
    assert await store.count_deliveries(QUEUED) == 1
    assert await store.get_delivery("missing") is None


async def test_headers_and_body_round_trip_exactly(store: Store):
    body = bytes(range(256)) + '{"ünïcode": "✓"}'.encode()
    sent = NewDelivery("d-bin", "push", None, {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=ab"}, body)
    assert await store.add_delivery(sent)
    stored = await store.get_delivery("d-bin")
    assert stored.body == body
    assert dict(stored.headers) == dict(sent.headers)
    assert stored.installation_id is None


async def test_a_delivery_is_a_duplicate_while_processing_and_when_done(store: Store):
    await store.add_delivery(new_delivery("d-1"))
    assert await store.claim_delivery("d-1", "worker-a", LONG_LEASE) is not None
    assert not await store.add_delivery(new_delivery("d-1"))
    await store.finish_delivery("d-1", "worker-a", DONE)
    assert not await store.add_delivery(new_delivery("d-1"))
    assert (await store.get_delivery("d-1")).state == DONE
    assert await store.claim_delivery("d-1", "worker-b", LONG_LEASE) is None


async def test_a_failed_delivery_sent_again_is_queued_again(store: Store):
    await store.add_delivery(new_delivery("d-1"))
    await store.claim_delivery("d-1", "worker-a", LONG_LEASE)
    await store.finish_delivery("d-1", "worker-a", FAILED, "GitHub answered 502")
    failed = await store.get_delivery("d-1")
    assert (failed.state, failed.error) == (FAILED, "GitHub answered 502")
    assert await store.count_deliveries(FAILED) == 1

    assert await store.add_delivery(new_delivery("d-1", body=b'{"again": true}'))
    requeued = await store.get_delivery("d-1")
    assert requeued.state == QUEUED
    assert requeued.body == b'{"again": true}'
    assert not await store.add_delivery(new_delivery("d-1"))
    claimed = await store.claim_delivery("d-1", "worker-b", LONG_LEASE)
    assert claimed is not None and claimed.state == PROCESSING
    assert claimed.attempts == 2  # attempts count claims, across redeliveries


async def test_pruning_removes_only_finished_deliveries_received_before_the_cutoff(store: Store):
    for name in ("done-1", "done-2", "failed", "queued", "processing"):
        await store.add_delivery(new_delivery(name))
    for name in ("done-1", "done-2", "failed", "processing"):
        await store.claim_delivery(name, "worker-a", LONG_LEASE)
    await store.finish_delivery("done-1", "worker-a", DONE)
    await store.finish_delivery("done-2", "worker-a", DONE)
    await store.finish_delivery("failed", "worker-a", FAILED, "boom")
    # Received after this cutoff: nothing goes.
    assert await store.prune_deliveries(datetime.now(UTC) - timedelta(hours=1), 100) == 0
    later = datetime.now(UTC) + timedelta(seconds=5)
    assert await store.prune_deliveries(later, 2) == 2  # the limit holds
    assert await store.prune_deliveries(later, 100) == 1
    assert await store.prune_deliveries(later, 100) == 0
    remaining = {name for name in ("done-1", "done-2", "failed", "queued", "processing")
                 if await store.get_delivery(name) is not None}
    assert remaining == {"queued", "processing"}
    # A pruned ID is unknown again: sent once more, it is a new delivery.
    assert await store.add_delivery(new_delivery("done-1"))


async def test_fifty_concurrent_copies_of_one_delivery_are_stored_once(store: Store):
    results = await asyncio.gather(*(store.add_delivery(new_delivery("d-burst")) for _ in range(50)))
    assert results.count(True) == 1
    assert await store.count_deliveries(QUEUED) == 1


async def test_concurrent_redeliveries_of_a_failed_delivery_requeue_it_once(store: Store):
    await store.add_delivery(new_delivery("d-1"))
    await store.claim_delivery("d-1", "worker-a", LONG_LEASE)
    await store.finish_delivery("d-1", "worker-a", FAILED, "boom")
    results = await asyncio.gather(*(store.add_delivery(new_delivery("d-1")) for _ in range(20)))
    assert results.count(True) == 1
    assert await store.count_deliveries(QUEUED) == 1


async def test_two_workers_claiming_one_delivery_one_wins(store: Store):
    await store.add_delivery(new_delivery("d-1"))
    claims = await asyncio.gather(
        *(store.claim_delivery("d-1", f"worker-{n}", LONG_LEASE) for n in range(10))
    )
    winners = [claim for claim in claims if claim is not None]
    assert len(winners) == 1
    assert winners[0].state == PROCESSING
    assert winners[0].attempts == 1
    assert await store.count_deliveries(PROCESSING) == 1


async def test_an_expired_lease_is_taken_over_and_the_old_owner_can_no_longer_finish(store: Store):
    await store.add_delivery(new_delivery("d-1"))
    assert await store.claim_delivery("d-1", "worker-a", SHORT_LEASE) is not None
    assert await store.claim_delivery("d-1", "worker-b", LONG_LEASE) is None

    await asyncio.sleep(PAST_SHORT_LEASE)
    taken = await store.claim_delivery("d-1", "worker-b", LONG_LEASE)
    assert taken is not None and taken.attempts == 2

    assert not await store.renew_lease("d-1", "worker-a", LONG_LEASE)
    await store.finish_delivery("d-1", "worker-a", FAILED, "too late")
    await store.release_delivery("d-1", "worker-a")
    still = await store.get_delivery("d-1")
    assert (still.state, still.error) == (PROCESSING, None)

    await store.finish_delivery("d-1", "worker-b", DONE)
    assert (await store.get_delivery("d-1")).state == DONE
    assert await store.claim_delivery("d-1", "worker-c", LONG_LEASE) is None


async def test_a_renewed_lease_is_not_taken_over(store: Store):
    await store.add_delivery(new_delivery("d-1"))
    await store.claim_delivery("d-1", "worker-a", SHORT_LEASE)
    assert await store.renew_lease("d-1", "worker-a", LONG_LEASE)
    await asyncio.sleep(PAST_SHORT_LEASE)
    assert await store.claim_delivery("d-1", "worker-b", LONG_LEASE) is None
    assert await store.claim_pending("worker-b", LONG_LEASE, 10) == []


async def test_claim_pending_takes_the_oldest_first_up_to_the_limit(store: Store):
    for n in range(5):
        await store.add_delivery(new_delivery(f"d-{n}"))
        await asyncio.sleep(0.002)  # distinct receive times on coarse clocks
    first = await store.claim_pending("worker-a", LONG_LEASE, 2)
    assert [d.id for d in first] == ["d-0", "d-1"]
    assert all(d.state == PROCESSING for d in first)
    second = await store.claim_pending("worker-b", LONG_LEASE, 10)
    assert [d.id for d in second] == ["d-2", "d-3", "d-4"]
    assert await store.claim_pending("worker-c", LONG_LEASE, 10) == []

    await store.release_delivery("d-1", "worker-a")
    assert (await store.get_delivery("d-1")).state == QUEUED
    again = await store.claim_pending("worker-c", LONG_LEASE, 10)
    assert [d.id for d in again] == ["d-1"]


async def test_claim_pending_with_room_for_one_takes_one_and_with_none_takes_none(store: Store):
    # A worker pool with one free slot asks for one delivery; with none free, for none.
    for n in range(2):
        await store.add_delivery(new_delivery(f"d-{n}"))
        await asyncio.sleep(0.002)
    assert await store.claim_pending("worker-a", LONG_LEASE, 0) == []
    assert [d.id for d in await store.claim_pending("worker-a", LONG_LEASE, 1)] == ["d-0"]
    assert (await store.get_delivery("d-1")).state == QUEUED


async def test_claim_pending_takes_deliveries_whose_lease_expired(store: Store):
    await store.add_delivery(new_delivery("d-old"))
    await store.add_delivery(new_delivery("d-new"))
    await store.claim_delivery("d-old", "dead-replica", SHORT_LEASE)
    await store.claim_delivery("d-new", "live-replica", LONG_LEASE)
    await asyncio.sleep(PAST_SHORT_LEASE)
    taken = await store.claim_pending("worker-b", LONG_LEASE, 10)
    assert [d.id for d in taken] == ["d-old"]


async def test_concurrent_claim_pending_never_hands_one_delivery_to_two_workers(store: Store):
    for n in range(20):
        await store.add_delivery(new_delivery(f"d-{n:02}"))
    batches = await asyncio.gather(*(store.claim_pending(f"worker-{n}", LONG_LEASE, 3) for n in range(10)))
    claimed = [d.id for batch in batches for d in batch]
    assert len(claimed) == len(set(claimed)) == 20


# --- audit trail --------------------------------------------------------------------


async def test_appended_records_are_chained_and_read_back_identically(store: Store):
    assert await store.audit_anchor() == GENESIS_HASH
    written = await store.append_audit([audit_entry(n) for n in range(3)])
    assert [r.seq for r in written] == [1, 2, 3]
    assert written[0].prev_hash == GENESIS_HASH
    assert [r.prev_hash for r in written[1:]] == [r.hash for r in written[:-1]]

    read = await store.audit_records()
    assert read == written  # times to the microsecond, before/after as values
    assert read[0].time == T0 + timedelta(seconds=0)
    assert verify_chain(read, await store.audit_anchor()) is None
    assert await store.append_audit([]) == []


async def test_eight_concurrent_writers_make_one_chain(store: Store):
    async def writer(w: int) -> None:
        for batch in range(4):
            await store.append_audit(
                [audit_entry(n, run_id=f"writer-{w}-batch-{batch}") for n in range(3)]
            )

    await asyncio.gather(*(writer(w) for w in range(8)))
    records = await store.audit_records()
    assert [r.seq for r in records] == list(range(1, 8 * 4 * 3 + 1))
    assert verify_chain(records, await store.audit_anchor()) is None
    # Each append is contiguous in the chain.
    runs = [r.run_id for r in records]
    for run in set(runs):
        positions = [i for i, r in enumerate(runs) if r == run]
        assert positions == list(range(positions[0], positions[0] + 3))


async def test_a_tampered_record_is_named_by_verification(store_url: str, store: Store):
    await store.append_audit([audit_entry(n) for n in range(5)])
    await tamper_after(store_url, 3, '"tampered"')
    records = await store.audit_records()
    assert records[2].after == "tampered"
    broken = verify_chain(records, await store.audit_anchor())
    assert broken is not None and broken.seq == 3


async def test_pruning_keeps_what_remains_verifiable(store: Store):
    written = await store.append_audit([audit_entry(n, time=T0 + timedelta(days=n)) for n in range(10)])
    assert await store.prune_audit(T0 + timedelta(days=4, hours=12)) == 5
    assert await store.audit_anchor() == written[4].hash
    remaining = await store.audit_records()
    assert [r.seq for r in remaining] == [6, 7, 8, 9, 10]
    assert verify_chain(remaining, await store.audit_anchor()) is None

    assert await store.prune_audit(T0) == 0
    more = await store.append_audit([audit_entry(20, time=T0 + timedelta(days=20))])
    assert more[0].seq == 11 and more[0].prev_hash == written[-1].hash
    assert verify_chain(await store.audit_records(), await store.audit_anchor()) is None

    # Everything pruned: the chain continues from the anchor, seqs keep increasing.
    assert await store.prune_audit(T0 + timedelta(days=100)) == 6
    assert await store.audit_records() == []
    assert await store.audit_anchor() == more[0].hash
    after = await store.append_audit([audit_entry(30, time=T0 + timedelta(days=101))])
    assert after[0].seq > 11 and after[0].prev_hash == more[0].hash
    assert verify_chain(await store.audit_records(), await store.audit_anchor()) is None


async def test_the_chain_read_in_one_snapshot_verifies_while_pruning_runs(store: Store):
    await store.append_audit([audit_entry(n, time=T0 + timedelta(days=n)) for n in range(40)])

    async def prune_step_by_step() -> None:
        for day in range(1, 40, 3):
            await store.prune_audit(T0 + timedelta(days=day))
            await asyncio.sleep(0)

    async def verify_meanwhile() -> list[object]:
        outcomes = []
        for _ in range(20):
            anchor, records = await store.audit_chain()
            outcomes.append(verify_chain(records, anchor))
            await asyncio.sleep(0)
        return outcomes

    _, outcomes = await asyncio.gather(prune_step_by_step(), verify_meanwhile())
    assert outcomes == [None] * 20
    anchor, records = await store.audit_chain()
    assert (anchor, records) == (await store.audit_anchor(), await store.audit_records())


async def test_the_head_is_the_newest_record_or_the_last_pruned_one(store: Store):
    assert await store.audit_head() == (0, GENESIS_HASH)
    written = await store.append_audit([audit_entry(n, time=T0 + timedelta(days=n)) for n in range(3)])
    assert await store.audit_head() == (3, written[-1].hash)
    assert await store.prune_audit(T0 + timedelta(days=10)) == 3
    assert await store.audit_head() == (3, written[-1].hash)  # pruned: the head stays where it was


async def test_a_keyed_store_writes_hmacs_that_verify_only_with_its_key(store_url: str, store: Store):
    from bot.audit_chain import KeyRequired
    from bot.store import open_store

    key = "a key of sixteen or more"
    await store.append_audit([audit_entry(0)])  # written before the key was set
    keyed = open_store(store_url, audit_key=key)
    await keyed.open()
    try:
        written = await keyed.append_audit([audit_entry(n) for n in range(1, 4)])
        anchor, records = await keyed.audit_chain()
    finally:
        await keyed.close()
    assert all(r.hash.startswith("hmac-sha256:") and len(r.hash) == 12 + 64 for r in written)
    assert not records[0].hash.startswith("hmac-sha256:")
    assert verify_chain(records, anchor, key.encode()) is None
    with pytest.raises(KeyRequired):
        verify_chain(records, anchor)
    assert verify_chain(records, anchor, b"not the key at all").seq == 2


async def test_pruning_only_removes_the_start_of_the_chain(store: Store):
    # A late record with an early time does not get pruned ahead of newer ones.
    times = [T0, T0 + timedelta(days=5), T0 + timedelta(days=1)]
    await store.append_audit([audit_entry(n, time=t) for n, t in enumerate(times)])
    assert await store.prune_audit(T0 + timedelta(days=2)) == 1
    assert [r.seq for r in await store.audit_records()] == [2, 3]
    assert verify_chain(await store.audit_records(), await store.audit_anchor()) is None


async def test_audit_records_filter_by_repository_time_and_run(store: Store):
    await store.append_audit(
        [
            audit_entry(0, repo="acme/a", run_id="run-1"),
            audit_entry(1, repo="acme/b", run_id="run-1"),
            audit_entry(2, repo="acme/a", run_id="run-2"),
            audit_entry(3, repo="acme/a", run_id="run-3"),
            audit_entry(4, repo="acme/b", run_id="run-3"),
        ]
    )
    assert [r.seq for r in await store.audit_records(repo="acme/a")] == [1, 3, 4]
    assert [r.seq for r in await store.audit_records(run_id="run-3")] == [4, 5]
    assert [r.seq for r in await store.audit_records(since=T0 + timedelta(seconds=1.5))] == [3, 4, 5]
    assert [r.seq for r in await store.audit_records(repo="acme/a", since=T0 + timedelta(seconds=1.5))] == [3, 4]
    assert [r.seq for r in await store.audit_records(limit=2)] == [1, 2]
    assert [r.seq for r in await store.audit_records(newest_first=True)] == [5, 4, 3, 2, 1]
    assert [r.seq for r in await store.audit_records(repo="acme/a", newest_first=True, limit=2)] == [4, 3]
    assert await store.audit_records(repo="acme/none") == []


# --- sweeps -------------------------------------------------------------------------


async def test_an_unfinished_sweep_resumes_and_a_finished_one_starts_afresh(store: Store):
    started = await store.start_sweep("acme", sweep_id="sweep-1")
    assert (started.sweep_id, started.org, started.resumed, dict(started.outcomes)) == ("sweep-1", "acme", False, {})
    await store.checkpoint("sweep-1", "widgets", "fixed")
    await store.checkpoint("sweep-1", "gadgets", "failed", "GitHub answered 500")

    resumed = await store.start_sweep("acme", sweep_id="sweep-2")
    assert (resumed.sweep_id, resumed.resumed) == ("sweep-1", True)
    assert dict(resumed.outcomes) == {"widgets": "fixed", "gadgets": "failed"}

    await store.checkpoint("sweep-1", "gadgets", "fixed")  # a later checkpoint wins
    assert await store.sweep_outcomes("sweep-1") == {"widgets": "fixed", "gadgets": "fixed"}

    other = await store.start_sweep("globex", sweep_id="sweep-3")
    assert (other.sweep_id, other.resumed, dict(other.outcomes)) == ("sweep-3", False, {})

    await store.finish_sweep("sweep-1")
    fresh = await store.start_sweep("acme", sweep_id="sweep-4")
    assert (fresh.sweep_id, fresh.resumed, dict(fresh.outcomes)) == ("sweep-4", False, {})
    assert await store.sweep_outcomes("sweep-1") == {"widgets": "fixed", "gadgets": "fixed"}


async def test_retry_failed_takes_only_the_repositories_that_failed_last_time(store: Store):
    await store.start_sweep("acme", sweep_id="sweep-1")
    for repo, outcome in [("a", "fixed"), ("b", "failed"), ("c", "compliant"), ("d", "failed"), ("e", "skipped")]:
        await store.checkpoint("sweep-1", repo, outcome)
    await store.finish_sweep("sweep-1")

    # The new sweep carries every outcome but the failed ones, so only those are left.
    retry = await store.start_sweep("acme", sweep_id="sweep-2", retry_failed=True)
    assert (retry.sweep_id, retry.resumed) == ("sweep-2", False)
    assert dict(retry.outcomes) == {"a": "fixed", "c": "compliant", "e": "skipped"}
    await store.checkpoint("sweep-2", "b", "fixed")

    # Interrupted and run again without --retry-failed: the retry sweep resumes.
    resumed = await store.start_sweep("acme", sweep_id="sweep-3")
    assert (resumed.sweep_id, resumed.resumed) == ("sweep-2", True)
    assert dict(resumed.outcomes) == {"a": "fixed", "b": "fixed", "c": "compliant", "e": "skipped"}
    await store.checkpoint("sweep-2", "d", "failed")
    await store.finish_sweep("sweep-2")

    again = await store.start_sweep("acme", sweep_id="sweep-4", retry_failed=True)
    assert dict(again.outcomes) == {"a": "fixed", "b": "fixed", "c": "compliant", "e": "skipped"}
    assert await store.sweep_outcomes("sweep-1") == {
        "a": "fixed", "b": "failed", "c": "compliant", "d": "failed", "e": "skipped",
    }


async def test_retry_failed_during_an_unfinished_sweep_closes_it_and_retries_what_did_not_succeed(store: Store):
    await store.start_sweep("acme", sweep_id="sweep-1")
    await store.checkpoint("sweep-1", "a", "fixed")
    await store.checkpoint("sweep-1", "b", "failed")
    # Interrupted before reaching "c"; --retry-failed takes "b" and the unreached ones.
    retry = await store.start_sweep("acme", sweep_id="sweep-2", retry_failed=True)
    assert (retry.sweep_id, retry.resumed, dict(retry.outcomes)) == ("sweep-2", False, {"a": "fixed"})
    # sweep-1 is closed: a plain run now resumes the retry, not sweep-1.
    resumed = await store.start_sweep("acme", sweep_id="sweep-3")
    assert (resumed.sweep_id, resumed.resumed) == ("sweep-2", True)


async def test_retry_failed_without_a_finished_sweep_is_an_ordinary_sweep(store: Store):
    first = await store.start_sweep("acme", sweep_id="sweep-1", retry_failed=True)
    assert (first.sweep_id, first.resumed, dict(first.outcomes)) == ("sweep-1", False, {})


# --- continuous reconciliation ------------------------------------------------------


async def test_an_installation_joins_the_cycle_once_and_its_turn_comes_when_due(store: Store):
    assert await store.join_reconciliation(7, "acme", 0)
    assert await store.join_reconciliation(8, "globex", LONG_LEASE)
    assert not await store.join_reconciliation(7, "acme-renamed", LONG_LEASE)  # keeps its turn
    turns = await store.reconcile_turns()
    assert [(t.installation_id, t.account, t.owner, t.interval) for t in turns] == [
        (7, "acme-renamed", None, None), (8, "globex", None, None)]
    turn = await store.claim_reconcile_turn("replica-a", LONG_LEASE)
    assert (turn.installation_id, turn.account, turn.owner) == (7, "acme-renamed", "replica-a")
    assert turn.last_started is not None
    assert await store.claim_reconcile_turn("replica-b", LONG_LEASE) is None  # 7 is held, 8 not due


async def test_a_finished_turn_comes_again_after_next_in_with_its_interval(store: Store):
    await store.join_reconciliation(7, "acme", 0)
    await store.claim_reconcile_turn("replica-a", LONG_LEASE)
    assert await store.finish_reconcile_turn(7, "replica-a", next_in=SHORT_LEASE, interval=600.0)
    assert not await store.finish_reconcile_turn(7, "replica-a", next_in=0, interval=1.0)  # not held
    [turn] = await store.reconcile_turns()
    assert (turn.owner, turn.lease_until, turn.interval) == (None, None, 600.0)
    assert turn.last_finished is not None
    assert await store.claim_reconcile_turn("replica-b", LONG_LEASE) is None
    await asyncio.sleep(PAST_SHORT_LEASE)
    turn = await store.claim_reconcile_turn("replica-b", LONG_LEASE)
    assert (turn.installation_id, turn.owner, turn.interval) == (7, "replica-b", 600.0)
    assert await store.finish_reconcile_turn(7, "replica-b", next_in=LONG_LEASE, interval=None)
    [turn] = await store.reconcile_turns()
    assert turn.interval == 600.0  # None keeps the recorded interval


async def test_the_most_overdue_turn_is_claimed_first(store: Store):
    await store.join_reconciliation(9, "late", 0)
    await asyncio.sleep(0.05)
    await store.join_reconciliation(3, "later", 0)
    assert (await store.claim_reconcile_turn("replica-a", LONG_LEASE)).installation_id == 9
    assert (await store.claim_reconcile_turn("replica-a", LONG_LEASE)).installation_id == 3


async def test_a_lapsed_turn_lease_is_taken_over_and_a_renewed_one_is_not(store: Store):
    await store.join_reconciliation(7, "acme", 0)
    await store.join_reconciliation(8, "globex", 0)
    assert (await store.claim_reconcile_turn("dead", SHORT_LEASE)).installation_id == 7
    assert (await store.claim_reconcile_turn("alive", SHORT_LEASE)).installation_id == 8
    for _ in range(4):
        await asyncio.sleep(SHORT_LEASE / 2)
        assert await store.renew_reconcile_turn(8, "alive", SHORT_LEASE)
    taken = await store.claim_reconcile_turn("replica-b", LONG_LEASE)
    assert (taken.installation_id, taken.owner) == (7, "replica-b")
    assert await store.claim_reconcile_turn("replica-c", LONG_LEASE) is None
    assert not await store.renew_reconcile_turn(7, "dead", LONG_LEASE)
    assert not await store.finish_reconcile_turn(7, "dead", next_in=0, interval=1.0)


async def test_concurrent_claims_of_one_turn_have_one_winner(store: Store, store_url: str, open_test_store):
    other = await open_test_store(store_url)
    try:
        await store.join_reconciliation(7, "acme", 0)
        claims = await asyncio.gather(*(
            (store if n % 2 else other).claim_reconcile_turn(f"replica-{n}", LONG_LEASE) for n in range(20)))
        assert len([c for c in claims if c is not None]) == 1
    finally:
        await other.close()


async def test_an_installation_that_leaves_the_cycle_has_no_more_turns(store: Store):
    await store.join_reconciliation(7, "acme", 0)
    await store.append_audit([audit_entry(1)])
    assert await store.leave_reconciliation(7)
    assert not await store.leave_reconciliation(7)
    assert await store.reconcile_turns() == []
    assert await store.claim_reconcile_turn("replica-a", LONG_LEASE) is None
    assert len(await store.audit_records()) == 1  # its audit trail stays


# --- locks and counters ---------------------------------------------------------------


async def test_a_named_lock_has_one_owner_until_released_or_expired(store: Store):
    assert await store.try_lock("scheduled-sweep", "replica-a", LONG_LEASE)
    assert not await store.try_lock("scheduled-sweep", "replica-b", LONG_LEASE)
    assert await store.try_lock("scheduled-sweep", "replica-a", LONG_LEASE)  # renewing
    assert await store.try_lock("other-lock", "replica-b", LONG_LEASE)

    await store.unlock("scheduled-sweep", "replica-b")  # not the owner: no effect
    assert not await store.try_lock("scheduled-sweep", "replica-b", LONG_LEASE)
    await store.unlock("scheduled-sweep", "replica-a")
    assert await store.try_lock("scheduled-sweep", "replica-b", SHORT_LEASE)

    assert not await store.try_lock("scheduled-sweep", "replica-a", LONG_LEASE)
    await asyncio.sleep(PAST_SHORT_LEASE)
    assert await store.try_lock("scheduled-sweep", "replica-a", LONG_LEASE)
    assert not await store.try_lock("scheduled-sweep", "replica-b", LONG_LEASE)


async def test_concurrent_try_lock_has_one_winner(store: Store):
    results = await asyncio.gather(*(store.try_lock("sweep:acme", f"replica-{n}", LONG_LEASE) for n in range(20)))
    assert results.count(True) == 1


async def _second_waits_for_first(
    first_store: Store, second_store: Store, repo: str, second_repo: str | None = None
) -> list[str]:
    events: list[str] = []
    holding = asyncio.Event()

    async def first() -> None:
        async with first_store.repository_lock(repo):
            events.append("first in")
            holding.set()
            await asyncio.sleep(HOLD_SECONDS)
            events.append("first out")

    async def second() -> None:
        await holding.wait()
        async with second_store.repository_lock(second_repo or repo):
            events.append("second in")

    await asyncio.gather(first(), second())
    return events


async def test_a_repository_lock_makes_the_second_holder_wait(store: Store):
    assert await _second_waits_for_first(store, store, "acme/widgets") == ["first in", "first out", "second in"]


async def test_repository_locks_of_different_repositories_do_not_wait(store: Store):
    async with store.repository_lock("acme/widgets"):
        async def other() -> None:
            async with store.repository_lock("acme/gadgets"):
                pass

        await asyncio.wait_for(other(), timeout=5)


async def test_a_repository_lock_is_released_when_the_work_fails(store: Store):
    with pytest.raises(RuntimeError):
        async with store.repository_lock("acme/widgets"):
            raise RuntimeError("remediation failed")

    async def again() -> None:
        async with store.repository_lock("acme/widgets"):
            pass

    await asyncio.wait_for(again(), timeout=5)


async def test_count_hit_counts_hits_within_the_window(store: Store):
    assert await store.count_hit("octocat:acme/widgets", 60, 1000.0) == 1
    assert await store.count_hit("octocat:acme/widgets", 60, 1010.0) == 2
    assert await store.count_hit("octocat:acme/widgets", 60, 1020.0) == 3
    assert await store.count_hit("hubot:acme/widgets", 60, 1020.0) == 1
    # At 1075 the window (1015, 1075] holds the hit at 1020 and this one.
    assert await store.count_hit("octocat:acme/widgets", 60, 1075.0) == 2
    assert await store.count_hit("octocat:acme/widgets", 60, 2000.0) == 1


async def test_concurrent_hits_count_each_other(store: Store):
    counts = await asyncio.gather(*(store.count_hit("octocat:acme/widgets", 60, 1000.0) for _ in range(10)))
    assert sorted(counts) == list(range(1, 11))


# --- PostgreSQL: several replicas on one database ---------------------------------


async def test_postgres_two_replicas_race_on_deliveries_and_claims(postgres_url: str, open_test_store):
    replica_a = await open_test_store(postgres_url)
    replica_b = await open_test_store(postgres_url)
    try:
        ids = [f"d-{n}" for n in range(20)]
        added = await asyncio.gather(
            *(replica.add_delivery(new_delivery(i)) for i in ids for replica in (replica_a, replica_b))
        )
        assert added.count(True) == len(ids)
        claims = await asyncio.gather(
            *(
                replica.claim_delivery(i, name, LONG_LEASE)
                for i in ids
                for replica, name in ((replica_a, "replica-a"), (replica_b, "replica-b"))
            )
        )
        assert sum(claim is not None for claim in claims) == len(ids)
        assert await replica_a.count_deliveries(PROCESSING) == len(ids)

        await replica_a.add_delivery(new_delivery("d-lease"))
        assert await replica_a.claim_delivery("d-lease", "replica-a", SHORT_LEASE) is not None
        await asyncio.sleep(PAST_SHORT_LEASE)  # replica-a "dies" holding it
        assert [d.id for d in await replica_b.claim_pending("replica-b", LONG_LEASE, 100)] == ["d-lease"]
    finally:
        await replica_a.close()
        await replica_b.close()


async def test_postgres_two_replicas_write_one_audit_chain(postgres_url: str, open_test_store):
    replicas = [await open_test_store(postgres_url) for _ in range(2)]
    try:
        await asyncio.gather(
            *(
                replica.append_audit([audit_entry(n, run_id=f"r{r}-{batch}") for n in range(2)])
                for r, replica in enumerate(replicas)
                for batch in range(10)
            )
        )
        records = await replicas[1].audit_records()
        assert [r.seq for r in records] == list(range(1, 41))
        assert verify_chain(records, await replicas[0].audit_anchor()) is None
    finally:
        for replica in replicas:
            await replica.close()


async def test_postgres_repository_lock_holds_across_replicas(postgres_url: str, open_test_store):
    replica_a = await open_test_store(postgres_url)
    replica_b = await open_test_store(postgres_url)
    try:
        events = await _second_waits_for_first(replica_a, replica_b, "acme/widgets")
        assert events == ["first in", "first out", "second in"]
        # GitHub names are case-insensitive: one repository, one lock.
        events = await _second_waits_for_first(replica_a, replica_b, "acme/widgets", "Acme/Widgets")
        assert events == ["first in", "first out", "second in"]
    finally:
        await replica_a.close()
        await replica_b.close()


async def test_postgres_replicas_starting_at_once_migrate_once(postgres_url: str, open_test_store):
    replicas = await asyncio.gather(*(open_test_store(postgres_url) for _ in range(4)))
    try:
        assert [await replica.schema_version() for replica in replicas] == [SCHEMA_VERSION] * 4
    finally:
        for replica in replicas:
            await replica.close()


async def test_postgres_refuses_a_database_from_a_newer_moko(postgres_url: str, open_test_store):
    first = await open_test_store(postgres_url)
    await first.close()
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("UPDATE moko_meta SET value = $1 WHERE key = 'schema_version'", str(SCHEMA_VERSION + 1))
    finally:
        await conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        await open_test_store(postgres_url)


async def test_postgres_is_chosen_by_the_database_url(postgres_url: str):
    from bot import store as bot_store
    from bot.store.postgres import PostgresStore

    for url in (postgres_url, postgres_url.replace("postgresql://", "postgres://", 1)):
        chosen = bot_store.open_store(url)
        assert isinstance(chosen, PostgresStore)


async def test_a_task_cancelled_while_taking_a_repository_lock_leaves_nothing_behind(
    store_url: str, store: Store, open_test_store
):
    other = await open_test_store(store_url)  # another process on the same database
    try:
        for _ in range(3):
            taking = asyncio.create_task(store.repository_lock("acme/busy").__aenter__())
            await asyncio.sleep(0)  # it has asked the database, and is cancelled before hearing back
            taking.cancel()
            await asyncio.gather(taking, return_exceptions=True)
            async with asyncio.timeout(2.0):
                async with other.repository_lock("acme/busy"):
                    pass
    finally:
        await other.close()


async def test_a_redelivery_is_noted_once_across_replicas_and_forgotten_when_not_asked(
    store: Store, store_url: str, open_test_store
):
    other = await open_test_store(store_url)
    try:
        assert await store.note_redelivery("guid-1") is True
        assert await other.note_redelivery("guid-1") is False
        assert await store.note_redelivery("guid-1") is False
        await store.forget_redelivery("guid-1")
        assert await other.note_redelivery("guid-1") is True
    finally:
        await other.close()
    assert await store.prune_redeliveries(datetime.now(UTC) - timedelta(hours=1)) == 0
    assert await store.prune_redeliveries(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert await store.note_redelivery("guid-1") is True


async def test_stored_delivery_ids_names_the_known_ones_in_any_state(store: Store):
    await store.add_delivery(new_delivery("d-queued"))
    await store.add_delivery(new_delivery("d-done"))
    assert await store.claim_delivery("d-done", "w", LONG_LEASE) is not None
    await store.finish_delivery("d-done", "w", DONE)
    many = [f"unknown-{n}" for n in range(1200)]
    assert await store.stored_delivery_ids(["d-queued", "d-done", "d-never", *many]) == {"d-queued", "d-done"}
    assert await store.stored_delivery_ids([]) == set()


async def test_postgres_an_append_run_again_after_its_commit_went_through_is_not_appended_twice(
    postgres_url: str, open_test_store
):
    # A connection lost during COMMIT is run again on a new connection; the COMMIT may have
    # gone through (a server restart): the same entries must not appear twice in the trail.
    store = await open_test_store(postgres_url)
    try:
        entries = [audit_entry(n) for n in range(3)]
        first = await store.append_audit(entries)
        again = await store.append_audit(entries)
        later = await store.append_audit([audit_entry(7)])
        assert again == first
        assert [r.seq for r in await store.audit_records()] == [1, 2, 3, 4]
        assert later[0].prev_hash == first[-1].hash
    finally:
        await store.close()
