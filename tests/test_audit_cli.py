"""`moko audit`: table and JSON lines with filters, retention pruning that keeps the chain
verifiable, and --verify on a real trail and on one edited in the database."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from bot.audit import AuditWriter
from bot.config import load_settings
from bot.store import open_store
from bot.store.base import AuditEntry
from handlers.wiring import cli
from handlers.wiring.cli_audit import audit_command
from tests.support.harness import post_webhook, run_moko, start_moko_process
from tests.test_sweep import ORG, compliant_repo, sweep

FIELDS = ["time", "run_id", "trigger", "installation", "repo", "actor", "policy", "field", "before",
          "after", "outcome", "error", "prev_hash", "hash"]
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


async def audit(env: dict[str, str], *argv: str, now: datetime | None = None) -> tuple[int, str, str]:
    args = cli.build_parser().parse_args(["audit", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = await audit_command(args, load_settings(env), out=out, err=err, now=now)
    return code, out.getvalue(), err.getvalue()


def db_path(env: dict[str, str]) -> str:
    return env["MOKO_DATABASE_URL"][len("sqlite:///"):]


@pytest.fixture
async def swept(fake_github, env) -> dict[str, str]:
    """A real trail: a sweep that fixed three repositories (twelve records: for each, the
    PATCH's two changes pending, then applied)."""
    fake_github.add_installation(1, ORG)
    for name in ("alpha", "beta", "Gamma"):
        compliant_repo(fake_github, name, has_wiki=True, has_projects=True)
    code, doc, _ = await sweep(env)
    assert code == 0 and doc["fixed"] == 3
    return env


async def write_entries(env: dict[str, str], times: list[datetime]) -> None:
    store = open_store(env["MOKO_DATABASE_URL"])
    await store.open()
    try:
        for i, moment in enumerate(times):
            writer = AuditWriter(store, clock=lambda moment=moment: moment)
            await writer.write([AuditEntry(
                time=writer.now(), run_id=f"run-{i}", trigger="repository.edited", installation=1,
                repo=f"{ORG}/repo-{i}", actor="octocat", policy="repository", field="has_wiki",
                before=True, after=False, outcome="applied")])
    finally:
        await store.close()


async def test_verify_passes_on_a_real_trail(swept):
    code, out, err = await audit(swept, "--verify")
    assert (code, out, err) == (0, "audit chain verified: 12 records\n", "")


async def test_verify_names_the_first_record_edited_in_the_database(swept):
    with sqlite3.connect(db_path(swept)) as db:
        db.execute("UPDATE audit SET after = 'true' WHERE seq = 3")
    code, out, err = await audit(swept, "--verify")
    assert code == 1 and out == ""
    assert err == "moko: audit chain broken at record 3: hash does not match the record's content\n"


async def test_verify_catches_a_record_rewritten_with_its_own_hash(swept):
    from bot.audit_chain import record_hash

    store = open_store(swept["MOKO_DATABASE_URL"])
    await store.open()
    record = (await store.audit_records())[1]
    await store.close()
    forged = record.__class__(**{**record.__dict__, "actor": "mallory"})
    with sqlite3.connect(db_path(swept)) as db:
        db.execute("UPDATE audit SET actor = 'mallory', hash = ? WHERE seq = ?",
                   (record_hash(forged, record.prev_hash), record.seq))
    code, _, err = await audit(swept, "--verify")
    assert code == 1
    assert err == f"moko: audit chain broken at record {record.seq + 1}: prev_hash does not match the record before it\n"


async def test_json_lines_carry_the_specs_fields_and_filter_by_repository(swept):
    code, out, _ = await audit(swept, "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(lines) == 12
    assert all(list(line) == FIELDS for line in lines)
    first = lines[0]
    assert first["trigger"] == "sweep" and first["run_id"].startswith("sweep-") and first["installation"] == 1
    assert first["time"].endswith("Z") and datetime.fromisoformat(first["time"].replace("Z", "+00:00"))
    assert all(line["prev_hash"] == before["hash"] for before, line in zip(lines, lines[1:], strict=False))

    code, out, _ = await audit(swept, "--json", "--repo", f"{ORG}/gamma")  # any case, as on GitHub
    assert {json.loads(line)["repo"] for line in out.splitlines()} == {f"{ORG}/Gamma"}
    code, out, _ = await audit(swept, "--json", "--repo", f"{ORG}/alpha", "--since", "7d")
    # The raw trail: each request's intent (pending), then its outcome.
    assert [(r["field"], r["outcome"]) for r in map(json.loads, out.splitlines())] == [
        ("has_wiki", "pending"), ("has_projects", "pending"), ("has_wiki", "applied"), ("has_projects", "applied")]


async def test_since_takes_a_duration_or_an_iso_time(env):
    await write_entries(env, [NOW - timedelta(days=10), NOW - timedelta(days=2), NOW - timedelta(hours=1)])
    for since, expected in (("7d", ["run-1", "run-2"]), ("3h", ["run-2"]),
                            ((NOW - timedelta(days=11)).isoformat(), ["run-0", "run-1", "run-2"]),
                            ("2026-05-30", ["run-1", "run-2"])):
        code, out, _ = await audit(env, "--json", "--since", since, now=NOW)
        assert code == 0 and [json.loads(line)["run_id"] for line in out.splitlines()] == expected, since


async def test_table_shows_the_records(swept):
    code, out, _ = await audit(swept, "--repo", f"{ORG}/beta")
    assert code == 0
    assert "4 audit records" in out and "acme/beta" in out and "has_projects" in out and "applied" in out
    assert "moko[bot]" in out  # not taken for markup


async def test_reading_the_trail_deletes_nothing_however_old(env):
    await write_entries(env, [NOW - timedelta(days=200), NOW - timedelta(days=95), NOW - timedelta(days=1)])
    short = {**env, "MOKO_AUDIT_RETENTION_DAYS": "1"}
    for argv in (["--json"], ["--verify"], []):
        code, _, _ = await audit(short, *argv, now=NOW)
        assert code == 0
    code, out, _ = await audit(env, "--json", now=NOW)
    assert [json.loads(line)["run_id"] for line in out.splitlines()] == ["run-0", "run-1", "run-2"]
    assert (await audit(env, "--verify", now=NOW))[1] == "audit chain verified: 3 records\n"


def newest_head(env: dict[str, str]) -> str:
    with sqlite3.connect(db_path(env)) as db:
        seq, digest = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return f"{seq}:{digest}"


async def test_an_anchor_shows_the_newest_records_cut(swept):
    head = newest_head(swept)
    assert (await audit(swept, "--verify", "--anchor", head))[:2] == (
        0, "audit chain verified: 12 records, anchor 12 held\n")
    with sqlite3.connect(db_path(swept)) as db:
        db.execute("DELETE FROM audit WHERE seq >= 9")
    assert (await audit(swept, "--verify"))[0] == 0  # what is left still links
    code, out, err = await audit(swept, "--verify", "--anchor", head)
    assert (code, out) == (1, "")
    assert err == "moko: audit anchor 12 not found: the trail ends at record 8, before the anchor's record 12: records were cut\n"


async def test_an_anchor_shows_the_whole_trail_deleted(swept):
    head = newest_head(swept)
    with sqlite3.connect(db_path(swept)) as db:
        db.execute("DELETE FROM audit")
    assert (await audit(swept, "--verify"))[:2] == (0, "audit chain verified: 0 records\n")
    code, _, err = await audit(swept, "--anchor", head)  # --anchor implies --verify
    assert code == 1 and "records were cut" in err


async def test_an_anchor_shows_a_trail_rewritten_with_recomputed_hashes(swept):
    from bot.audit_chain import chain

    head = newest_head(swept)
    store = open_store(swept["MOKO_DATABASE_URL"])
    await store.open()
    records = await store.audit_records()
    await store.close()
    # Whoever can write the database rewrites record 2 and recomputes every hash after it.
    forged = [records[0].__class__(**{**r.__dict__, "actor": "mallory"}) if r.seq == 2 else r for r in records]
    rewritten = chain(forged[1:], records[0].hash, 2)
    with sqlite3.connect(db_path(swept)) as db:
        for r in rewritten:
            db.execute("UPDATE audit SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                       (r.actor, r.prev_hash, r.hash, r.seq))
    assert (await audit(swept, "--verify"))[0] == 0  # without a key the chain cannot tell
    code, _, err = await audit(swept, "--verify", "--anchor", head)
    assert code == 1
    assert err == "moko: audit anchor 12 not found: record 12 no longer has the anchor's hash: the trail was rewritten\n"


@pytest.mark.parametrize("anchor", ["6", "six:abc", "6:"])
async def test_a_malformed_anchor_is_a_usage_error(env, anchor):
    code, out, err = await audit(env, "--verify", "--anchor", anchor)
    assert code == 2 and out == "" and err.count("\n") == 1 and "--anchor" in err


AUDIT_KEY = "correct horse battery staple"


@pytest.fixture
async def keyed(fake_github, env) -> dict[str, str]:
    """A trail written with MOKO_AUDIT_KEY: a sweep that fixed three repositories."""
    env = {**env, "MOKO_AUDIT_KEY": AUDIT_KEY}
    fake_github.add_installation(1, ORG)
    for name in ("alpha", "beta", "Gamma"):
        compliant_repo(fake_github, name, has_wiki=True, has_projects=True)
    code, doc, _ = await sweep(env)
    assert code == 0 and doc["fixed"] == 3
    return env


async def test_with_a_key_every_hash_is_an_hmac_and_verifies_only_with_that_key(keyed):
    code, out, _ = await audit(keyed, "--json")
    assert {json.loads(line)["hash"].split(":")[0] for line in out.splitlines()} == {"hmac-sha256"}
    assert await audit(keyed, "--verify") == (0, "audit chain verified: 12 records\n", "")
    unkeyed = {k: v for k, v in keyed.items() if k != "MOKO_AUDIT_KEY"}
    assert await audit(unkeyed, "--verify") == (
        2, "", "moko: error: the audit chain is keyed: set MOKO_AUDIT_KEY to verify it\n")
    code, _, err = await audit({**keyed, "MOKO_AUDIT_KEY": "another key, just as long"}, "--verify")
    assert code == 1 and err.startswith("moko: audit chain broken at record 1: hash does not match")


async def test_with_a_key_a_rewritten_record_cannot_be_given_a_hash_that_verifies(keyed):
    from bot.audit_chain import chain

    store = open_store(keyed["MOKO_DATABASE_URL"])
    await store.open()
    records = await store.audit_records()
    await store.close()
    # Without the key, the best a forger can do is plain SHA-256 from the rewritten record on.
    forged = [records[0].__class__(**{**r.__dict__, "after": True}) if r.seq == 3 else r for r in records]
    with sqlite3.connect(db_path(keyed)) as db:
        for r in chain(forged[2:], records[1].hash, 3):
            db.execute("UPDATE audit SET after = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                       (json.dumps(r.after, sort_keys=True), r.prev_hash, r.hash, r.seq))
    code, _, err = await audit(keyed, "--verify")
    assert code == 1
    assert err == "moko: audit chain broken at record 3: hash is not keyed although records before it are\n"


async def test_a_trail_begun_without_a_key_goes_on_keyed_and_says_so(env):
    await write_entries(env, [NOW - timedelta(hours=2)])
    keyed_env = {**env, "MOKO_AUDIT_KEY": AUDIT_KEY}
    store = open_store(env["MOKO_DATABASE_URL"], audit_key=AUDIT_KEY)
    await store.open()
    try:
        await AuditWriter(store, clock=lambda: NOW).write([AuditEntry(
            time=NOW, run_id="run-keyed", trigger="repository.edited", installation=1, repo=f"{ORG}/x",
            actor="octocat", policy="repository", field="has_wiki", before=True, after=False, outcome="applied")])
    finally:
        await store.close()
    assert await audit(keyed_env, "--verify", now=NOW) == (
        0, "audit chain verified: 2 records (1 written before MOKO_AUDIT_KEY was set)\n", "")


@pytest.mark.parametrize("argv, message", [
    (["--since", "last tuesday"], "--since"),
    (["--repo", "widgets"], "--repo"),
])
async def test_bad_arguments_are_one_line_and_exit_2(env, argv: list[str], message: str):
    code, out, err = await audit(env, *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err


def test_the_command_line_runs_it(monkeypatch, capsys, tmp_path: Any):
    monkeypatch.setenv("MOKO_DATABASE_URL", f"sqlite:///{tmp_path}/moko.db")
    assert cli.main(["audit", "--verify"]) == 0
    assert capsys.readouterr().out == "audit chain verified: 0 records\n"


async def test_serve_logs_the_head_at_start_and_shutdown_and_it_anchors_the_trail(fake_github, env, tmp_path):
    fake_github.add_installation(1, ORG)
    fake_github.add_repo(ORG, "widgets", has_wiki=True, has_issues=True, has_projects=False)
    server = await start_moko_process({**env, "LOG_LEVEL": "info"}, tmp_path / "serve.log")
    async with aiohttp.ClientSession() as session:
        created = fake_github.event("repository", "created", owner=ORG, repo="widgets")
        assert (await post_webhook(session, server.url, "repository", created)).status == 202
        for _ in range(400):
            if fake_github.count("PUT", f"^/repos/{ORG}/widgets/branches/main/protection$"):
                break
            await asyncio.sleep(0.05)
    assert await server.stop() == 0, server.log()
    heads = [line for line in map(json.loads, server.log().splitlines()) if line.get("message") == "audit_head"]
    # At start and at shutdown, at info; not one line per record written in between.
    assert len(heads) == 2 and {line["level"] for line in heads} == {"info"}
    assert heads[0]["seq"] == 0 and heads[0]["hash"] == "0" * 64  # at start: nothing written yet
    last = heads[-1]
    assert f"{last['seq']}:{last['hash']}" == newest_head(env)  # at shutdown: after the last write
    assert last["seq"] >= 2
    anchor = f"{last['seq']}:{last['hash']}"
    assert (await audit(env, "--verify", "--anchor", anchor))[0] == 0
    with sqlite3.connect(db_path(env)) as db:
        db.execute("DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)")
    assert (await audit(env, "--verify", "--anchor", anchor))[0] == 1


async def test_the_head_is_logged_every_five_minutes(env):
    from structlog.testing import capture_logs

    from bot.audit import log_audit_heads_forever

    await write_entries(env, [NOW])
    store = open_store(env["MOKO_DATABASE_URL"])
    await store.open()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            raise asyncio.CancelledError

    try:
        with capture_logs() as logs, pytest.raises(asyncio.CancelledError):
            await log_audit_heads_forever(store, sleep=sleep)
    finally:
        await store.close()
    assert waits == [300.0] * 3
    assert [(e["event"], e["seq"]) for e in logs] == [("audit_head", 1)] * 3
    assert f"1:{logs[0]['hash']}" == newest_head(env)


async def test_with_a_key_a_whole_trail_rewritten_with_plain_hashes_fails(keyed):
    from bot.audit_chain import chain

    store = open_store(keyed["MOKO_DATABASE_URL"])
    await store.open()
    start, records = await store.audit_chain()
    await store.close()
    # Whoever can write the database, but has no key, rewrites record 2 and recomputes every
    # hash as plain SHA-256, as if the whole trail had been written before the key was set.
    forged = [records[0].__class__(**{**r.__dict__, "actor": "mallory"}) if r.seq == 2 else r for r in records]
    with sqlite3.connect(db_path(keyed)) as db:
        for r in chain(forged, start, 1):
            db.execute("UPDATE audit SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                       (r.actor, r.prev_hash, r.hash, r.seq))
    code, out, err = await audit(keyed, "--verify")
    assert (code, out) == (1, "")
    assert err == ("moko: audit chain broken at record 1: hash is not keyed and no keyed record follows to vouch "
                   "for it (the trail was rewritten without MOKO_AUDIT_KEY, or no keyed record was written since "
                   "it was set)\n")


async def test_serve_with_a_new_key_vouches_for_the_plain_records_at_once(env):
    await write_entries(env, [NOW - timedelta(hours=2), NOW - timedelta(hours=1)])
    keyed_env = {**env, "MOKO_AUDIT_KEY": AUDIT_KEY}
    async with run_moko(keyed_env):
        pass
    assert await audit(keyed_env, "--verify") == (
        0, "audit chain verified: 3 records (2 written before MOKO_AUDIT_KEY was set)\n", "")
    code, out, _ = await audit(keyed_env, "--json")
    marker = json.loads(out.splitlines()[-1])
    assert (marker["policy"], marker["field"], marker["trigger"]) == ("audit", "MOKO_AUDIT_KEY", "start")
    async with run_moko(keyed_env):  # once is enough: the head is keyed now
        pass
    assert (await audit(keyed_env, "--verify"))[1].startswith("audit chain verified: 3 records")
    # The plain records are vouched for: rewriting them with plain hashes breaks the link.
    from bot.audit_chain import chain

    store = open_store(env["MOKO_DATABASE_URL"])
    await store.open()
    start, records = await store.audit_chain()
    await store.close()
    forged = [records[0].__class__(**{**records[0].__dict__, "after": True}), records[1]]
    with sqlite3.connect(db_path(env)) as db:
        for r in chain(forged, start, 1):
            db.execute("UPDATE audit SET after = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                       (json.dumps(r.after), r.prev_hash, r.hash, r.seq))
    code, _, err = await audit(keyed_env, "--verify")
    assert code == 1 and err.startswith("moko: audit chain broken at record 3: prev_hash does not match")
