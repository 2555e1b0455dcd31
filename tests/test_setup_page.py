"""The first hour, in a real browser: `moko serve` with no App credentials serves the setup page;
headless Chromium registers the App through the fake GitHub's manifest flow; the server writes
.env and answers signed deliveries as the App, without a restart.

Screenshots of every page go to test-artifacts/setup/ (kept after the run)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import aiohttp
import pytest
from dotenv import dotenv_values

from tests.fakegithub.webhooks import load_example
from tests.support.harness import ROOT, post_webhook, start_moko_process

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "setup"
CREDENTIALS = ("GITHUB_APP_ID", "GITHUB_PRIVATE_KEY", "GITHUB_PRIVATE_KEY_PATH", "GITHUB_WEBHOOK_SECRET",
               "GITHUB_TOKEN", "GITHUB_CLIENT_ID", "GITHUB_CLIENT_SECRET", "MOKO_SESSION_SECRET")
# As this machine's Chromium must run as root in a closed network (no sandbox, nothing fetched).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def setup_environ(fake, tmp_path: Path) -> dict[str, str]:
    return {"GITHUB_API_URL": fake.url, "MOKO_DATABASE_URL": f"sqlite:///{tmp_path}/moko.db",
            "MOKO_SWEEP_INTERVAL": "0", "LOG_LEVEL": "info"}


@pytest.fixture
async def browser():
    if not os.path.exists(CHROMIUM):
        message = "Chromium is not installed (Debian's chromium package; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def test_a_new_user_registers_the_app_in_the_browser_and_moko_serves_as_it(fake_github, tmp_path, browser):
    workdir = tmp_path / "moko"
    workdir.mkdir()
    server = await start_moko_process(setup_environ(fake_github, tmp_path), tmp_path / "serve.log",
                                      cwd=workdir, without=CREDENTIALS)
    try:
        # Setup mode says where to go, and refuses webhooks meanwhile.
        assert "setup_mode" in server.log() and f"127.0.0.1:{server.url.rsplit(':', 1)[1]}/" in server.log()
        async with aiohttp.ClientSession() as session:
            early = await post_webhook(session, server.url, "ping", load_example("ping"), delivery="too-early")
            assert early.status == 503
            async with session.get(server.url + "/readyz") as ready:
                assert ready.status == 503

        page = await browser.new_page()
        await page.goto(server.url + "/")
        assert await page.title() == "Set up Moko"
        assert await page.input_value("#webhook") == server.url + "/api/github/webhooks"
        await page.fill("#org", "acme")
        await shot(page, "1-setup-page")
        await page.click("#create")

        # GitHub's page: the App for the organization, with the webhook URL typed in.
        await page.wait_for_selector("#create-app")
        assert "Create GitHub App for acme" in await page.inner_text("h1")
        await shot(page, "2-github-create-app")
        [form] = fake_github.manifest_flow.forms
        assert form["org"] == "acme"
        manifest = form["manifest"]
        assert manifest["hook_attributes"]["url"] == server.url + "/api/github/webhooks"
        assert manifest["redirect_url"] == server.url + "/setup/callback"
        assert manifest["default_permissions"]["administration"] == "write"
        assert "repository" in manifest["default_events"]
        await page.click("#create-app")

        # Back on Moko: registered, with the link that installs the App.
        await page.wait_for_selector("#install")
        assert await page.inner_text("h1") == "Moko is registered"
        install = await page.get_attribute("#install", "href")
        assert install == f"{fake_github.url}/apps/{fake_github.app_slug}/installations/new"
        await shot(page, "3-registered")

        env_file = workdir / ".env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        values = dotenv_values(env_file)
        [conversion] = fake_github.manifest_flow.conversions
        assert values["GITHUB_APP_ID"] == str(fake_github.app_id)
        assert values["GITHUB_PRIVATE_KEY"] == fake_github.private_key_pem
        assert values["GITHUB_WEBHOOK_SECRET"] == conversion["webhook_secret"]
        assert values["GITHUB_CLIENT_ID"] == conversion["client_id"]
        assert values["GITHUB_CLIENT_SECRET"] == conversion["client_secret"]
        assert len(values["MOKO_SESSION_SECRET"] or "") == 64
        assert set(values) == {"GITHUB_APP_ID", "GITHUB_PRIVATE_KEY", "GITHUB_WEBHOOK_SECRET", "GITHUB_CLIENT_ID",
                               "GITHUB_CLIENT_SECRET", "MOKO_SESSION_SECRET"}

        # The same process now serves as the App: a delivery signed with the new secret is taken.
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(server.url + "/readyz") as ready:
                        if ready.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await page.wait_for_timeout(50)
            reply = await post_webhook(session, server.url, "ping", load_example("ping"), delivery="first-1",
                                       secret=values["GITHUB_WEBHOOK_SECRET"])
            assert reply.status == 202, reply
            async with session.get(server.url + "/") as setup_again:
                assert setup_again.status == 404  # with credentials the setup routes are gone
            async with session.get(server.url + "/setup/callback?code=x&state=y") as callback_again:
                assert callback_again.status == 404
        assert server.process.poll() is None
        log = server.log()
        for secret in (values["GITHUB_WEBHOOK_SECRET"], values["GITHUB_CLIENT_SECRET"], values["MOKO_SESSION_SECRET"]):
            assert secret not in log
        assert "BEGIN" not in log
    finally:
        assert await server.stop() == 0


async def test_a_tampered_state_is_refused_and_writes_nothing(fake_github, tmp_path, browser):
    workdir = tmp_path / "moko"
    workdir.mkdir()
    server = await start_moko_process(setup_environ(fake_github, tmp_path), tmp_path / "serve.log",
                                      cwd=workdir, without=CREDENTIALS)
    try:
        page = await browser.new_page()
        await page.goto(server.url + "/")
        await page.click("#create")
        await page.wait_for_selector("#create-app")
        genuine = await page.get_attribute("#create-app", "href")
        assert "state=" in genuine
        forged = genuine.split("state=")[0] + "state=forged-by-someone-else"
        response = await page.goto(forged)
        assert response is not None and response.status == 400
        assert "was not started on this page" in await page.inner_text("body")
        await shot(page, "4-forged-state")
        assert not (workdir / ".env").exists()
        assert fake_github.manifest_flow.conversions == []  # the code was not even spent
        # The genuine one still works afterwards: nothing was used up by the forgery.
        response = await page.goto(genuine)
        assert response is not None and response.status == 200
        assert (workdir / ".env").exists()
    finally:
        assert await server.stop() == 0


async def test_an_existing_env_file_is_never_overwritten(fake_github, tmp_path, browser):
    workdir = tmp_path / "moko"
    workdir.mkdir()
    (workdir / ".env").write_text("LOG_LEVEL=info\n")
    server = await start_moko_process(setup_environ(fake_github, tmp_path), tmp_path / "serve.log",
                                      cwd=workdir, without=CREDENTIALS)
    try:
        page = await browser.new_page()
        await page.goto(server.url + "/")
        await page.click("#create")
        await page.wait_for_selector("#create-app")
        response = await page.goto(await page.get_attribute("#create-app", "href"))
        assert response is not None and response.status == 409
        assert "never overwrites" in await page.inner_text("body")
        assert (workdir / ".env").read_text() == "LOG_LEVEL=info\n"
        assert fake_github.manifest_flow.conversions == []
    finally:
        assert await server.stop() == 0


def test_the_manifest_the_page_posts_is_apps_yml(tmp_path):
    from bot.setup_mode import load_manifest, manifest_for

    shipped = load_manifest()
    posted = manifest_for(shipped, name="Moko acme", webhook_url="https://moko.acme.test/api/github/webhooks",
                          server_url="https://moko.acme.test")
    assert posted["default_permissions"] == shipped["default_permissions"]
    assert posted["default_events"] == shipped["default_events"]
    assert posted["redirect_url"] == "https://moko.acme.test/setup/callback"
    assert json.loads(json.dumps(posted)) == posted
