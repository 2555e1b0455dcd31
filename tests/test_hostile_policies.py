"""Hostile policy files against `moko serve` and the fake GitHub: a repository's own file
cannot escalate, and a billion-laughs organization file is refused fast and parsed once."""

from __future__ import annotations

import sqlite3
import time

import aiohttp
import pytest

from tests.support.harness import moko_environ, post_webhook, start_moko_process
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, INSTALLATION, ORG
from tests.support.waiting import wait_until
from tests.test_policy_limits import BILLION_LAUGHS

ESCALATING_FILE = "version: 1\nrepository:\n  has_wiki: true\n  visibility: public\n  default_branch: open\n"


@pytest.fixture
def org(fake_github):
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, ".github", **COMPLIANT)
    return fake_github


def secret_repository(fake, org_file: str) -> None:
    fake.put_file(ORG, ".github", ".github/moko.yml", org_file)
    fake.add_repo(ORG, "secret", private=True, **COMPLIANT)
    fake.add_branch(ORG, "secret", "open")
    fake.set_protection(ORG, "secret", "main", DEFAULT_PROTECTION)
    fake.put_file(ORG, "secret", ".github/moko.yml", ESCALATING_FILE)



def finished(db, *deliveries: str) -> bool:
    with sqlite3.connect(db) as conn:
        states = [
            conn.execute("SELECT state FROM deliveries WHERE id = ?", (delivery,)).fetchone()
            for delivery in deliveries
        ]
    return all(state is not None and state[0] in ("done", "failed") for state in states)


async def serve_and_send(fake, tmp_path, *events, log_name: str = "serve.log"):
    """Start `moko serve`, send each (event, payload, delivery) and wait until processed;
    returns the process's log."""
    db = tmp_path / "moko.db"
    server = await start_moko_process(moko_environ(fake, f"sqlite:///{db}"), tmp_path / log_name)
    try:
        async with aiohttp.ClientSession() as session:
            for event, payload, delivery in events:
                assert (await post_webhook(session, server.url, event, payload, delivery=delivery)).status == 202
            await wait_until(lambda: finished(db, *(delivery for _, _, delivery in events)))
    finally:
        assert await server.stop() == 0, server.log()
    return server.log()


async def test_a_repository_file_cannot_make_a_private_repository_public(org, tmp_path):
    secret_repository(org, "version: 1\noverrides: [repository]\n")
    created = org.event("repository", "created", owner=ORG, repo="secret")
    log = await serve_and_send(org, tmp_path, ("repository", created, "escalate-1"))
    assert org.repo(ORG, "secret")["private"] is True
    assert org.repo(ORG, "secret")["default_branch"] == "main"
    [patch] = org.calls_to("PATCH", f"^/repos/{ORG}/secret$")
    assert patch.body == {"has_wiki": True}  # what the wildcard does cover still applies
    assert "policy_override_ignored" in log
    assert "repository.visibility: ignored: it changes who can see the repository" in log
    assert "repository.default_branch: ignored" in log


async def test_the_organization_can_allow_visibility_by_its_full_name(org, tmp_path):
    secret_repository(org, "version: 1\noverrides: [repository, repository.visibility]\n")
    created = org.event("repository", "created", owner=ORG, repo="secret")
    log = await serve_and_send(org, tmp_path, ("repository", created, "allowed-1"))
    [patch] = org.calls_to("PATCH", f"^/repos/{ORG}/secret$")
    assert patch.body == {"has_wiki": True, "visibility": "public"}
    assert org.repo(ORG, "secret")["private"] is False
    assert "repository.default_branch: ignored" in log and "repository.visibility: ignored" not in log


def parsed_total(metrics: str, outcome: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f'moko_policy_files_parsed_total{{outcome="{outcome}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_billion_laughs_file_is_refused_quickly_and_parsed_once(org, tmp_path):
    org.put_file(ORG, ".github", ".github/moko.yml", BILLION_LAUGHS)
    for name in ("one", "two"):
        org.add_repo(ORG, name, has_wiki=True)
    db = tmp_path / "moko.db"
    server = await start_moko_process(moko_environ(org, f"sqlite:///{db}"), tmp_path / "serve.log")
    try:
        async with aiohttp.ClientSession() as session:
            for name in ("one", "two"):
                started = time.monotonic()
                payload = org.event("repository", "created", owner=ORG, repo=name)
                assert (await post_webhook(session, server.url, "repository", payload, delivery=f"lol-{name}")).status == 202
                await wait_until(lambda name=name: finished(db, f"lol-{name}"))
                # Unbounded, it took 43 s; the parse alone is held to 1 s in test_policy_limits,
                # the whole round trip gets room for a loaded machine.
                assert time.monotonic() - started < 3.0
                # The intake still answers at once.
                async with session.get(server.url + "/healthz") as health:
                    assert health.status == 200
            async with session.get(server.url + "/metrics") as answer:
                metrics = await answer.text()
    finally:
        assert await server.stop() == 0, server.log()
    log = server.log()
    assert log.count("policy_invalid") == 2
    assert "more than 10,000 YAML values (aliases counted as expanded)" in log
    assert org.count("GET", f"^/repos/{ORG}/.github/contents/.github/moko.yml$") == 1
    assert parsed_total(metrics, "invalid") == 1
    assert org.count("PATCH") == 0 and org.count("PUT") == 0


async def test_a_repository_file_is_parsed_once_by_its_sha(org, tmp_path):
    org.put_file(ORG, ".github", ".github/moko.yml", "version: 1\noverrides: [repository.has_wiki]\n")
    own = "version: 1\nrepository:\n  has_wiki: true\n  has_projects: true\n"
    for name in ("one", "two"):
        org.add_repo(ORG, name, has_wiki=False)
        org.put_file(ORG, name, ".github/moko.yml", own)  # the same blob in both
    events = [
        ("repository", org.event("repository", "created", owner=ORG, repo=name), f"own-{name}") for name in ("one", "two")
    ]
    db = tmp_path / "moko.db"
    server = await start_moko_process(moko_environ(org, f"sqlite:///{db}"), tmp_path / "serve.log")
    try:
        async with aiohttp.ClientSession() as session:
            for event, payload, delivery in events:
                assert (await post_webhook(session, server.url, event, payload, delivery=delivery)).status == 202
            await wait_until(lambda: finished(db, "own-one", "own-two"))
            async with session.get(server.url + "/metrics") as answer:
                metrics = await answer.text()
    finally:
        assert await server.stop() == 0, server.log()
    assert org.repo(ORG, "one")["has_wiki"] is True and org.repo(ORG, "two")["has_wiki"] is True
    # Each repository's refused key is reported in its own file, though both share one parse.
    for name in ("one", "two"):
        assert f"{ORG}/{name}/.github/moko.yml:4: repository.has_projects: ignored" in server.log()
    # Read for each repository, parsed once: the organization's file and the shared one.
    assert org.count("GET", r"^/repos/acme/(one|two)/contents/\.github/moko\.yml$") == 2
    assert parsed_total(metrics, "valid") == 2
