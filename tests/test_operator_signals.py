"""What an operator reads off Moko: `moko check-config`'s exit code and lines, and the
processing-time histogram on /metrics, each checked against the work that was really done."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.fakegithub.webhooks import load_example

PING = load_example("ping")


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "handlers.wiring.cli", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_check_config_exits_2_with_a_line_per_error_on_an_invalid_file(tmp_path):
    policy = tmp_path / "moko.yml"
    policy.write_text("version: 1\nrepository:\n  has_wikki: false\nmode: sometimes\n")
    done = check_config(policy)
    assert done.returncode == 2, done
    lines = done.stdout.splitlines() + done.stderr.splitlines()
    assert any(line.startswith(f"{policy}:3: ") and "has_wikki" in line for line in lines), lines
    assert any(line.startswith(f"{policy}:4: ") and "mode" in line for line in lines), lines


def test_check_config_exits_0_on_a_valid_file(tmp_path):
    policy = tmp_path / "moko.yml"
    policy.write_text("version: 1\nmode: dry-run\nrepository:\n  has_wiki: false\n")
    done = check_config(policy)
    assert (done.returncode, done.stdout.strip()) == (0, f"{policy}: valid")


def test_check_config_of_a_missing_file_exits_2(tmp_path):
    done = check_config(tmp_path / "absent.yml")
    assert done.returncode == 2 and "absent.yml:0: cannot read the file" in done.stderr


def processing_count(metrics: str, event: str) -> float:
    match = re.search(rf'^moko_webhook_processing_seconds_count{{event="{event}"}} (\S+)$', metrics, re.M)
    return float(match.group(1)) if match else 0.0


async def metrics_text(moko) -> str:
    async with moko.session.get(moko.url + "/metrics") as response:
        assert response.status == 200
        return await response.text()


async def test_every_processed_delivery_is_observed_in_the_processing_histogram(moko):
    before = processing_count(await metrics_text(moko), "ping")
    for i in range(3):
        assert (await moko.deliver("ping", PING, delivery=f"timed-{i}")).status == 202
    after = processing_count(await metrics_text(moko), "ping")
    # The metrics registry is the process's: other tests' deliveries may be counted before.
    assert after - before == 3
