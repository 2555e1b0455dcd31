"""GitHub App credentials: the App JWT and installation access tokens, cached and renewed before expiry."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cachetools import TLRUCache
from gidgethub.abc import GitHubAPI
from gidgethub.apps import get_installation_access_token, get_jwt

from bot.logs import get_logger
from bot.redact import REDACTED, REDACTOR
from bot.turns import give_back_turn

log = get_logger("moko.github")

# GitHub accepts App JWTs for at most 10 minutes; gidgethub backdates them by one.
APP_JWT_LIFETIME = 9 * 60
APP_JWT_RENEW_AFTER = 7 * 60
# Renew an installation token this long before its expires_at (tokens live an hour).
TOKEN_RENEW_BEFORE = 5 * 60
MAX_CACHED_INSTALLATIONS = 10_000


@dataclass(frozen=True)
class InstallationToken:
    token: str = field(repr=False)
    expires_at: float  # epoch seconds
    renew_at: float  # epoch seconds


class AppAuth:
    """The App's identity: one JWT at a time, one cached token per installation."""

    def __init__(
        self,
        app_id: str,
        private_key: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.app_id = app_id
        self._private_key = private_key
        self._clock = clock
        self._wall_clock = wall_clock
        self._jwt: str | None = None
        self._jwt_renew_at = -math.inf
        self._tokens: TLRUCache[int, InstallationToken] = TLRUCache(
            maxsize=MAX_CACHED_INSTALLATIONS,
            ttu=lambda _key, value, _now: value.renew_at,
            timer=wall_clock,
        )
        # Tokens still valid on GitHub (some already replaced in the cache), for redaction.
        self._live: TLRUCache[str, float] = TLRUCache(
            maxsize=4 * MAX_CACHED_INSTALLATIONS,
            ttu=lambda _key, expires_at, _now: expires_at,
            timer=wall_clock,
        )
        self._locks: dict[int, asyncio.Lock] = {}
        # Told the permissions each new token carries (GitHub's answer lists them), so knowing
        # what the installation may read costs no request of its own.
        self.on_permissions: Callable[[int, dict[str, str]], None] | None = None
        REDACTOR.add(private_key)

    @property
    def private_key(self) -> str:
        return self._private_key

    def app_jwt(self) -> str:
        """The App's JWT (RS256, by gidgethub), renewed well before GitHub's 10-minute limit."""
        if self._jwt is None or self._clock() >= self._jwt_renew_at:
            self._jwt = get_jwt(
                app_id=self.app_id, private_key=self._private_key, expiration=APP_JWT_LIFETIME
            )
            self._jwt_renew_at = self._clock() + APP_JWT_RENEW_AFTER
            _learn_secret(self._jwt)
        return self._jwt

    async def installation_token(
        self,
        installation_id: int,
        app_client: Callable[[], GitHubAPI],
        *,
        refused: str | None = None,
    ) -> str:
        """A cached token; concurrent callers for one installation share one token request.

        `refused`: a token GitHub just answered 401 to; it is replaced, once, however
        many requests saw it refused.
        """
        cached = self._tokens.get(installation_id)
        if cached is not None and cached.token != refused:
            return cached.token
        lock = self._locks.setdefault(installation_id, asyncio.Lock())
        if lock.locked():
            # Another delivery asks for this installation's token (GitHub may answer late):
            # the worker takes other installations' work meanwhile.
            give_back_turn()
        async with lock:
            cached = self._tokens.get(installation_id)
            if cached is not None and cached.token != refused:
                return cached.token
            answer = await get_installation_access_token(
                app_client(),
                installation_id=str(installation_id),
                app_id=self.app_id,
                private_key=self._private_key,
            )
            issued = self._remember(installation_id, answer["token"], answer["expires_at"])
            if self.on_permissions is not None and isinstance(answer.get("permissions"), dict):
                self.on_permissions(installation_id, answer["permissions"])
            log.info(
                "github_installation_token",
                installation=installation_id,
                expires_in=round(issued.expires_at - self._wall_clock()),
            )
            return issued.token

    def _remember(self, installation_id: int, token: str, expires_at: str) -> InstallationToken:
        _learn_secret(token)
        now = self._wall_clock()
        moment = datetime.fromisoformat(expires_at)
        expires = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
        # Renew 5 minutes ahead, or halfway through a token that lives less than 10.
        renew_at = expires - min(TOKEN_RENEW_BEFORE, max(0.0, expires - now) / 2)
        issued = InstallationToken(token=token, expires_at=expires, renew_at=renew_at)
        self._tokens[installation_id] = issued
        self._live[token] = expires
        return issued

    def secrets(self) -> list[str]:
        self._live.expire()
        secrets = [self._private_key, *self._live.keys()]
        if self._jwt is not None:
            secrets.append(self._jwt)
        return secrets


def _learn_secret(value: str) -> None:
    """Teach the process-wide redactor a new credential, unless its shape already gives it away.

    GitHub's tokens (ghs_…) and JWTs (eyJ…) are redacted by shape; remembering each of
    them too would grow the redactor by one string per installation per hour, forever.
    """
    if REDACTOR.text(value) != REDACTED:
        REDACTOR.add(value)
