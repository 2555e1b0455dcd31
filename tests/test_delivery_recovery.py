"""Missed deliveries come back: GitHub does not retry a delivery that failed while Moko was down
or unreachable, so `moko serve` asks GitHub to redeliver each failed one it never stored, once
(whichever replica or start looks), within MOKO_RECOVER_WINDOW; the redelivery is applied once."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sqlite3
import time

import aiohttp

from bot.redelivery import RECOVER_EVERY, DeliveryRecovery
from tests.support.harness import free_port, moko_environ, run_moko, start_moko_process
from tests.support.org import DEFAULT_PROTECTION, INSTALLATION, ORG
from tests.support.waiting import wait_until

ATTEMPTS = r"^/app/hook/deliveries/\d+/attempts$"
LISTING = r"^/app/hook/deliveries$"
HOURS = 3600.0


def drifted(fake, *names: str) -> None:
    """Protected repositories whose wiki was turned on (the policy wants it off)."""
    fake.add_installation(INSTALLATION, ORG)
    for name in names:
        fake.add_repo(ORG, name, has_wiki=True, has_issues=True, has_projects=False)
        fake.set_protection(ORG, name, "main", DEFAULT_PROTECTION)


def edited(fake, name: str) -> dict:
    return fake.event("repository", "edited", owner=ORG, repo=name, changes={"description": {"from": None}})



def applied_wiki_fixes(db) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute(
            "SELECT repo, count(*) FROM audit WHERE field = 'has_wiki' AND outcome = 'applied' GROUP BY repo"
        ).fetchall())


def delivery_state(db, guid: str) -> str | None:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT state FROM deliveries WHERE id = ?", (guid,)).fetchone()
    return row[0] if row else None


async def redeliveries_requested(url: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as answer:
        text = await answer.text()
    match = re.search(r"^moko_redeliveries_requested_total (\S+)$", text, re.MULTILINE)
    assert match is not None, text
    return float(match.group(1))


async def test_deliveries_missed_while_moko_was_stopped_are_redelivered_once_and_applied_once(
    fake_github, tmp_path
):
    drifted(fake_github, "alpha", "beta", "gamma")
    port = free_port()
    fake_github.hook_config["url"] = f"http://127.0.0.1:{port}/api/github/webhooks"
    db = tmp_path / "moko.db"
    env = moko_environ(fake_github, f"sqlite:///{db}", MOKO_RECOVER_WINDOW="72h")

    # Moko got beta's delivery and fixed the drift, but GitHub stopped waiting for the answer:
    # GitHub reports it failed, and Moko has it.
    first = await start_moko_process({**env, "MOKO_RECOVER_WINDOW": "0"}, tmp_path / "first.log", port=port)
    try:
        kept = await fake_github.deliver("repository", edited(fake_github, "beta"), recorded_as=("timed out", 0))
        await wait_until(lambda: delivery_state(db, kept.guid) == "done")
    finally:
        assert await first.stop() == 0, first.log()

    # Moko is stopped: GitHub cannot connect, and says so.
    lost = await fake_github.deliver("repository", edited(fake_github, "alpha"))
    too_old = await fake_github.deliver("repository", edited(fake_github, "gamma"),
                                        delivered_at=time.time() - 80 * HOURS)
    assert (lost.status, kept.status, too_old.status) == ("failed to connect to host", "timed out",
                                                          "failed to connect to host")

    second = await start_moko_process({**env, "LOG_LEVEL": "info"}, tmp_path / "second.log", port=port)
    try:
        await wait_until(lambda: fake_github.count("POST", ATTEMPTS) >= 1)
        await fake_github.redeliveries_settled()
        await wait_until(lambda: delivery_state(db, lost.guid) == "done")
        requested = await redeliveries_requested(second.url)
    finally:
        assert await second.stop() == 0, second.log()

    assert [c.path for c in fake_github.calls_to("POST", ATTEMPTS)] == [f"/app/hook/deliveries/{lost.id}/attempts"]
    assert requested == 1.0
    redelivered = fake_github.hook_deliveries.records[-1]
    assert (redelivered.guid, redelivered.redelivery, redelivered.status) == (lost.guid, True, "OK")
    # The drift alpha's event was about is fixed, once; gamma's event was older than the window.
    assert fake_github.repo(ORG, "alpha")["has_wiki"] is False
    assert fake_github.repo(ORG, "gamma")["has_wiki"] is True
    assert applied_wiki_fixes(db) == {f"{ORG}/alpha": 1, f"{ORG}/beta": 1}
    assert lost.guid in next(line for line in second.log().splitlines() if "redelivery_requested" in line)
    assert fake_github.private_key_pem.splitlines()[1] not in second.log()
    assert env["GITHUB_WEBHOOK_SECRET"] not in second.log()

    # The next start looks again and finds nothing to ask for.
    listed = fake_github.count("GET", LISTING)
    third = await start_moko_process(env, tmp_path / "third.log", port=port)
    try:
        await wait_until(lambda: fake_github.count("GET", LISTING) > listed)
    finally:
        assert await third.stop() == 0, third.log()
    assert fake_github.count("POST", ATTEMPTS) == 1
    assert applied_wiki_fixes(db) == {f"{ORG}/alpha": 1, f"{ORG}/beta": 1}


async def test_a_redelivery_that_failed_again_is_not_asked_for_by_another_replica_or_start(
    fake_github, postgres_url, tmp_path
):
    drifted(fake_github, "alpha")
    # GitHub cannot reach Moko (a wrong URL, a firewall): the delivery and its redelivery fail.
    fake_github.hook_config["url"] = f"http://127.0.0.1:{free_port()}/api/github/webhooks"
    lost = await fake_github.deliver("repository", edited(fake_github, "alpha"))
    env = moko_environ(fake_github, postgres_url, MOKO_RECOVER_WINDOW="72h", LOG_LEVEL="info")
    running = [await start_moko_process(env, tmp_path / "first.log"),
               await start_moko_process(env, tmp_path / "second.log")]
    try:
        await wait_until(lambda: fake_github.count("POST", ATTEMPTS) == 1)
        await fake_github.redeliveries_settled()
        assert [(d.guid, d.redelivery, d.status_code) for d in fake_github.hook_deliveries.records] == [
            (lost.guid, False, 0), (lost.guid, True, 0)]
        # The replica that looked stops; the other takes the look over at once; then a new
        # start takes it over from that one. Each finds the failed redelivery, and asks nothing.
        for restart in ("third.log", None):
            await wait_until(lambda: any("delivery_recovery_done" in p.log() for p in running))
            holder = next(p for p in running if "delivery_recovery_done" in p.log())
            looks = fake_github.count("GET", LISTING)
            if restart:
                running.append(await start_moko_process(env, tmp_path / restart))
            running.remove(holder)
            assert await holder.stop() == 0, holder.log()
            await wait_until(lambda: fake_github.count("GET", LISTING) > looks)  # noqa: B023
    finally:
        for process in running:
            assert await process.stop() == 0, process.log()
    assert fake_github.count("POST", ATTEMPTS) == 1
    assert fake_github.repo(ORG, "alpha")["has_wiki"] is True  # nothing reached Moko


async def test_a_zero_window_asks_for_nothing(fake_github, tmp_path):
    drifted(fake_github, "alpha")
    fake_github.hook_config["url"] = f"http://127.0.0.1:{free_port()}/api/github/webhooks"
    await fake_github.deliver("repository", edited(fake_github, "alpha"))
    env = moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db", MOKO_RECOVER_WINDOW="0", LOG_LEVEL="info")
    moko = await start_moko_process(env, tmp_path / "moko.log")
    try:
        await wait_until(lambda: "delivery_recovery_off" in moko.log())
    finally:
        assert await moko.stop() == 0, moko.log()
    assert fake_github.count("GET", LISTING) == 0 and fake_github.count("POST", ATTEMPTS) == 0


async def test_moko_looks_again_every_five_minutes_and_a_github_without_the_endpoint_is_tried_again(
    fake_github, tmp_path
):
    drifted(fake_github, "alpha", "beta")
    env = moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db", MOKO_RETRY_ATTEMPTS="2")
    async with run_moko(env) as moko:
        fake_github.hook_config["url"] = moko.url + "/api/github/webhooks"
        services = dataclasses.replace(
            moko.services, settings=dataclasses.replace(moko.services.settings, recover_window=72 * HOURS))
        clock = [0.0]
        slept = asyncio.Queue()
        wake = asyncio.Event()

        async def sleep(seconds: float) -> None:
            await slept.put(seconds)
            await wake.wait()
            wake.clear()
            clock[0] += seconds

        async def next_look() -> None:
            await asyncio.wait_for(slept.get(), 30)

        # An older GitHub Enterprise Server has no such endpoint: 404, logged, tried again later.
        fake_github.fail("GET", LISTING, 404)
        recovery = DeliveryRecovery(services, poll_seconds=RECOVER_EVERY / 2, sleep=sleep, clock=lambda: clock[0])
        task = asyncio.create_task(recovery.run_forever())
        try:
            await next_look()
            assert fake_github.count("GET", LISTING) == 1
            moko_was_down = fake_github.hook_config["url"]
            fake_github.hook_config["url"] = f"http://127.0.0.1:{free_port()}/api/github/webhooks"
            lost = await fake_github.deliver("repository", edited(fake_github, "alpha"))
            fake_github.hook_config["url"] = moko_was_down
            wake.set()  # half the interval: not yet
            await next_look()
            assert fake_github.count("GET", LISTING) == 1
            fake_github.fail("GET", LISTING, 502, times=2)  # GitHub has a bad moment, retries and all
            wake.set()  # five minutes after the first look
            await next_look()
            assert fake_github.count("GET", LISTING) == 3 and fake_github.count("POST", ATTEMPTS) == 0
            wake.set()
            await next_look()
            assert fake_github.count("GET", LISTING) == 3
            wake.set()  # five minutes later still: asked for now
            await next_look()
            assert [c.path for c in fake_github.calls_to("POST", ATTEMPTS)] == [
                f"/app/hook/deliveries/{lost.id}/attempts"]
            await fake_github.redeliveries_settled()
            await moko.settle()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert fake_github.repo(ORG, "alpha")["has_wiki"] is False
    assert fake_github.repo(ORG, "beta")["has_wiki"] is True
