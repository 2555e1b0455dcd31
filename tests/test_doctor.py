"""`moko doctor` against the fake GitHub: a sound setup passes, and each way an App is commonly
misconfigured is a `fail` line that says what to do, with exit code 1."""

from __future__ import annotations

import asyncio
import json
import re
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from handlers.wiring.cli_doctor import handled_events
from tests.support.harness import ROOT, free_port, moko_environ

ORG = "acme"


def sound(fake) -> None:
    fake.add_installation(1, ORG)
    fake.add_repo(ORG, ".github", has_wiki=False)
    fake.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nrepository:\n  has_wiki: false\n")
    fake.app["events"] = sorted(handled_events() - {"installation", "installation_repositories", "ping"})


async def doctor(env: dict[str, str], *args: str) -> tuple[int, str]:
    """`moko doctor` as a person runs it: a process of its own (the fake shares this loop)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "handlers.wiring.cli", "doctor", *args, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode()


def lines(out: str) -> dict[str, str]:
    """check name -> its line."""
    found = {}
    for line in out.splitlines():
        match = re.match(r"^(ok|warn|fail) +([^:]+):", line)
        if match:
            found[match.group(2)] = line
    return found


async def test_a_sound_setup_passes_every_check(fake_github, tmp_path):
    sound(fake_github)
    code, out = await doctor(moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db"))
    checks = lines(out)
    assert code == 0, out
    for name in ("app key", "webhook", "events", "installations", f"policy {ORG}", f"permissions {ORG}",
                 "deliveries", "store"):
        assert checks[name].startswith("ok"), out
    assert "App moko, id 4242" in checks["app key"]
    assert checks["installations"].endswith(f"1: {ORG}")


async def test_each_misconfiguration_fails_with_what_to_do(fake_github, tmp_path):
    sound(fake_github)
    fake_github.hook_config.update(secret=None, insecure_ssl="1")
    fake_github.app["events"] = ["push"]
    fake_github.put_file(ORG, ".github", ".github/moko.yml", "version: 1\nrepository:\n  has_wikki: false\n")
    env = moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db")
    code, out = await doctor(env)
    checks = lines(out)
    assert code == 1, out
    assert checks["webhook"].startswith("fail") and "no secret is set" in checks["webhook"]
    assert "TLS verification is off" in checks["webhook"] and "App's settings" in checks["webhook"]
    assert checks["events"].startswith("fail") and "issue_comment" in checks["events"]
    assert checks[f"policy {ORG}"].startswith("fail") and ":3: repository.has_wikki" in checks[f"policy {ORG}"]
    assert checks["store"].startswith("ok")


async def test_a_key_github_does_not_accept_is_the_first_failure(fake_github, tmp_path):
    sound(fake_github)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    env = {**moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db"), "GITHUB_PRIVATE_KEY": other}
    code, out = await doctor(env)
    checks = lines(out)
    assert code == 1
    assert checks["app key"].startswith("fail") and "GitHub refused the App's JWT (401" in checks["app key"]
    assert "private key" in checks["app key"]
    assert "webhook" not in checks  # nothing else can be asked as the App
    assert other.splitlines()[1] not in out


async def test_an_unusable_store_fails(fake_github, tmp_path):
    sound(fake_github)
    env = moko_environ(fake_github, "postgresql://moko:hunter2-secret@127.0.0.1:1/moko")
    code, out = await doctor(env)
    assert code == 1
    assert lines(out)["store"].startswith("fail") and "hunter2-secret" not in out


async def test_json_is_one_document_with_every_check(fake_github, tmp_path):
    sound(fake_github)
    fake_github.hook_config["url"] = ""
    code, out = await doctor(moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db"), "--json")
    document = json.loads(out)
    assert code == 1 and document["ok"] is False
    by_name = {c["name"]: c for c in document["checks"]}
    assert by_name["webhook"]["status"] == "fail" and "no webhook URL" in by_name["webhook"]["detail"]
    assert by_name["app key"]["status"] == "ok"
    assert set(by_name["webhook"]) == {"name", "status", "detail", "fix"}


async def test_failed_deliveries_not_redelivered_are_a_warning_naming_them(fake_github, tmp_path):
    sound(fake_github)
    fake_github.hook_config["url"] = f"http://127.0.0.1:{free_port()}/api/github/webhooks"  # nothing listens
    payload = fake_github.event("repository", "edited", owner=ORG, repo=".github",
                                changes={"description": {"from": None}})
    lost = await fake_github.deliver("repository", payload)
    # Another failed, then its redelivery went through: not lost.
    recovered = await fake_github.deliver("repository", payload)
    await fake_github.deliver("repository", payload, guid=recovered.guid, recorded_as=("OK", 202))
    code, out = await doctor(moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db"))
    deliveries = lines(out)["deliveries"]
    assert code == 0, out
    assert deliveries.startswith("warn") and "1 of the last 3 days' deliveries failed" in deliveries
    assert f"repository {lost.guid}: failed to connect to host" in deliveries and recovered.guid not in deliveries
    assert "MOKO_RECOVER_WINDOW" in deliveries


async def test_each_permission_the_policy_needs_and_the_installation_lacks_is_a_warning(fake_github, tmp_path):
    sound(fake_github)
    fake_github.add_installation(2, "umbrella", permissions={"administration": "read"})
    fake_github.add_repo("umbrella", ".github")
    fake_github.put_file("umbrella", ".github", ".github/moko.yml",
                         "version: 1\nrepository:\n  allow_squash_merge: false\nbranches: []\n")
    code, out = await doctor(moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db"))
    gaps = [line for line in out.splitlines() if line.startswith("warn  permissions umbrella:")]
    assert code == 0, out
    assert lines(out)[f"permissions {ORG}"].startswith("ok")
    assert len(gaps) == 2, out
    assert ("repository.allow_squash_merge: reading it needs the contents: write permission, which umbrella "
            "has not granted; Moko reports it unknown") in gaps[0]
    assert ("repository.allow_squash_merge: writing it needs the administration: write permission, which "
            "umbrella has not granted; Moko cannot fix it") in gaps[1]
    assert all("App's settings (Permissions & events)" in gap for gap in gaps)
