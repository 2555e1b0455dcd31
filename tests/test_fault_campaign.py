"""The fault campaign, short: 200 deliveries to `moko serve` on SQLite while the fake GitHub
fails a fifth of its answers, rate-limits and delays some, and Moko is SIGKILLed three times.
Nothing acknowledged is lost, nothing is written twice, every repository ends compliant,
every `/moko apply` gets one answer, and the audit chain verifies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(170)
def test_two_hundred_deliveries_under_faults_and_kills_are_each_applied_once():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "faults.py"), "--deliveries", "200", "--kills", "3",
         "--backend", "sqlite", "--settle", "60", "--json"],
        capture_output=True, text=True, timeout=160, cwd=ROOT,
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    context = json.dumps({k: v for k, v in result.items() if k != "refused_or_unanswered"})[:3000]

    assert result["kills"] == 3, context
    assert result["faults_drawn"].get("server_error", 0) > 0 and result["faults_drawn"].get("reset", 0) > 0
    assert result["acknowledged"] == result["deliveries"] == 200, context
    assert result["stored"] == 200, context
    assert result["lost"] == 0, context
    assert result["written_more_than_planned"] == {}, context
    assert result["unplanned_writes"] == {}, context
    assert result["applied_twice_in_audit"] == [], context
    assert result["applied_more_than_planned"] == {}, context
    # Counted once every delivery had finished: none was still at work when the repositories
    # and the answers were read, and none that ended done left its repository drifted.
    assert result["unsettled"] == 0 and result["unfinished_at_report"] == 0, context
    assert result["drifted_after"]["done"] == 0, context
    assert result["noncompliant"] == [], context
    assert result["commands"] > 0 and result["commands_answered_once"] == result["commands"], context
    assert result["audit_verify_exit"] == 0, context
    assert result["fake_violations"] == 0, context
    assert result["problems"] == [] and done.returncode == 0, context
