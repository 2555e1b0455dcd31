"""`moko audit`: table and JSON lines with filters, retention pruning that keeps the chain
verifiable, and --verify on a real trail and on one edited in the database."""

from __future__ import annotations

import io
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot import cli
from bot.audit import AuditWriter
from bot.cli_audit import audit_command
from bot.config import load_settings
from bot.store import open_store
from bot.store.base import AuditEntry
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
    """A real trail: a sweep that fixed three repositories (six records)."""
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
    assert (code, out, err) == (0, "audit chain verified: 6 records\n", "")


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
    assert code == 0 and len(lines) == 6
    assert all(list(line) == FIELDS for line in lines)
    first = lines[0]
    assert first["trigger"] == "sweep" and first["run_id"].startswith("sweep-") and first["installation"] == 1
    assert first["time"].endswith("Z") and datetime.fromisoformat(first["time"].replace("Z", "+00:00"))
    assert all(line["prev_hash"] == before["hash"] for before, line in zip(lines, lines[1:], strict=False))

    code, out, _ = await audit(swept, "--json", "--repo", f"{ORG}/gamma")  # any case, as on GitHub
    assert {json.loads(line)["repo"] for line in out.splitlines()} == {f"{ORG}/Gamma"}
    code, out, _ = await audit(swept, "--json", "--repo", f"{ORG}/alpha", "--since", "7d")
    assert [(r["field"], r["outcome"]) for r in map(json.loads, out.splitlines())] == [
        ("has_wiki", "applied"), ("has_projects", "applied")]


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
    assert "2 audit records" in out and "acme/beta" in out and "has_projects" in out and "applied" in out
    assert "moko[bot]" in out  # not taken for markup


async def test_retention_prunes_old_records_and_the_chain_still_verifies(env):
    await write_entries(env, [NOW - timedelta(days=200), NOW - timedelta(days=95), NOW - timedelta(days=89),
                              NOW - timedelta(days=1)])
    code, out, _ = await audit(env, "--json", now=NOW)  # MOKO_AUDIT_RETENTION_DAYS: 90 by default
    assert code == 0 and [json.loads(line)["run_id"] for line in out.splitlines()] == ["run-2", "run-3"]
    code, out, _ = await audit(env, "--verify", now=NOW)
    assert (code, out) == (0, "audit chain verified: 2 records\n")
    code, out, _ = await audit({**env, "MOKO_AUDIT_RETENTION_DAYS": "30"}, "--verify", now=NOW)
    assert (code, out) == (0, "audit chain verified: 1 records\n")
    await write_entries(env, [NOW])  # new records chain on after the pruned ones
    code, out, _ = await audit(env, "--verify", now=NOW)
    assert (code, out) == (0, "audit chain verified: 2 records\n")


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
