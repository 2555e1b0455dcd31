"""GitHub's App manifest flow, as the fake plays it: the web form that takes a manifest
(`POST /settings/apps/new`, `POST /organizations/{org}/settings/apps/new`), the confirmation
page with its "Create GitHub App" button, the redirect back with a one-time `code`, and
`POST /app-manifests/{code}/conversions`, which answers with the new App's credentials.

https://docs.github.com/en/apps/sharing-github-apps/registering-a-github-app-from-a-manifest
"""

from __future__ import annotations

import html
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from .replies import HTTPError, Reply
from .rest import Context, handles

FORM_PATH = re.compile(r"^/(?:organizations/(?P<org>[^/]+)/)?settings/apps/new$")
# The permission names GitHub's manifest accepts (a subset: the ones an App like Moko asks for).
KNOWN_PERMISSIONS = {
    "actions", "administration", "checks", "contents", "deployments", "environments", "issues",
    "metadata", "packages", "pages", "pull_requests", "repository_hooks", "repository_projects",
    "secret_scanning_alerts", "secrets", "security_events", "statuses", "vulnerability_alerts",
    "workflows", "members", "organization_administration", "organization_custom_roles",
    "organization_hooks", "organization_projects", "organization_secrets",
}
ACCESS = {"read", "write", "admin"}


@dataclass
class ManifestFlow:
    """What the fake saw of registrations: forms posted, codes issued and spent."""

    forms: list[dict[str, Any]] = field(default_factory=list)
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)  # code -> the manifest
    conversions: list[dict[str, Any]] = field(default_factory=list)


def manifest_problems(manifest: Any) -> list[str]:
    """Why GitHub would refuse this manifest (empty: it would take it)."""
    if not isinstance(manifest, dict):
        return ["the manifest is not a JSON object"]
    problems = []
    for key in ("url", "redirect_url"):
        if not isinstance(manifest.get(key), str) or not manifest[key].startswith(("http://", "https://")):
            problems.append(f"{key} must be a URL")
    hook = manifest.get("hook_attributes")
    if not isinstance(hook, dict) or not str(hook.get("url", "")).startswith(("http://", "https://")):
        problems.append("hook_attributes.url must be a URL")
    for name, access in (manifest.get("default_permissions") or {}).items():
        if name not in KNOWN_PERMISSIONS or access not in ACCESS:
            problems.append(f"default_permissions.{name}: {access!r} is not a permission GitHub knows")
    if not isinstance(manifest.get("default_events", []), list):
        problems.append("default_events must be a list")
    return problems


def form_page(fake: Any, org: str | None, form: dict[str, str], state: str | None) -> tuple[int, str]:
    """GitHub's answer to the posted form: the page with the button that creates the App."""
    try:
        manifest = json.loads(form.get("manifest", ""))
    except ValueError:
        manifest = None
    problems = manifest_problems(manifest)
    fake.manifest_flow.forms.append({"org": org, "manifest": manifest, "state": state})
    if problems:
        fake.violations.extend(f"App manifest: {p}" for p in problems)
        return 422, "<h1>Invalid GitHub App manifest</h1><ul>" + "".join(
            f"<li>{html.escape(p)}</li>" for p in problems) + "</ul>"
    code = secrets.token_hex(10)
    fake.manifest_flow.codes[code] = {"manifest": manifest, "org": org}
    query = {"code": code, **({"state": state} if state is not None else {})}
    target = f"{manifest['redirect_url']}?{urlencode(query)}"
    owner = html.escape(org or "your personal account")
    return 200, (
        "<!doctype html><html><head><title>Create GitHub App</title></head><body>"
        f"<h1>Create GitHub App for {owner}</h1>"
        f"<p>Name: <strong id=\"app-name\">{html.escape(str(manifest.get('name')))}</strong></p>"
        f"<p>Webhook URL: {html.escape(manifest['hook_attributes']['url'])}</p>"
        f'<a id="create-app" href="{html.escape(target)}">Create GitHub App for {owner}</a>'
        "</body></html>"
    )


@handles("apps/create-from-manifest")
def convert_manifest(ctx: Context) -> Reply:
    issued = ctx.fake.manifest_flow.codes.pop(ctx.params["code"], None)
    if issued is None:  # unknown, or spent: a code works once, for an hour
        raise HTTPError(404, "Not Found")
    manifest = issued["manifest"]
    app = ctx.state.app
    slug = app["slug"]  # the fake plays one App: its bot login stays what tests expect
    webhook_secret = secrets.token_hex(20)
    answer = {
        **app,
        "slug": slug,
        "name": manifest.get("name") or app["name"],
        "html_url": f"{ctx.fake.url}/apps/{slug}",
        "permissions": dict(manifest.get("default_permissions") or {}),
        "events": list(manifest.get("default_events") or []),
        "client_id": app["client_id"],
        "client_secret": secrets.token_hex(20),
        "webhook_secret": webhook_secret,
        "pem": ctx.fake.private_key_pem,
    }
    ctx.fake.manifest_flow.conversions.append(answer)
    ctx.fake.hook_config = {"url": manifest["hook_attributes"]["url"], "content_type": "json",
                            "insecure_ssl": "0", "secret": webhook_secret}
    return Reply(201, answer)
