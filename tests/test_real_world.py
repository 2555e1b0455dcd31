"""Real-world shapes GitHub sends that the examples do not show: form-encoded bodies, epoch
timestamps, user accounts, GitHub Enterprise Server URLs."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from tests.fakegithub.webhooks import sign
from tests.support.harness import WEBHOOK_SECRET, run_moko
from tests.support.org import COMPLIANT, DEFAULT_PROTECTION, ORG


async def test_form_encoded_delivery_is_verified_and_processed(fake_github, moko):
    fake_github.add_installation(1, ORG)
    fake_github.add_repo(ORG, "legacy-hook", has_wiki=True, has_issues=True, has_projects=False)
    payload = fake_github.event("repository", "created", owner=ORG, repo="legacy-hook")
    body = urlencode({"payload": json.dumps(payload)}).encode()
    reply = await moko.deliver("repository", body, delivery="form-1", headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Hub-Signature-256": sign(body, WEBHOOK_SECRET),
    })
    assert reply.status == 202
    assert fake_github.repo(ORG, "legacy-hook")["has_wiki"] is False


async def test_json_with_a_charset_parameter_is_a_delivery(fake_github, moko):
    fake_github.add_installation(1, ORG)
    for name, content_type in (("spaced", "application/json; charset=utf-8"), ("upper", "Application/JSON;charset=UTF-8")):
        fake_github.add_repo(ORG, name, has_wiki=True, has_issues=True, has_projects=False)
        body = json.dumps(fake_github.event("repository", "created", owner=ORG, repo=name)).encode()
        reply = await moko.deliver("repository", body, delivery=f"ct-{name}", headers={"Content-Type": content_type})
        assert reply.status == 202
        assert fake_github.repo(ORG, name)["has_wiki"] is False
        assert (await moko.services.store.get_delivery(f"ct-{name}")).body == body


async def test_installation_payload_with_epoch_timestamps_is_accepted(fake_github, moko):
    fake_github.add_installation(1, ORG)
    fake_github.add_repo(ORG, "epoch", has_wiki=True, has_issues=True, has_projects=False)
    payload = fake_github.event("installation", "created", owner=ORG, repositories=[
        {"id": fake_github.repo(ORG, "epoch")["id"], "node_id": "x", "name": "epoch",
         "full_name": f"{ORG}/epoch", "private": False}])
    payload["installation"]["created_at"] = 1700000000
    payload["installation"]["updated_at"] = 1700000001
    await moko.deliver("installation", payload, delivery="epoch-1")
    assert (await moko.services.store.get_delivery("epoch-1")).state == "done"
    assert fake_github.repo(ORG, "epoch")["has_wiki"] is False


async def test_a_user_account_installation_is_remediated(fake_github, moko):
    fake_github.add_installation(2, "octocat", account_type="User")
    fake_github.add_repo("octocat", "dotfiles", has_wiki=True, has_issues=True, has_projects=False)
    await moko.deliver("repository", fake_github.event("repository", "created", owner="octocat", repo="dotfiles"))
    assert fake_github.repo("octocat", "dotfiles")["has_wiki"] is False
    assert fake_github.protection("octocat", "dotfiles", "main") is not None


async def test_github_enterprise_server_urls_are_honoured(fake_github, env):
    fake_github.add_installation(1, ORG)
    for name in ("ghes-a", "ghes-b"):
        fake_github.add_repo(ORG, name, **COMPLIANT)
        fake_github.set_protection(ORG, name, "main", DEFAULT_PROTECTION)
    fake_github.repo(ORG, "ghes-b")["has_wiki"] = True
    payload = fake_github.event("installation", "created", owner=ORG, repositories=[
        {"id": fake_github.repo(ORG, n)["id"], "node_id": "x", "name": n, "full_name": f"{ORG}/{n}",
         "private": False} for n in ("ghes-a", "ghes-b")])
    async with run_moko({**env, "GITHUB_API_URL": fake_github.url + "/api/v3"}) as moko:
        await moko.deliver("installation", payload)
    assert fake_github.repo(ORG, "ghes-b")["has_wiki"] is False
    raw_paths = {c.path for c in fake_github.calls}
    assert "/graphql" in raw_paths  # settings come from GitHub Enterprise Server paths (see test_config)
