"""A delivery taken again after its process died is not applied twice: what the first try
changed is on GitHub, not in the payload, so the retake plans from GitHub (once a write the
dead try sent can no longer land), and a command the first try answered is not answered
again, nor counted again against the user's limit."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time

import aiohttp

from policies.apply import NOT_MADE
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


async def arrived(fake, method: str, path: str, times: int = 1, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while fake.arrived(method, path) < times:
        assert time.monotonic() < deadline, f"no {method} {path} reached GitHub"
        await asyncio.sleep(0.05)


async def killed_mid_delivery(fake, tmp_path, event: str, payload: dict, delivery: str,
                              held: tuple[str, str], kills: int = 1, request_timeout: float = 3.0,
                              arrival: int = 1) -> str:
    """Send the delivery; each time the held request reaches GitHub (carried out, or not,
    as its fault says; its answer held back), kill Moko and start it again (`kills` times);
    the retaken delivery's end state. `arrival`: which of the held requests' arrivals the
    first kill waits for (a later one when the same request is made earlier unheld)."""
    db = tmp_path / "moko.db"
    # The request timeout is also how long a retake waits for a write its dead try sent.
    env = moko_environ(fake, f"sqlite:///{db}", MOKO_REQUEST_TIMEOUT=str(request_timeout))
    running = await start_moko_process(env, tmp_path / "first.log")
    try:
        async with aiohttp.ClientSession() as session:
            assert (await post_webhook(session, running.url, event, payload, delivery=delivery)).status == 202
        for kill in range(1, kills + 1):
            await arrived(fake, *held, times=kill + arrival - 1)
            running.kill()
            running = await start_moko_process(env, tmp_path / f"after-{kill}.log")
        return await finished(db, delivery)
    finally:
        running.kill()


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
    # The PUT the dead try made, and had not recorded, is recorded applied by the retake.
    assert [outcome for _run, outcome, _error in audit_rows(tmp_path / "moko.db", "fresh", "main")] == [
        "pending", "applied",
    ]


def maintainer_command(fake_github, body: str, *, issue_number: int, projects_on: bool = False) -> dict:
    """The `issue_comment.created` event of a maintainer's command in an issue of "widgets", a
    compliant, protected repository (its projects turned on when ``projects_on``)."""
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, "widgets", **COMPLIANT)
    fake_github.set_protection(ORG, "widgets", "main", DEFAULT_PROTECTION)
    if projects_on:
        fake_github.repo(ORG, "widgets")["has_projects"] = True
    fake_github.set_permission(ORG, "widgets", "maria", "maintain")
    return fake_github.event("issue_comment", "created", owner=ORG, repo="widgets", sender="maria",
                             issue_number=issue_number, body=body)


async def test_a_command_retaken_after_a_crash_is_applied_and_answered_once(fake_github, tmp_path):
    # Projects turned on by a toggle, which sends no webhook.
    payload = maintainer_command(fake_github, "/moko apply", issue_number=7, projects_on=True)
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
    # The dead try posted the answer and stopped before recording the command: the retake
    # records it, once, with the outcome the answer gave.
    assert audit_rows(tmp_path / "moko.db", "widgets", "apply") == [("cmd-apply-1", "applied", None)]


async def test_a_refused_command_retaken_after_its_answer_was_posted_is_recorded_once(fake_github, tmp_path):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, "widgets", **COMPLIANT)
    fake_github.set_protection(ORG, "widgets", "main", DEFAULT_PROTECTION)
    fake_github.set_permission(ORG, "widgets", "sam", "read")
    payload = fake_github.event("issue_comment", "created", owner=ORG, repo="widgets", sender="sam",
                                issue_number=8, body="/moko apply")
    answers = rf"^/repos/{ORG}/widgets/issues/8/comments$"
    fake_github.fail("POST", answers, delay=60, after_effect=True)

    state = await killed_mid_delivery(fake_github, tmp_path, "issue_comment", payload, "apply-8",
                                      ("POST", answers))

    assert state == "done"
    [answer] = [c for c in fake_github.comments(ORG, "widgets", 8) if c["user"]["login"] == fake_github.bot_login]
    assert "needs the **maintain** role or higher" in answer["body"]
    [(run, outcome, error)] = audit_rows(tmp_path / "moko.db", "widgets", "apply")
    assert (run, outcome) == ("cmd-apply-8", "denied")
    assert error is not None and answer["html_url"] in error


async def test_a_command_retaken_after_crashes_does_not_count_again_against_the_user_s_limit(
    fake_github, tmp_path
):
    payload = maintainer_command(fake_github, "/moko status", issue_number=5)
    # One command, the user's only one; its process dies at its first request (the reaction,
    # which never takes effect) six times over: more tries than the 5 commands a minute.
    reactions = rf"^/repos/{ORG}/widgets/issues/comments/\d+/reactions$"
    fake_github.fail("POST", reactions, delay=60, times=6)

    state = await killed_mid_delivery(fake_github, tmp_path, "issue_comment", payload, "status-5",
                                      ("POST", reactions), kills=6)

    assert state == "done"
    mine = [c["body"] for c in fake_github.comments(ORG, "widgets", 5)
            if c["user"]["login"] == fake_github.bot_login]
    assert len(mine) == 1, mine
    assert "✅ It complies with the policy." in mine[0]


async def test_a_write_still_on_its_way_when_its_process_died_is_not_made_again(fake_github, tmp_path):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, "slow", **COMPLIANT)
    fake_github.set_protection(ORG, "slow", "main", DEFAULT_PROTECTION)
    fake_github.repo(ORG, "slow")["has_wiki"] = True
    payload = fake_github.event("repository", "edited", owner=ORG, repo="slow",
                                changes={"description": {"from": None}})
    settings = rf"^/repos/{ORG}/slow$"
    # GitHub carries the PATCH out 5 s after it arrived: after the process that sent it died
    # and the next one took the delivery up again.
    fake_github.fail("PATCH", settings, delay=5)

    state = await killed_mid_delivery(fake_github, tmp_path, "repository", payload, "edited-1",
                                      ("PATCH", settings), request_timeout=6)

    assert state == "done"
    assert fake_github.arrived("PATCH", settings) == 1
    assert fake_github.repo(ORG, "slow")["has_wiki"] is False


async def test_a_command_whose_answer_was_still_on_its_way_when_its_process_died_is_answered_once(
    fake_github, tmp_path
):
    payload = maintainer_command(fake_github, "/moko status", issue_number=9)
    answers = rf"^/repos/{ORG}/widgets/issues/9/comments$"
    # GitHub posts the answer 5 s after it arrived: after its process died and the next one
    # took the command up again.
    fake_github.fail("POST", answers, delay=5)

    state = await killed_mid_delivery(fake_github, tmp_path, "issue_comment", payload, "status-9",
                                      ("POST", answers), request_timeout=6)
    deadline = time.monotonic() + 30
    while fake_github.count("POST", answers) < fake_github.arrived("POST", answers):
        assert time.monotonic() < deadline, "a held answer was never carried out"
        await asyncio.sleep(0.1)  # until every answer that reached GitHub is carried out

    assert state == "done"
    mine = [c["body"] for c in fake_github.comments(ORG, "widgets", 9)
            if c["user"]["login"] == fake_github.bot_login]
    assert len(mine) == 1, mine
    assert "✅ It complies with the policy." in mine[0]


async def test_a_command_answered_and_recorded_by_a_try_that_died_is_not_recorded_again(fake_github, tmp_path):
    payload = maintainer_command(fake_github, "/moko status", issue_number=4)
    reactions = rf"^/repos/{ORG}/widgets/issues/comments/\d+/reactions$"
    # The eyes are answered; the rocket, the last request, after the answer and the record,
    # is added and its acknowledgement held back until the process is gone.
    fake_github.fail("POST", reactions, delay=0.01)
    fake_github.fail("POST", reactions, delay=60, after_effect=True)

    state = await killed_mid_delivery(fake_github, tmp_path, "issue_comment", payload, "status-4",
                                      ("POST", reactions), arrival=2)

    assert state == "done"
    mine = [c["body"] for c in fake_github.comments(ORG, "widgets", 4) if c["user"]["login"] == fake_github.bot_login]
    assert len(mine) == 1 and "✅ It complies with the policy." in mine[0]
    # The retake finds the answer and the command's record both there: nothing more is written.
    assert audit_rows(tmp_path / "moko.db", "widgets", "status") == [("cmd-status-4", "applied", None)]


def audit_rows(db, repo: str, field: str) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute("SELECT run_id, outcome, error FROM audit WHERE repo = ? AND field = ? ORDER BY seq",
                            (f"{ORG}/{repo}", field)).fetchall()


async def test_a_change_made_by_a_try_that_died_before_recording_it_is_recorded_applied_by_the_retake(
    fake_github, tmp_path
):
    # Projects turned on by a toggle, which sends no webhook.
    payload = maintainer_command(fake_github, "/moko apply", issue_number=3, projects_on=True)
    settings = rf"^/repos/{ORG}/widgets$"
    # The PATCH is carried out; its answer is held until the process that sent it is gone.
    fake_github.fail("PATCH", settings, delay=60, after_effect=True)

    state = await killed_mid_delivery(fake_github, tmp_path, "issue_comment", payload, "apply-3",
                                      ("PATCH", settings))

    assert state == "done"
    assert fake_github.arrived("PATCH", settings) == 1
    assert fake_github.repo(ORG, "widgets")["has_projects"] is False
    # The dead try's intent has its outcome: the change it made, recorded once.
    assert audit_rows(tmp_path / "moko.db", "widgets", "has_projects") == [
        ("cmd-apply-3", "pending", None), ("cmd-apply-3", "applied", None),
    ]
    mine = [c["body"] for c in fake_github.comments(ORG, "widgets", 3) if c["user"]["login"] == fake_github.bot_login]
    assert len(mine) == 1, mine
    assert "has\\_projects: true → false — **done**" in mine[0]


def wiki_drift_whose_patch_is_lost(fake_github) -> tuple[dict, str]:
    """Repository "lost" with its wiki turned on, the `repository.edited` event about it, and
    the path of its settings, whose next PATCH is held, then dropped without being carried out
    (its process dies meanwhile)."""
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, "lost", **COMPLIANT)
    fake_github.set_protection(ORG, "lost", "main", DEFAULT_PROTECTION)
    fake_github.repo(ORG, "lost")["has_wiki"] = True
    payload = fake_github.event("repository", "edited", owner=ORG, repo="lost",
                                changes={"description": {"from": None}})
    settings = rf"^/repos/{ORG}/lost$"
    fake_github.fail("PATCH", settings, delay=60, reset_connection=True)
    return payload, settings


async def test_a_change_a_dead_try_intended_and_github_never_made_is_recorded_failed_and_made_by_the_retake(
    fake_github, tmp_path
):
    payload, settings = wiki_drift_whose_patch_is_lost(fake_github)

    state = await killed_mid_delivery(fake_github, tmp_path, "repository", payload, "edited-4",
                                      ("PATCH", settings))

    assert state == "done"
    assert fake_github.repo(ORG, "lost")["has_wiki"] is False
    made = [c for c in fake_github.calls_to("PATCH", settings) if c.status == 200]
    assert len(made) == 1
    # The dead try's intent: not made; the retake's: made, each recorded once.
    assert [(outcome, error) for _run, outcome, error in audit_rows(tmp_path / "moko.db", "lost", "has_wiki")] == [
        ("pending", None), ("failed", NOT_MADE), ("pending", None), ("applied", None),
    ]


async def test_a_change_another_run_made_after_a_dead_try_s_intent_is_not_credited_to_that_try(
    fake_github, tmp_path
):
    payload, settings = wiki_drift_whose_patch_is_lost(fake_github)
    db = tmp_path / "moko.db"
    env = moko_environ(fake_github, f"sqlite:///{db}", MOKO_REQUEST_TIMEOUT="3")
    running = await start_moko_process(env, tmp_path / "first.log")
    try:
        async with aiohttp.ClientSession() as session:
            assert (await post_webhook(session, running.url, "repository", payload, delivery="edited-6")).status == 202
        await arrived(fake_github, "PATCH", settings)
        running.kill()
        # Before the delivery is taken again, another run (a sweep of the repository) finds
        # the wiki still on, and turns it off.
        sweep = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "handlers.wiring.cli", "sweep", "--org", ORG, "--repo", "lost",
            env={**os.environ, **env}, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        assert await sweep.wait() == 0
        assert fake_github.repo(ORG, "lost")["has_wiki"] is False
        running = await start_moko_process(env, tmp_path / "after.log")
        state = await finished(db, "edited-6")
    finally:
        running.kill()

    assert state == "done"
    made = [c for c in fake_github.calls_to("PATCH", settings) if c.status == 200]
    assert len(made) == 1
    # The sweep made the change; the dead try's intent, which GitHub never carried out, is
    # recorded so, not as a second change applied.
    rows = [(run.split("-")[0], outcome, error) for run, outcome, error in audit_rows(db, "lost", "has_wiki")]
    assert rows == [
        ("edited", "pending", None), ("sweep", "pending", None), ("sweep", "applied", None),
        ("edited", "failed", NOT_MADE),
    ]
