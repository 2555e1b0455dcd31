"""A delivery taken again after its process died is not applied twice: what the first try
changed is on GitHub, not in the payload, so the retake plans from GitHub, and a command the
first try answered is not answered again."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import aiohttp

from tests.support.harness import moko_environ, post_webhook, start_moko_process
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG


async def finished(db, delivery: str, timeout: float = 60.0) -> str:
    def state() -> str | None:
        with sqlite3.connect(db, timeout=30) as conn:
            row = conn.execute("SELECT state FROM deliveries WHERE id = ?", (delivery,)).fetchone()
            return row[0] if row else None

    deadline = time.monotonic() + timeout
    while (found := await asyncio.to_thread(state)) not in ("done", "failed"):
        assert time.monotonic() < deadline, f"delivery {delivery} still {found}"
        await asyncio.sleep(0.1)
    return found


async def arrived(fake, method: str, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not fake.arrived(method, path):
        assert time.monotonic() < deadline, f"no {method} {path} reached GitHub"
        await asyncio.sleep(0.05)


async def killed_mid_delivery(fake, tmp_path, event: str, payload: dict, delivery: str,
                              held: tuple[str, str]) -> str:
    """Send the delivery, kill Moko once the held request has reached GitHub (carried out,
    its answer held back), start Moko again; the retaken delivery's end state."""
    db = tmp_path / "moko.db"
    env = moko_environ(fake, f"sqlite:///{db}")
    first = await start_moko_process(env, tmp_path / "first.log")
    try:
        async with aiohttp.ClientSession() as session:
            assert (await post_webhook(session, first.url, event, payload, delivery=delivery)).status == 202
        await arrived(fake, *held)
    finally:
        first.kill()
    following = await start_moko_process(env, tmp_path / "following.log")
    try:
        return await finished(db, delivery)
    finally:
        await following.stop()


async def test_a_new_repository_s_delivery_retaken_after_a_crash_writes_nothing_the_first_try_wrote(
    fake_github, tmp_path
):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, "fresh", **{**COMPLIANT, "has_wiki": True})
    payload = fake_github.event("repository", "created", owner=ORG, repo="fresh")
    protection = rf"^/repos/{ORG}/fresh/branches/main/protection$"
    # The settings PATCH is answered; the protection PUT is carried out, its answer held back.
    fake_github.fail("PUT", protection, delay=60, after_effect=True)

    state = await killed_mid_delivery(fake_github, tmp_path, "repository", payload, "created-1",
                                      ("PUT", protection))

    assert state == "done"
    assert fake_github.arrived("PATCH", rf"^/repos/{ORG}/fresh$") == 1
    assert fake_github.arrived("PUT", protection) == 1
    assert fake_github.repo(ORG, "fresh")["has_wiki"] is False
    assert fake_github.protection(ORG, "fresh", "main") == DEFAULT_PROTECTION


async def test_a_command_retaken_after_a_crash_is_applied_and_answered_once(fake_github, tmp_path):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, "widgets", **COMPLIANT)
    fake_github.set_protection(ORG, "widgets", "main", DEFAULT_PROTECTION)
    fake_github.repo(ORG, "widgets")["has_projects"] = True  # a toggle: no webhook
    fake_github.set_permission(ORG, "widgets", "maria", "maintain")
    payload = fake_github.event("issue_comment", "created", owner=ORG, repo="widgets", sender="maria",
                                issue_number=7, body="/moko apply")
    answers = rf"^/repos/{ORG}/widgets/issues/7/comments$"
    # The answer is posted, and its acknowledgement held back until the process is gone.
    fake_github.fail("POST", answers, delay=60, after_effect=True)

    state = await killed_mid_delivery(fake_github, tmp_path, "issue_comment", payload, "apply-1",
                                      ("POST", answers))

    assert state == "done"
    assert fake_github.arrived("PATCH", rf"^/repos/{ORG}/widgets$") == 1
    assert fake_github.repo(ORG, "widgets")["has_projects"] is False
    mine = [c for c in fake_github.comments(ORG, "widgets", 7) if c["user"]["login"] == fake_github.bot_login]
    assert len(mine) == 1
    assert "has\\_projects: true → false — **done**" in mine[0]["body"]
