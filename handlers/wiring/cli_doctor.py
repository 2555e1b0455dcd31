"""`moko doctor`: the App's setup as GitHub sees it, one line per check (ok, warn or fail, and what
to do), so that an operator hears what is wrong before GitHub's deliveries fail."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import aiohttp
from gidgethub import GitHubException

from bot.config import Settings
from bot.exit_codes import EXIT_FAILURES, EXIT_OK
from bot.github_app import GitHubApp, GitHubCredentialsMissing
from bot.redelivery import Attempt, failed_deliveries
from bot.store import open_store
from handlers.wiring.app import client_options
from policies.apply import github_error
from policies.loader import PolicyError
from policies.model import Policy
from policies.permissions import NOTIFY_CONSEQUENCE, permission_gaps
from policies.source import POLICY_PATH, POLICY_REPO, PolicySource

OK, WARN, FAIL = "ok", "warn", "fail"
# GitHub keeps an App's deliveries for 3 days; older failures are beyond redelivery anyway.
RECENT_DELIVERIES = timedelta(days=3)
# GitHub sends these to every App whether it subscribes or not.
ALWAYS_SENT = frozenset({"installation", "installation_repositories", "ping"})

GitHubFactory = Callable[[Settings, aiohttp.ClientSession], GitHubApp]
EventsHandled = Callable[[], set[str]]


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, how it came out, and what to do about it."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name}: {self.detail}"
        return text + (f" — {self.fix}" if self.fix else "")


def app_github(settings: Settings, session: aiohttp.ClientSession) -> GitHubApp:
    return GitHubApp(session=session, api_url=settings.api_url, graphql_url=settings.graphql_url,
                     app_id=settings.app_id, private_key=settings.private_key, options=client_options(settings))


def handled_events() -> set[str]:
    from handlers import build_router

    router = build_router()
    return set(router._shallow_routes) | set(router._deep_routes)


async def check_app(github: GitHubApp) -> tuple[Check, dict[str, Any] | None]:
    try:
        app = await github.app_client().getitem("/app")
    except GitHubException as exc:
        return Check("app key", FAIL, f"GitHub refused the App's JWT ({github_error(exc)})",
                     "check GITHUB_APP_ID and the private key; a new key can be generated in the App's settings"), None
    return Check("app key", OK, f"GitHub accepts the App's JWT (App {app.get('slug')}, id {app.get('id')})"), app


async def check_webhook(github: GitHubApp) -> Check:
    try:
        config = await github.app_client().getitem("/app/hook/config")
    except GitHubException as exc:
        return Check("webhook", FAIL, f"its configuration cannot be read ({github_error(exc)})")
    problems, warnings = [], []
    url = str(config.get("url") or "")
    if not url:
        problems.append("no webhook URL is set")
    elif not url.endswith("/api/github/webhooks"):
        warnings.append(f"the URL {url} does not end in /api/github/webhooks, where Moko listens")
    if not config.get("secret"):
        problems.append("no secret is set, so deliveries are unsigned and Moko refuses them")
    if str(config.get("content_type") or "json") != "json":
        warnings.append(f"content type is {config.get('content_type')}, not json")
    if str(config.get("insecure_ssl") or "0") != "0":
        problems.append("TLS verification is off (insecure_ssl)")
    if problems:
        return Check("webhook", FAIL, "; ".join(problems + warnings),
                     "fix it in the App's settings (General → Webhook): URL, secret = GITHUB_WEBHOOK_SECRET, "
                     "SSL verification on")
    if warnings:
        return Check("webhook", WARN, "; ".join(warnings), "set the App's webhook to application/json "
                     "and https://YOUR-HOST/api/github/webhooks")
    return Check("webhook", OK, f"{url}, content type json, secret set, TLS verified")


def check_events(app: dict[str, Any], handled: set[str]) -> Check:
    subscribed = set(app.get("events") or ())
    missing = sorted(handled - ALWAYS_SENT - subscribed)
    unused = sorted(subscribed - handled)
    if missing:
        return Check("events", FAIL, f"Moko handles {', '.join(missing)} but the App is not subscribed",
                     "subscribe to them in the App's settings (Permissions & events), as app.yml does")
    if unused:
        return Check("events", WARN, f"subscribed to {', '.join(unused)}, which Moko does not handle",
                     "unsubscribe to save deliveries")
    return Check("events", OK, f"subscribed to every event Moko handles ({len(handled - ALWAYS_SENT)})")


async def check_installations(github: GitHubApp, source: PolicySource) -> list[Check]:
    checks: list[Check] = []
    try:
        installations = [item async for item in github.app_client().getiter("/app/installations?per_page=100")]
    except GitHubException as exc:
        return [Check("installations", FAIL, f"cannot be listed ({github_error(exc)})")]
    if not installations:
        return [Check("installations", WARN, "the App is installed nowhere yet",
                      "install it on an organization from the App's public page")]
    checks.append(Check("installations", OK, f"{len(installations)}: "
                        + ", ".join(str(i["account"]["login"]) for i in installations)))
    for installation in installations:
        account = str(installation["account"]["login"])
        if installation.get("suspended_at"):
            checks.append(Check(f"installation {account}", WARN, "suspended: Moko receives nothing from it",
                                "unsuspend it in the organization's settings"))
            continue
        policy_check, policy = await check_policy(github, source, int(installation["id"]), account)
        checks.append(policy_check)
        if policy is not None:
            checks.extend(await check_permissions(github, installation, account, policy))
    return checks


async def check_policy(
    github: GitHubApp, source: PolicySource, installation: int, account: str
) -> tuple[Check, Policy | None]:
    name = f"policy {account}"
    try:
        gh = await github.installation_client(installation)
        policy = await source.org_policy(gh, installation, account)
    except PolicyError as exc:
        return Check(name, FAIL, f"{account}/{POLICY_REPO}/{POLICY_PATH} is invalid: "
                     + "; ".join(str(p) for p in exc.problems),
                     "moko check-config shows every error with its line"), None
    except GitHubException as exc:
        return Check(name, FAIL, f"cannot be read ({github_error(exc)})",
                     "check the App's contents: read permission"), None
    return Check(name, OK, f"{account}/{POLICY_REPO}/{POLICY_PATH} is valid (or absent: the built-in default)"), policy


async def check_permissions(
    github: GitHubApp, installation: dict[str, Any], account: str, policy: Policy
) -> list[Check]:
    """What the organization granted the installation against what its policy needs: one
    warning per policy field the installation may not read or change."""
    name = f"permissions {account}"
    granted = installation.get("permissions")
    if not isinstance(granted, dict):  # the listing left them out: ask for the installation itself
        try:
            granted = (await github.app_client().getitem(f"/app/installations/{installation['id']}")).get(
                "permissions")
        except GitHubException as exc:
            return [Check(name, WARN, f"the installation's permissions cannot be read ({github_error(exc)})")]
    if not isinstance(granted, dict):
        return [Check(name, WARN, "GitHub does not say which permissions the installation was granted")]
    gaps = permission_gaps(policy, granted)
    if not gaps:
        return [Check(name, OK, "the installation's permissions cover every field of the policy")]
    consequence = {"read": "Moko reports it unknown", "write": "Moko cannot fix it"}
    return [Check(name, WARN, f"{gap}, which {account} has not granted; "
                  f"{NOTIFY_CONSEQUENCE if gap.key == 'notify' else consequence[gap.action]}",
                  "add the permission in the App's settings (Permissions & events); the organization's "
                  "owner then accepts it in the installation's settings")
            for gap in gaps]


async def check_deliveries(github: GitHubApp, *, now: datetime) -> Check:
    since = now - RECENT_DELIVERIES
    attempts: list[Attempt] = []
    try:
        async for item in github.app_client().getiter("/app/hook/deliveries?per_page=100"):
            attempt = Attempt.from_item(item)
            if attempt.delivered_at < since:
                break
            attempts.append(attempt)
    except GitHubException as exc:
        return Check("deliveries", WARN, f"recent deliveries cannot be listed ({github_error(exc)})")
    lost = failed_deliveries(attempts)
    if lost:
        sample = "; ".join(f"{a.event} {a.guid}: {a.status}" for a in list(lost.values())[:3])
        return Check("deliveries", WARN, f"{len(lost)} of the last 3 days' deliveries failed and were not "
                     f"redelivered ({sample})", "moko serve asks GitHub to redeliver them (MOKO_RECOVER_WINDOW)")
    return Check("deliveries", OK, f"no failed delivery in the last 3 days ({len(attempts)} listed)")


async def check_store(settings: Settings) -> Check:
    store = open_store(settings.database_url, lease_seconds=settings.lease_seconds)
    kind = settings.database_url.split("://", 1)[0]
    try:
        await store.open()
        try:
            await asyncio.wait_for(store.ping(), 5.0)
        finally:
            await store.close()
    except Exception as exc:  # any failure here is the finding itself
        from bot.redact import mask_url_credentials

        return Check("store", FAIL, f"{kind} store is not usable: {mask_url_credentials(str(exc)) or type(exc).__name__}",
                     "check MOKO_DATABASE_URL, the disk, and that the database server is up")
    return Check("store", OK, f"{kind} store answers and can write")


async def doctor(settings: Settings, *, github_factory: GitHubFactory = app_github,
                 events: EventsHandled = handled_events,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> list[Check]:
    """Every check, in the order an operator fixes things."""
    checks: list[Check] = []
    async with aiohttp.ClientSession() as session:
        github = github_factory(settings, session)
        try:
            app_check, app = await check_app(github)
        except GitHubCredentialsMissing as exc:
            app_check, app = Check("app key", FAIL, str(exc), "run moko serve and register the App on its setup page"), None
        checks.append(app_check)
        if app is not None:
            checks.append(await check_webhook(github))
            checks.append(check_events(app, events()))
            checks.extend(await check_installations(github, PolicySource()))
            checks.append(await check_deliveries(github, now=now()))
    checks.append(await check_store(settings))
    return checks


def report(checks: list[Check], *, as_json: bool, out: IO[str]) -> int:
    failed = any(c.status == FAIL for c in checks)
    if as_json:
        out.write(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2) + "\n")
    else:
        for check in checks:
            out.write(check.line() + "\n")
    return EXIT_FAILURES if failed else EXIT_OK


def run_doctor(args: argparse.Namespace, settings: Settings, *, runner: Callable[[Awaitable[list[Check]]], list[Check]]
               = asyncio.run, out: IO[str] | None = None) -> int:
    from bot.logs import configure_logging

    # The checks are the output; the client's routine log lines (tokens issued) are not.
    quiet = settings.log_level if settings.log_level in ("warning", "error", "critical") else "warning"
    configure_logging(quiet, settings.log_format)
    return report(runner(doctor(settings)), as_json=args.json, out=out or sys.stdout)
