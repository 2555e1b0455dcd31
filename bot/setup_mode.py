"""Setup mode of `moko serve`: with no App credentials, a page registers the App on GitHub from its
manifest (app.yml), the callback exchanges GitHub's code for the App's credentials and writes
them to .env, and the server then carries on as the App."""

from __future__ import annotations

import asyncio
import html
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from cachetools import TTLCache
from gidgethub import GitHubException
from gidgethub.aiohttp import GitHubAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot.config import Settings
from bot.http_limits import answer_unread, handler_args
from bot.logs import get_logger
from bot.metrics import REGISTRY
from bot.redact import REDACTOR

log = get_logger("moko.setup")

MANIFEST_PATH = Path(__file__).resolve().parent.parent / "app.yml"
CALLBACK_PATH = "/setup/callback"
WEBHOOK_PATH = "/api/github/webhooks"
# A registration started on the page must come back within this long.
STATE_TTL_SECONDS = 3600.0
# What the callback writes to .env, in this order.
ENV_KEYS = ("GITHUB_APP_ID", "GITHUB_PRIVATE_KEY", "GITHUB_WEBHOOK_SECRET", "GITHUB_CLIENT_ID",
            "GITHUB_CLIENT_SECRET", "MOKO_SESSION_SECRET")


class SetupError(Exception):
    """A registration that cannot go on; the message is for the operator's page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Registration:
    """The App GitHub created from the manifest, with its credentials."""

    app_id: str
    slug: str
    html_url: str
    values: Mapping[str, str]  # ENV_KEYS -> value


def load_manifest(path: Path = MANIFEST_PATH) -> dict[str, Any]:
    """The App manifest Moko ships (events and least permissions), as GitHub's form takes it."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict):
        raise ValueError(f"{path}: not a manifest")
    return document


def manifest_for(base: Mapping[str, Any], *, name: str, webhook_url: str, server_url: str) -> dict[str, Any]:
    """The manifest posted to GitHub: the shipped one, with this server's addresses."""
    manifest = json.loads(json.dumps(dict(base)))
    manifest["name"] = name
    manifest["url"] = server_url
    manifest["hook_attributes"] = {**(manifest.get("hook_attributes") or {}), "url": webhook_url, "active": True}
    manifest["redirect_url"] = server_url.rstrip("/") + CALLBACK_PATH
    return manifest


def _quote(value: str) -> str:
    """A double-quoted .env value that python-dotenv (and shells) read back exactly."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def env_text(values: Mapping[str, str]) -> str:
    lines = ["# Written by moko serve's setup page: the GitHub App's credentials. Keep it secret."]
    lines += [f"{key}={_quote(values[key])}" for key in ENV_KEYS]
    return "\n".join(lines) + "\n"


def check_env_file(path: Path) -> None:
    """Refuse before GitHub's one-time code is spent: an existing .env is never overwritten."""
    if path.exists():
        raise SetupError(409, f"{path} exists already; Moko never overwrites it. Move it away, "
                              "then register again.")


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Create .env readable by its owner only; fails rather than replace a file that appeared."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(env_text(values))


class SetupMode:
    """The setup routes, the states handed to GitHub, and the hand-over once registered."""

    def __init__(self, settings: Settings, *, env_path: Path, manifest: Mapping[str, Any] | None = None) -> None:
        self.settings = settings
        self.env_path = env_path
        self.manifest = dict(manifest) if manifest is not None else load_manifest()
        self._states: TTLCache[str, bool] = TTLCache(maxsize=1024, ttl=STATE_TTL_SECONDS)
        self.registered: asyncio.Future[Registration] = asyncio.get_running_loop().create_future()

    def application(self) -> web.Application:
        # Headers (and idle keep-alive) within MOKO_HEADER_TIMEOUT, as for the App.
        app = web.Application(client_max_size=1024 * 1024, handler_args=handler_args(self.settings.header_timeout))
        app.router.add_get("/", self.page)
        app.router.add_get(CALLBACK_PATH, self.callback)
        app.router.add_post(WEBHOOK_PATH, self.webhook)
        app.router.add_get("/healthz", _healthz)
        app.router.add_get("/readyz", _readyz)
        app.router.add_get("/metrics", _metrics)
        return app

    async def page(self, request: web.Request) -> web.Response:
        state = secrets.token_urlsafe(24)
        self._states[state] = True
        server_url = f"{request.scheme}://{request.host}"
        return web.Response(text=_page_html(
            github_url=self.settings.github_url, state=state, server_url=server_url,
            manifest=self.manifest,
        ), content_type="text/html")

    async def callback(self, request: web.Request) -> web.Response:
        try:
            registration = await self._register(request.query.get("code", ""), request.query.get("state", ""))
        except SetupError as error:
            log.warning("setup_refused", reason=str(error))
            return web.Response(status=error.status, text=_message_html("Moko could not be set up", str(error)),
                                content_type="text/html")
        if not self.registered.done():
            self.registered.set_result(registration)
        install = f"{registration.html_url}/installations/new"
        return web.Response(text=_done_html(registration, install, self.env_path), content_type="text/html")

    async def _register(self, code: str, state: str) -> Registration:
        if not state or self._states.pop(state, None) is None:
            raise SetupError(400, "This registration was not started on this page, or it expired. "
                                  "Start again from the setup page.")
        if not code or len(code) > 200 or not code.replace("-", "").replace("_", "").isalnum():
            raise SetupError(400, "GitHub's answer carried no usable code.")
        if self.registered.done():
            raise SetupError(409, "Moko is registered already.")
        check_env_file(self.env_path)
        async with aiohttp.ClientSession() as session:
            gh = GitHubAPI(session, "moko-setup", base_url=self.settings.api_url)
            try:
                answer = await gh.post("/app-manifests/{code}/conversions", url_vars={"code": code}, data=b"")
            except GitHubException as error:
                raise SetupError(502, f"GitHub refused the code: {error}") from None
            except aiohttp.ClientError as error:
                raise SetupError(502, f"GitHub could not be reached: {type(error).__name__}") from None
        values = {
            "GITHUB_APP_ID": str(answer["id"]),
            "GITHUB_PRIVATE_KEY": str(answer["pem"]),
            "GITHUB_WEBHOOK_SECRET": str(answer.get("webhook_secret") or ""),
            "GITHUB_CLIENT_ID": str(answer.get("client_id") or ""),
            "GITHUB_CLIENT_SECRET": str(answer.get("client_secret") or ""),
            "MOKO_SESSION_SECRET": secrets.token_hex(32),
        }
        if not values["GITHUB_WEBHOOK_SECRET"]:
            raise SetupError(502, "GitHub created the App without a webhook secret; Moko cannot verify webhooks.")
        REDACTOR.add(*(values[k] for k in ("GITHUB_PRIVATE_KEY", "GITHUB_WEBHOOK_SECRET",
                                           "GITHUB_CLIENT_SECRET", "MOKO_SESSION_SECRET")))
        try:
            write_env_file(self.env_path, values)
        except FileExistsError:
            raise SetupError(409, f"{self.env_path} appeared meanwhile; Moko never overwrites it.") from None
        log.info("setup_registered", app_id=values["GITHUB_APP_ID"], slug=answer.get("slug"),
                 env_file=str(self.env_path))
        return Registration(
            app_id=values["GITHUB_APP_ID"], slug=str(answer.get("slug") or ""),
            html_url=str(answer.get("html_url") or f"{self.settings.github_url}/apps/{answer.get('slug')}"),
            values=values,
        )

    async def webhook(self, request: web.Request) -> web.StreamResponse:
        # Its body is never read: the connection is closed rather than the rest awaited.
        return await answer_unread(request, web.json_response(
            {"status": "setup", "message": "Moko is not registered yet"}, status=503, headers={"Retry-After": "60"}))


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    return web.json_response({"status": "unavailable", "problems": ["credentials"]}, status=503)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


_STYLE = """body{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#1f2328}
label{display:block;margin:1rem 0 .25rem;font-weight:600}input[type=text],input[type=url]{width:100%;padding:.4rem;
font-size:1rem}button{margin-top:1.5rem;padding:.6rem 1.2rem;font-size:1rem;background:#1f883d;color:#fff;border:0;
border-radius:6px;cursor:pointer}small{color:#59636e}code{background:#f6f8fa;padding:.1rem .3rem}"""


def _page_html(*, github_url: str, state: str, server_url: str, manifest: Mapping[str, Any]) -> str:
    esc = html.escape
    webhook = server_url + WEBHOOK_PATH
    base = json.dumps(dict(manifest))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Set up Moko</title><style>{_STYLE}</style></head>
<body>
<h1>Set up Moko</h1>
<p>Moko has no GitHub App yet. Register one from its manifest: GitHub creates the App with the
events and permissions Moko needs, then sends you back here, and Moko writes the App's
credentials to <code>.env</code> and starts serving.</p>
<form id="register" method="post" action="{esc(github_url)}/settings/apps/new">
  <label for="org">Organization</label>
  <input type="text" id="org" name="org" placeholder="leave empty for your own account">
  <small>The App is owned by this organization (you must be one of its owners), or by you.</small>
  <label for="name">App name</label>
  <input type="text" id="name" name="name" value="{esc(str(manifest.get("name") or "Moko"))}">
  <small>Unique on GitHub.</small>
  <label for="webhook">Webhook URL</label>
  <input type="url" id="webhook" name="webhook" value="{esc(webhook)}">
  <small>Where GitHub sends events: this server's address as GitHub reaches it.</small>
  <input type="hidden" id="manifest" name="manifest">
  <button type="submit" id="create">Register on GitHub</button>
</form>
<script>
const base = {base};
const githubUrl = {json.dumps(github_url)};
const state = {json.dumps(state)};
const serverUrl = {json.dumps(server_url)};
document.getElementById("register").addEventListener("submit", (event) => {{
  const form = event.target;
  const org = document.getElementById("org").value.trim();
  const manifest = Object.assign({{}}, base, {{
    name: document.getElementById("name").value.trim() || base.name,
    url: serverUrl,
    redirect_url: serverUrl + {json.dumps(CALLBACK_PATH)},
    hook_attributes: Object.assign({{}}, base.hook_attributes || {{}},
      {{url: document.getElementById("webhook").value.trim(), active: true}}),
  }});
  document.getElementById("manifest").value = JSON.stringify(manifest);
  const owner = org ? "/organizations/" + encodeURIComponent(org) : "";
  form.action = githubUrl + owner + "/settings/apps/new?state=" + encodeURIComponent(state);
  for (const id of ["org", "name", "webhook"]) document.getElementById(id).removeAttribute("name");
}});
</script>
</body></html>
"""


def _message_html(title: str, message: str) -> str:
    esc = html.escape
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1><p>{esc(message)}</p></body></html>")


def _done_html(registration: Registration, install_url: str, env_path: Path) -> str:
    esc = html.escape
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Moko is registered</title>'
            f"<style>{_STYLE}</style></head><body><h1>Moko is registered</h1>"
            f"<p>GitHub created the App <strong>{esc(registration.slug)}</strong> "
            f"(id {esc(registration.app_id)}). Its credentials are in <code>{esc(str(env_path))}</code> "
            "(readable by you only); keep that file secret, and out of version control.</p>"
            "<p>Moko now serves as this App. Last step: install it on an organization.</p>"
            f'<p><a id="install" href="{esc(install_url)}">Install the App on an organization</a></p>'
            "</body></html>")
