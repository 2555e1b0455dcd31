"""`moko serve` as a real process: start-up errors, SIGTERM draining, and a crash mid-delivery."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys

import pytest

from tests.fakegithub.webhooks import load_example
from tests.support.harness import moko_environ, post_webhook, start_moko_process
from tests.support.waiting import wait_until

ORG = "acme"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "MOKO_"))}
    return subprocess.run(
        [sys.executable, "-m", "handlers.wiring.cli", *args], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("GITHUB_APP_ID", "GITHUB_APP_ID"),
        ("GITHUB_WEBHOOK_SECRET", "GITHUB_WEBHOOK_SECRET"),
        ("GITHUB_PRIVATE_KEY", "GITHUB_PRIVATE_KEY"),
    ],
)
def test_serve_refuses_to_start_without_a_required_setting(fake_github, tmp_path, missing, named):
    env = moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db")
    del env[missing]
    result = run_cli("serve", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "eighty"), ("MOKO_DRY_RUN", "perhaps"), ("MOKO_SWEEP_INTERVAL", "soon"),
     ("MOKO_DATABASE_URL", "mysql://db"), ("GITHUB_PRIVATE_KEY", "not a key"), ("LOG_LEVEL", "loud")],
)
def test_malformed_setting_stops_start_up_with_one_line(fake_github, tmp_path, name, value):
    env = {**moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db"), name: value}
    result = run_cli("serve", env=env)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and name in result.stderr
    assert "Traceback" not in result.stderr
    # The key itself never appears in an error.
    assert fake_github.private_key_pem.splitlines()[1] not in result.stderr


def test_a_malformed_database_url_is_named_with_its_password_masked(fake_github, tmp_path):
    env = {**moko_environ(fake_github, ""), "MOKO_DATABASE_URL": "mysql://moko:hunter2-s3cret@db.internal/moko"}
    result = run_cli("serve", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "moko: configuration error: MOKO_DATABASE_URL: 'mysql://moko:***@db.internal/moko' is neither "
        "sqlite:///PATH nor postgresql://…"
    ]


@pytest.mark.parametrize("command", [["serve"], ["audit"], ["sweep", "--org", ORG]])
def test_an_unreachable_postgresql_is_one_line_without_its_password_and_exit_2(fake_github, tmp_path, command):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://moko:hunter2-s3cret@127.0.0.1:{port}/moko"
    result = run_cli(*command, env=moko_environ(fake_github, url))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"moko: store error: cannot open the PostgreSQL store at postgresql://moko:***@127.0.0.1:{port}/moko: ")
    assert "hunter2" not in result.stderr + result.stdout


def test_config_file_with_interpolation_is_read_and_environment_wins(fake_github, tmp_path):
    config = tmp_path / "moko.yml"
    config.write_text(
        "MOKO_SWEEP_INTERVAL: ${INTERVAL}\n"
        "environments:\n  production:\n    LOG_LEVEL: ${MISSING_VAR}\n"
    )
    env = {**moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db"), "MOKO_CONFIG": str(config),
           "MOKO_ENV": "production"}
    del env["MOKO_SWEEP_INTERVAL"]  # only the file sets it
    result = run_cli("serve", env={**env, "INTERVAL": "1h"})
    assert result.returncode == 2 and "${MISSING_VAR}" in result.stderr
    from bot.config import load_settings

    settings = load_settings({**env, "INTERVAL": "90m", "MOKO_ENV": "development"})
    assert settings.sweep_interval == 5400
    assert load_settings({**env, "INTERVAL": "90m", "MOKO_ENV": "x", "MOKO_SWEEP_INTERVAL": "0"}).sweep_interval == 0



def delivery_state(db: str, delivery: str) -> str | None:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT state FROM deliveries WHERE id = ?", (delivery,)).fetchone()
    return row[0] if row else None


async def test_sigterm_finishes_in_flight_work_refuses_new_and_exits_0(fake_github, tmp_path):
    import aiohttp

    fake_github.add_installation(1, ORG)
    fake_github.add_repo(ORG, "slow", has_wiki=True, has_issues=True, has_projects=False)
    fake_github.fail("PATCH", f"^/repos/{ORG}/slow$", delay=1.5)
    db = str(tmp_path / "moko.db")
    server = await start_moko_process(moko_environ(fake_github, f"sqlite:///{db}"), tmp_path / "serve.log")
    async with aiohttp.ClientSession() as session:
        created = fake_github.event("repository", "created", owner=ORG, repo="slow")
        assert (await post_webhook(session, server.url, "repository", created, delivery="slow-1")).status == 202
        # The PATCH is at GitHub (held there 1.5 s) when the stop is asked for.
        await wait_until(lambda: fake_github.arrived("PATCH", f"^/repos/{ORG}/slow$") == 1)
        server.process.send_signal(15)
        # Until the signal is handled pings are still taken; from then on they are refused.
        attempt = 0
        while (refused := await post_webhook(session, server.url, "ping", load_example("ping"),
                                             delivery=f"late-{attempt}")).status == 202:
            assert attempt < 200, "still taking deliveries long after SIGTERM"
            attempt += 1
            await asyncio.sleep(0.05)
        await wait_until(lambda: server.process.poll() is not None)
    assert refused.status == 503 and refused.headers.get("Retry-After")
    assert server.process.returncode == 0, server.log()
    assert delivery_state(db, "slow-1") == "done"
    assert delivery_state(db, f"late-{attempt}") is None
    assert fake_github.repo(ORG, "slow")["has_wiki"] is False


async def test_killed_mid_delivery_it_is_finished_by_the_next_start_exactly_once(fake_github, tmp_path):
    import aiohttp

    fake_github.add_installation(1, ORG)
    fake_github.add_repo(ORG, "crashy", has_wiki=True, has_issues=True, has_projects=False)
    fake_github.set_protection(ORG, "crashy", "main", {
        "required_status_checks": None, "enforce_admins": False,
        "required_pull_request_reviews": {"required_approving_review_count": 1}, "restrictions": None})
    fake_github.fail("PATCH", f"^/repos/{ORG}/crashy$", delay=30)
    db = str(tmp_path / "moko.db")
    env = moko_environ(fake_github, f"sqlite:///{db}", MOKO_LEASE_SECONDS="1")
    first = await start_moko_process(env, tmp_path / "first.log")
    async with aiohttp.ClientSession() as session:
        created = fake_github.event("repository", "created", owner=ORG, repo="crashy")
        assert (await post_webhook(session, first.url, "repository", created, delivery="crash-1")).status == 202
        await wait_until(lambda: fake_github.arrived("PATCH", f"^/repos/{ORG}/crashy$") == 1)
        first.kill()
        fake_github.reset_calls()
        fake_github._faults.clear()
        second = await start_moko_process(env, tmp_path / "second.log")
        try:
            await wait_until(lambda: delivery_state(db, "crash-1") == "done")
            again = await post_webhook(session, second.url, "repository", created, delivery="crash-1")
        finally:
            assert await second.stop() == 0, second.log()
    assert again.status == 200
    assert fake_github.repo(ORG, "crashy")["has_wiki"] is False
    with sqlite3.connect(db) as conn:
        applied = conn.execute(
            "SELECT count(*) FROM audit WHERE repo = ? AND field = 'has_wiki' AND outcome = 'applied'", (f"{ORG}/crashy",)
        ).fetchone()[0]
    assert applied == 1
