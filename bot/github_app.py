"""The GitHub App as Moko uses it: clients for the App and its installations, sharing state per installation."""

from __future__ import annotations

import asyncio
import random as _random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from cachetools import LRUCache, TTLCache

from bot.github_auth import AppAuth
from bot.github_client import (
    DEFAULT_OPTIONS,
    ClientOptions,
    MokoGitHubAPI,
    RateLimitSnapshot,
    Timing,
)
from bot.github_limits import InstallationLimits
from bot.redact import REDACTOR
from bot.turns import give_back_turn

APP_KEY = "app"  # the limits of requests made as the App itself (JWT)
TOKEN_INSTALLATION = 0  # the one pseudo-installation a personal token stands for
# How long an installation's granted permissions are trusted without asking again; a payload
# that carries them (installation.*, e.g. new_permissions_accepted) refreshes them at once.
PERMISSIONS_TTL = 600.0


class GitHubCredentialsMissing(RuntimeError):
    """The App's id and private key are needed for this and were not configured."""


class GitHubApp:
    """Clients for the App and its installations; one per process, over one shared aiohttp session.

    The session belongs to the caller, who closes it on shutdown. Per-installation
    state (ETag cache, rate-limit budget, in-flight bound, write lock, bulk pacing)
    is kept here and shared by every client of that installation.
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        api_url: str,
        graphql_url: str,
        app_id: str | None = None,
        private_key: str | None = None,
        token: str | None = None,
        options: ClientOptions = DEFAULT_OPTIONS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
        user_agent: str = "moko",
    ) -> None:
        self.session = session
        self.api_url = api_url
        self.graphql_url = graphql_url
        self.options = options
        self.user_agent = user_agent
        self.requests_sent = 0
        self._timing = Timing(clock=clock, wall_clock=wall_clock, sleep=sleep, random=random)
        # Missing credentials fail when used, not here: readiness reports them.
        self._auth = (
            AppAuth(str(app_id), private_key, clock=clock, wall_clock=wall_clock)
            if app_id and private_key
            else None
        )
        self._token = token or None
        REDACTOR.add(self._token)
        self._limits: dict[int | str, InstallationLimits] = {}
        self._etags: LRUCache[tuple[str, str], Any] = LRUCache(maxsize=options.etag_cache_size)
        self._bot_login: str | None = None
        self._bot_login_lock = asyncio.Lock()
        self._permissions: TTLCache[int, dict[str, str]] = TTLCache(
            maxsize=10_000, ttl=PERMISSIONS_TTL, timer=clock
        )
        self._permissions_locks: dict[int, asyncio.Lock] = {}
        if self._auth is not None:
            self._auth.on_permissions = self.remember_permissions

    # -- clients -----------------------------------------------------------------------

    def app_client(self) -> MokoGitHubAPI:
        """A client authenticated as the App (JWT), for /app endpoints."""
        auth = self._require_app()
        return self._client(
            self.limits(APP_KEY),
            app_id=auth.app_id,
            private_key=auth.private_key,
            app_jwt_source=auth.app_jwt,
        )

    async def installation_client(self, installation_id: int, *, bulk: bool = False) -> MokoGitHubAPI:
        """A client acting as the installation (or as the personal `token`, for the CLI).

        `bulk=True` for sweeps and reconciliation: its mutating requests are spaced
        `bulk_write_interval` apart; a webhook's client (bulk=False) is never slowed by that.
        """
        limits = self.limits(installation_id)
        if self._token is not None:
            return self._client(limits, bulk=bulk, oauth_token=self._token)
        auth = self._require_app()

        async def token_source(refused: str | None = None) -> str:
            return await auth.installation_token(installation_id, self.app_client, refused=refused)

        return self._client(
            limits, bulk=bulk, oauth_token=await token_source(), token_source=token_source
        )

    def _client(self, limits: InstallationLimits, **kwargs: Any) -> MokoGitHubAPI:
        return MokoGitHubAPI(
            self.session,
            self.user_agent,
            limits=limits,
            base_url=self.api_url,
            graphql_url=self.graphql_url,
            options=self.options,
            timing=self._timing,
            on_send=self._count_send,
            **kwargs,
        )

    def _count_send(self) -> None:
        self.requests_sent += 1

    def _require_app(self) -> AppAuth:
        if self._auth is None:
            raise GitHubCredentialsMissing(
                "GITHUB_APP_ID and GITHUB_PRIVATE_KEY are needed to act as the GitHub App"
            )
        return self._auth

    # -- per-installation state --------------------------------------------------------

    def limits(self, installation_id: int | str) -> InstallationLimits:
        """The state shared by every client of one installation (`APP_KEY` for the App itself)."""
        limits = self._limits.get(installation_id)
        if limits is None:
            limits = InstallationLimits(str(installation_id), self.options, self._timing, self._etags)
            self._limits[installation_id] = limits
        return limits

    def rate_limit(self, installation_id: int | str, resource: str = "core") -> RateLimitSnapshot | None:
        """The installation's budget as GitHub last reported it (None before any answer)."""
        return self.limits(installation_id).budget(resource)

    # -- App-level questions -----------------------------------------------------------

    async def bot_login(self) -> str:
        """The login Moko's own changes appear under: "<slug>[bot]" (the token's user for the CLI)."""
        async with self._bot_login_lock:
            if self._bot_login is None:
                if self._auth is not None:
                    app = await self.app_client().getitem("/app")
                    self._bot_login = f"{app['slug']}[bot]"
                else:
                    client = await self.installation_client(TOKEN_INSTALLATION)
                    self._bot_login = (await client.getitem("/user"))["login"]
        return self._bot_login

    def remember_permissions(self, installation_id: int, permissions: Mapping[str, str]) -> None:
        """The permissions a webhook payload's installation object says it was granted."""
        self._permissions[installation_id] = {str(k): str(v) for k, v in permissions.items()}

    async def installation_permissions(self, installation_id: int | None) -> dict[str, str] | None:
        """What the installation was granted: from the last installation token's answer or a
        payload's installation object, else ``GET /app/installations/{id}`` as the App; cached
        for PERMISSIONS_TTL. None when Moko acts with a personal token, whose answers say for
        themselves."""
        if installation_id is None or self._auth is None:
            return None
        cached = self._permissions.get(installation_id)
        if cached is not None:
            return cached
        # One question at a time per installation, not for all of them: when the cached
        # permissions of many installations run out together, their reads go side by side.
        lock = self._permissions_locks.setdefault(installation_id, asyncio.Lock())
        if lock.locked():
            give_back_turn()  # another delivery asks (GitHub may answer late): take other work
        try:
            async with lock:
                cached = self._permissions.get(installation_id)
                if cached is None:
                    installation = await self.app_client().getitem(
                        "/app/installations/{installation_id}", {"installation_id": installation_id}
                    )
                    cached = {str(k): str(v) for k, v in (installation.get("permissions") or {}).items()}
                    self._permissions[installation_id] = cached
        finally:
            if not lock.locked() and not lock._waiters:  # type: ignore[attr-defined]
                self._permissions_locks.pop(installation_id, None)
        return cached

    async def org_installation_id(self, org: str) -> int:
        """The App's installation on `org` (TOKEN_INSTALLATION when only a personal token is set)."""
        if self._auth is None and self._token is not None:
            return TOKEN_INSTALLATION
        installation = await self.app_client().getitem("/orgs/{org}/installation", {"org": org})
        if isinstance(installation.get("permissions"), dict):
            self.remember_permissions(int(installation["id"]), installation["permissions"])
        return int(installation["id"])

    async def installation_ids(self) -> list[int]:
        """Every installation of the App, all pages."""
        if self._auth is None and self._token is not None:
            return [TOKEN_INSTALLATION]
        client = self.app_client()
        return [int(item["id"]) async for item in client.getiter("/app/installations?per_page=100")]

    def secrets(self) -> list[str]:
        """Every live secret (private key, App JWT, installation tokens, personal token), for redaction."""
        secrets = self._auth.secrets() if self._auth is not None else []
        if self._token is not None:
            secrets.append(self._token)
        return secrets
