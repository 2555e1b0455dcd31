"""The spine from outside: signed webhooks in, status codes out, deliveries stored and processed once."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from gidgethub.routing import Router

from bot.store import open_store
from bot.store.base import DONE, FAILED, PROCESSING, QUEUED, NewDelivery
from tests.fakegithub.webhooks import load_example, sign_sha1
from tests.support.harness import WEBHOOK_SECRET, run_moko
from tests.support.virtual_time import VirtualTime
from tests.support.waiting import wait_until

PING = load_example("ping")


def counting_router(seen: list[str], *, fail_first: set[str] | None = None, gate: asyncio.Event | None = None) -> Router:
    """A router whose ping handler records each delivery it processes (and can fail or wait)."""
    router = Router()
    failing = fail_first if fail_first is not None else set()

    @router.register("ping")
    async def record_ping(event, ctx):
        seen.append(event.delivery_id)
        if gate is not None:
            await gate.wait()
        if event.delivery_id in failing:
            failing.discard(event.delivery_id)
            raise RuntimeError("handler broke")

    return router


async def stored_states(moko) -> dict[str, int]:
    store = moko.services.store
    return {state: await store.count_deliveries(state) for state in (QUEUED, PROCESSING, DONE, FAILED)}


async def test_signed_ping_is_stored_acknowledged_and_processed(moko):
    reply = await moko.deliver("ping", PING, delivery="d-1")
    assert reply.status == 202
    assert reply.body == {"delivery": "d-1", "status": "queued"}
    stored = await moko.services.store.get_delivery("d-1")
    assert stored is not None and stored.state == DONE and stored.event == "ping"
    assert json.loads(stored.body) == PING


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("wrong secret", 401),
        ("missing signature", 401),
        ("sha1 only", 401),
        ("truncated json", 400),
        ("json array", 400),
        ("missing delivery header", 400),
        ("missing event header", 400),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_stored(moko, case, status):
    body = json.dumps(PING).encode()
    kwargs: dict = {}
    if case == "wrong secret":
        kwargs["secret"] = "not the secret"
    elif case == "missing signature":
        kwargs["headers"] = {"X-Hub-Signature-256": None, "X-Hub-Signature": None}
    elif case == "sha1 only":
        kwargs["headers"] = {"X-Hub-Signature-256": None, "X-Hub-Signature": sign_sha1(body, "It's a Secret to Everybody")}
    elif case == "truncated json":
        body = body[: len(body) // 2]
    elif case == "json array":
        body = b"[1, 2, 3]"
    elif case == "missing delivery header":
        kwargs["headers"] = {"X-GitHub-Delivery": None}
    elif case == "missing event header":
        kwargs["headers"] = {"X-GitHub-Event": None}
    reply = await moko.send("ping", body, **kwargs)
    assert reply.status == status, reply.body
    await moko.settle()
    assert await stored_states(moko) == {QUEUED: 0, PROCESSING: 0, DONE: 0, FAILED: 0}


async def test_a_sha1_signature_in_the_sha256_header_is_refused(moko):
    body = json.dumps(PING).encode()
    reply = await moko.send("ping", body, headers={"X-Hub-Signature-256": sign_sha1(body, WEBHOOK_SECRET)})
    assert reply.status == 401
    assert await stored_states(moko) == {QUEUED: 0, PROCESSING: 0, DONE: 0, FAILED: 0}


async def test_refused_requests_are_counted_under_githubs_event_names_only(moko):
    # Anyone can send any header: a made-up event name must not become a metric label.
    assert (await moko.send("ping", PING, secret="wrong")).status == 401
    assert (await moko.send("made-up-event-7f3a", PING, secret="wrong")).status == 401
    async with moko.session.get(moko.url + "/metrics") as metrics:
        text = await metrics.text()
    assert 'moko_webhooks_received_total{event="ping",outcome="bad_signature"}' in text
    assert 'moko_webhooks_received_total{event="unknown",outcome="bad_signature"}' in text
    assert "made-up-event-7f3a" not in text


async def test_json_that_only_pythons_parser_accepts_is_still_a_delivery(env):
    # An escaped lone surrogate and an integer beyond 64 bits: valid JSON that orjson refuses.
    body = b'{"zen": "half an emoji \\ud83d", "hook_id": 18446744073709551616, "hook": {}}'
    body = body.replace(b"\\\\", b"\\")
    seen: list[object] = []
    router = Router()

    @router.register("ping")
    async def record(event, ctx):
        seen.append((event.data["zen"], event.data["hook_id"]))

    async with run_moko(env, router=router) as moko:
        reply = await moko.deliver("ping", body, delivery="odd-json")
        stored = await moko.services.store.get_delivery("odd-json")
    assert reply.status == 202
    assert stored.state == DONE and stored.body == body
    assert seen == [("half an emoji \ud83d", 18446744073709551616)]


async def test_deliveries_queued_behind_a_busy_worker_are_processed_with_their_own_payloads(env):
    # Past a short queue the parsed payload is not kept in memory: the worker parses the stored body.
    gate = asyncio.Event()
    zens: list[str] = []
    router = Router()

    @router.register("ping")
    async def record(event, ctx):
        await gate.wait()
        zens.append(event.data["zen"])

    async with run_moko({**env, "MOKO_WORKERS": "1"}, router=router) as moko:
        for i in range(6):
            assert (await moko.send("ping", {**PING, "zen": f"zen {i}"}, delivery=f"z{i}")).status == 202
        gate.set()
        await moko.settle()
    assert zens == [f"zen {i}" for i in range(6)]


async def test_a_stop_gives_back_every_queued_delivery_and_the_next_start_processes_them(env):
    gate = asyncio.Event()
    seen: list[str] = []
    env = {**env, "MOKO_WORKERS": "1", "MOKO_SHUTDOWN_GRACE": "0"}
    async with run_moko(env, router=counting_router(seen, gate=gate)) as moko:
        for i in range(200):
            assert (await moko.send("ping", PING, delivery=f"s{i:03}")).status == 202
        # One is in flight (given back too, as the grace is 0); 199 wait in the queue.
    assert len(seen) == 1
    store = open_store(env["MOKO_DATABASE_URL"])
    await store.open()
    try:
        assert await store.count_deliveries(QUEUED) == 200
    finally:
        await store.close()
    async with run_moko(env, router=counting_router(seen)) as moko:
        await moko.workers.recover_once()
        await moko.settle()
        assert await moko.services.store.count_deliveries(DONE) == 200
    assert sorted(set(seen)) == [f"s{i:03}" for i in range(200)]


async def test_finished_deliveries_are_pruned_after_the_retention_and_unfinished_ones_stay(env):
    gate = asyncio.Event()
    seen: list[str] = []
    env = {**env, "MOKO_DELIVERY_RETENTION_DAYS": "3"}
    async with run_moko(env, router=counting_router(seen, fail_first={"p-failed"}, gate=gate)) as moko:
        gate.set()
        for name in ("p-1", "p-2", "p-failed"):
            await moko.deliver("ping", PING, delivery=name)
        gate.clear()
        assert (await moko.send("ping", PING, delivery="p-running")).status == 202
        await wait_until(lambda: "p-running" in seen)
        assert await moko.workers.prune_once() == 0  # nothing is 3 days old yet
        assert await moko.workers.prune_once(now=time.time() + 3 * 86400 + 60) == 3
        store = moko.services.store
        assert [await store.get_delivery(n) for n in ("p-1", "p-2", "p-failed")] == [None, None, None]
        assert (await store.get_delivery("p-running")).state == PROCESSING
        gate.set()
        await moko.settle()
        # Past the retention an ID is new again (GitHub redelivers for 3 days only).
        assert (await moko.deliver("ping", PING, delivery="p-1")).status == 202
    assert seen.count("p-1") == 2


async def test_body_over_25_mib_is_413(moko):
    body = b'{"zen": "' + b"x" * (26 * 1024 * 1024) + b'"}'
    reply = await moko.send("ping", body)
    assert reply.status == 413
    assert await stored_states(moko) == {QUEUED: 0, PROCESSING: 0, DONE: 0, FAILED: 0}


async def test_duplicate_delivery_is_processed_once(env):
    seen: list[str] = []
    async with run_moko(env, router=counting_router(seen)) as moko:
        first = await moko.deliver("ping", PING, delivery="same")
        second = await moko.deliver("ping", PING, delivery="same")
    assert (first.status, second.status) == (202, 200)
    assert second.body == {"status": "duplicate"}
    assert seen == ["same"]


async def test_concurrent_duplicates_are_processed_once(env):
    seen: list[str] = []
    async with run_moko(env, router=counting_router(seen)) as moko:
        replies = await asyncio.gather(*[moko.send("ping", PING, delivery="burst") for _ in range(25)])
        await moko.settle()
    assert sorted(r.status for r in replies) == [200] * 24 + [202]
    assert seen == ["burst"]


async def test_failed_delivery_sent_again_is_processed_again(env):
    seen: list[str] = []
    async with run_moko(env, router=counting_router(seen, fail_first={"flaky"})) as moko:
        first = await moko.deliver("ping", PING, delivery="flaky")
        failed = await moko.services.store.get_delivery("flaky")
        again = await moko.deliver("ping", PING, delivery="flaky")
        done = await moko.services.store.get_delivery("flaky")
        third = await moko.deliver("ping", PING, delivery="flaky")
    assert failed.state == FAILED and "handler broke" in failed.error
    assert (first.status, again.status, third.status) == (202, 202, 200)
    assert done.state == DONE
    assert seen == ["flaky", "flaky"]


async def test_one_failing_handler_neither_stops_nor_hides_another(env):
    ran: list[str] = []
    router = Router()

    @router.register("ping")
    async def broken(event, ctx):
        raise ValueError("first handler fails")

    @router.register("ping")
    async def healthy(event, ctx):
        ran.append(event.delivery_id)

    async with run_moko(env, router=router) as moko:
        await moko.deliver("ping", PING, delivery="iso")
        stored = await moko.services.store.get_delivery("iso")
    assert ran == ["iso"]
    assert stored.state == FAILED and "first handler fails" in stored.error


async def test_unknown_event_is_acknowledged_and_ignored(moko, fake_github):
    payload = {"pages": [], "repository": load_example("push")["repository"], "installation": {"id": 1}}
    reply = await moko.deliver("gollum", payload, delivery="wiki")
    assert reply.status == 202
    assert (await moko.services.store.get_delivery("wiki")).state == DONE
    assert fake_github.calls == []


async def test_stored_but_unprocessed_delivery_survives_a_restart(env):
    gate = asyncio.Event()
    first_seen: list[str] = []
    env = {**env, "MOKO_WORKERS": "1", "MOKO_SHUTDOWN_GRACE": "0"}
    async with run_moko(env, router=counting_router(first_seen, gate=gate)) as moko:
        assert (await moko.send("ping", PING, delivery="busy")).status == 202
        assert (await moko.send("ping", PING, delivery="waiting")).status == 202
        await wait_until(lambda: first_seen == ["busy"])
        # Stop now: "busy" is in flight, "waiting" is stored but nobody has started it.
    second_seen: list[str] = []
    async with run_moko(env, router=counting_router(second_seen)) as moko:
        await moko.workers.recover_once()
        await moko.settle()
        states = {d: (await moko.services.store.get_delivery(d)).state for d in ("busy", "waiting")}
        resent = await moko.send("ping", PING, delivery="waiting")
    assert sorted(second_seen) == ["busy", "waiting"]
    assert states == {"busy": DONE, "waiting": DONE}
    assert resent.status == 200


async def test_full_queue_answers_503_with_retry_after(env):
    gate = asyncio.Event()
    env = {**env, "MOKO_WORKERS": "1", "MOKO_QUEUE_MAX": "2", "MOKO_SHUTDOWN_GRACE": "0"}
    async with run_moko(env, router=counting_router([], gate=gate)) as moko:
        replies = [await moko.send("ping", PING, delivery=f"q{i}") for i in range(3)]
        gate.set()
        await moko.settle()
        stored = await moko.services.store.get_delivery("q2")
    assert [r.status for r in replies] == [202, 202, 503]
    assert replies[2].headers.get("Retry-After")
    assert stored is None


async def test_health_readiness_and_metrics(moko):
    await moko.deliver("ping", PING)
    async with moko.session.get(moko.url + "/healthz") as health:
        assert health.status == 200
    async with moko.session.get(moko.url + "/readyz") as ready:
        assert ready.status == 200
    async with moko.session.get(moko.url + "/metrics") as metrics:
        text = await metrics.text()
    assert metrics.status == 200
    assert 'moko_webhooks_received_total{event="ping",outcome="queued"}' in text
    for name in ("moko_webhook_processing_seconds", "moko_queue_depth", "moko_remediations_total",
                 "moko_github_requests_total", "moko_github_rate_limit_remaining"):
        assert name in text


async def test_readyz_is_503_once_the_store_is_gone(env):
    async with run_moko(env) as moko:
        await moko.services.store.close()
        async with moko.session.get(moko.url + "/readyz") as ready:
            assert ready.status == 503
        await moko.services.store.open()




async def test_a_long_delivery_keeps_its_lease_so_no_other_replica_takes_it(env):
    # The pool's loops and the store's leases run on a clock the test moves.
    clock = VirtualTime()
    gate = asyncio.Event()
    seen: list[str] = []
    env = {**env, "MOKO_LEASE_SECONDS": "1"}
    async with run_moko(env, router=counting_router(seen, gate=gate), timing=clock) as moko:
        await clock.parked(3)  # the pool's recovery, lease and pruning loops wait for the clock
        assert (await moko.send("ping", PING, delivery="long")).status == 202
        await wait_until(lambda: seen == ["long"])
        await clock.advance(2.5)  # well past one lease: only renewals keep it
        stolen = await moko.services.store.claim_pending("another-replica", 60, 10)
        gate.set()
        await moko.settle()
        stored = await moko.services.store.get_delivery("long")
    assert stolen == []
    assert stored.state == DONE and stored.attempts == 1


async def attempts_of(store, delivery: str, attempts: int) -> bool:
    stored = await store.get_delivery(delivery)
    return stored is not None and stored.attempts == attempts


async def test_a_claimed_delivery_whose_lease_expires_in_the_queue_is_processed_once(env):
    gate = asyncio.Event()
    seen: list[str] = []
    env = {**env, "MOKO_WORKERS": "1", "MOKO_LEASE_SECONDS": "1"}
    async with run_moko(env, router=counting_router(seen, gate=gate)) as moko:
        assert (await moko.send("ping", PING, delivery="blocking")).status == 202
        await wait_until(lambda: seen == ["blocking"])
        # A delivery left by another process: this replica claims it; it waits behind "blocking".
        store = moko.services.store
        assert await store.add_delivery(NewDelivery("left", "ping", None, {}, json.dumps(PING).encode()))
        assert await moko.workers.recover_once() == 1
        # Its lease expires while it waits behind "blocking"; recovery claims it again.
        await wait_until(lambda: attempts_of(store, "left", 2), timeout=60)
        gate.set()
        await moko.settle()
        stored = await store.get_delivery("left")
    assert seen == ["blocking", "left"]
    assert stored.state == DONE
