"""Moko's one GitHub client: gidgethub with timeouts, retries, rate-limit handling and a per-installation ETag cache.

Every attempt is admitted by the installation's shared `InstallationLimits` (bounded
in-flight requests, one mutating request at a time, bulk spacing, primary-limit
pacing, pauses after a secondary limit). Inside `_request`, 5xx answers,
connection errors and timeouts are retried with exponential backoff and full
jitter on the raw status, before gidgethub would turn a 5xx into `GitHubBroken`.
A POST is not idempotent: after a failure that may have reached GitHub (a timeout, a
connection dropped once the request was out, 500/502/504) it is sent again only when
the caller gave an `already_done` check and the check finds no effect; what the check
finds is answered instead.
Rate-limit answers (403/429) reach gidgethub's `handle_rate_limit_error` hook,
which waits as GitHub asks and retries. A 304 is answered from gidgethub's
cache, and the budget is read from each answer's headers, so it costs nothing.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import gidgethub
import gidgethub.aiohttp
from gidgethub import BadGraphQLRequest, HTTPException, QueryError

from bot import gidgethub_speedups
from bot.github_limits import (
    MUTATING_METHODS,
    Admission,
    InstallationLimits,
    RateLimitSnapshot,
    Send,
)
from bot.github_protocol import AlreadyDone
from bot.logs import get_logger
from bot.metrics import (
    GITHUB_REQUEST_SECONDS,
    GITHUB_REQUESTS,
    GITHUB_RETRIES,
    GITHUB_WAIT_SECONDS,
    labelled,
)
from bot.turns import give_back_if_late, give_back_turn

gidgethub_speedups.install()

__all__ = [
    "ClientOptions",
    "GitHubUnavailable",
    "MokoGitHubAPI",
    "RateLimitSnapshot",
    "Timing",
]

log = get_logger("moko.github")

# x-ratelimit-reset comes from GitHub's clock; wait a little past it.
RESET_MARGIN = 1.0
_GRAPHQL_MUTATION = re.compile(r"\s*mutation\b")
# Answers after which a request may have taken effect on GitHub (a gateway gave up waiting,
# or GitHub failed midway); 503 and the others mean it was not handled.
_MAYBE_APPLIED_STATUSES = frozenset({500, 502, 504})
# POSTs that only mint a credential: sending one twice does no harm.
_REPEATABLE_POSTS = (re.compile(r"/app/installations/\d+/access_tokens$"),)


@dataclass(frozen=True)
class ClientOptions:
    """How the GitHub client behaves under limits and faults."""

    max_attempts: int = 4  # total tries for 5xx / connection errors / timeouts, and for rate-limit waits
    base_delay: float = 0.5  # seconds; full jitter: uniform(0, base_delay * 2**(attempt-1)), capped
    max_delay: float = 30.0
    request_timeout: float = 10.0  # every request
    rate_limit_reserve: float = 0.10  # fraction of the limit below which requests are paced
    max_in_flight: int = 8  # per installation
    # An answer not in after this long (GitHub's usual ones take well under a second) frees the
    # worker waiting on it for other installations' deliveries.
    late_answer: float = 1.0
    bulk_write_interval: float = 1.0  # min seconds between mutating requests during bulk work
    secondary_min_wait: float = 60.0
    etag_cache_size: int = 5000  # answers kept for conditional GETs, all installations together


@dataclass(frozen=True)
class Timing:
    """The clocks, sleep and randomness the client uses; injectable so tests run instantly."""

    clock: Callable[[], float] = time.monotonic  # intervals
    wall_clock: Callable[[], float] = time.time  # GitHub's epoch-based x-ratelimit-reset
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    random: Callable[[], float] = random.random


DEFAULT_OPTIONS = ClientOptions()
DEFAULT_TIMING = Timing()


class GitHubUnavailable(gidgethub.GitHubException):
    """GitHub could not be reached (connection errors or timeouts) in any attempt."""


# The admission won in manage_rate_limit, handed to the _request that follows it in
# the same task (gidgethub calls one right after the other, with no await between).
_ADMISSION: ContextVar[Admission | None] = ContextVar("moko_github_admission", default=None)
# The last answer's headers in this task, for GraphQL errors (gidgethub drops them).
_LAST_HEADERS: ContextVar[Mapping[str, str] | None] = ContextVar("moko_github_headers", default=None)
# The already_done check of the POST in progress in this task, for its _request.
_ALREADY_DONE: ContextVar[AlreadyDone | None] = ContextVar("moko_github_already_done", default=None)


class MokoGitHubAPI(gidgethub.aiohttp.GitHubAPI):
    """One per unit of work; shares per-installation state (limiter, write lock, ETag cache) held by GitHubApp."""

    requests_sent: int  # HTTP requests actually sent by this client (retries included)
    sent_by_resource: dict[str, int]  # the same, by rate-limit resource (core, graphql, search)
    graphql_points: int  # GraphQL points charged, as each answer's rateLimit { cost } said
    graphql_rate: RateLimitSnapshot | None  # the graphql budget as the last rateLimit said
    graphql_url: str

    def __init__(
        self,
        session: aiohttp.ClientSession,
        requester: str,
        *,
        limits: InstallationLimits,
        base_url: str,
        graphql_url: str,
        options: ClientOptions = DEFAULT_OPTIONS,
        timing: Timing = DEFAULT_TIMING,
        bulk: bool = False,
        oauth_token: str | None = None,
        app_id: str | None = None,
        private_key: str | None = None,
        token_source: Callable[[str | None], Awaitable[str]] | None = None,
        app_jwt_source: Callable[[], str] | None = None,
        on_send: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            session,
            requester,
            oauth_token=oauth_token,
            app_id=app_id,
            private_key=private_key,
            cache=limits.etag_cache,
            base_url=base_url,
        )
        self.graphql_url = graphql_url
        self.bulk = bulk
        self.requests_sent = 0
        self.sent_by_resource = {}
        self.graphql_points = 0
        self.graphql_rate = None
        self._limits = limits
        self._options = options
        self._timing = timing
        self._token_source = token_source
        self._app_jwt_source = app_jwt_source
        self._on_send = on_send
        self._stale_auth: set[str] = set()

    # -- gidgethub hooks ---------------------------------------------------------------

    async def sleep(self, seconds: float) -> None:
        await self._timing.sleep(seconds)

    def _get_app_jwt(self) -> str | None:
        # One App JWT for the whole process (GitHubApp's), so it can be named for redaction.
        if self._app_jwt_source is not None:
            return self._app_jwt_source()
        return super()._get_app_jwt()

    async def manage_rate_limit(self, *, method: str, url: str) -> None:
        """Before each attempt gidgethub makes: wait for this installation's admission."""
        _ADMISSION.set(await self._admit(self._describe(method, url, b"")))

    async def handle_rate_limit_error(
        self, *, method: str, url: str, exception: HTTPException, attempt: int
    ) -> bool:
        """Primary and secondary rate limits: wait as GitHub asks, then have gidgethub retry."""
        status = int(exception.status_code)
        wait = self._rate_limit_wait(status, exception.headers, str(exception), attempt)
        if wait is None or attempt >= self._options.max_attempts:
            return False
        reason, delay = wait
        if reason == "secondary_rate_limit":
            # The limit holds for the whole installation: its other requests wait too.
            # (An exhausted primary budget is already known to them from the answer's headers.)
            self._limits.pause(delay)
        self._log_retry(reason, self._describe(method, url, b""), attempt, delay, status=status)
        give_back_turn()  # a rate limit can last minutes: other installations' work goes on
        await self._timing.sleep(delay)
        return True

    async def _request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes = b""
    ) -> tuple[int, Mapping[str, str], bytes]:
        send = self._describe(method, url, body)
        admission = _ADMISSION.get()
        _ADMISSION.set(None)
        if admission is None:  # not through _make_request (GraphQL): admit here
            admission = await self._admit(send)
        # Only a POST uses it: the check's own reads see it too, and ignore it.
        already_done = _ALREADY_DONE.get() if method == "POST" else None
        try:
            return await self._send_with_retries(
                send, url, self._current_auth(headers), body, already_done
            )
        finally:
            admission.release()

    async def post(
        self,
        url: str,
        url_vars: Mapping[str, Any] | None = None,
        *,
        data: Any,
        already_done: AlreadyDone | None = None,
        **kwargs: Any,
    ) -> Any:
        """gidgethub's POST; ``already_done`` makes it safe to send again after a failure
        that may have reached GitHub (without it, such a POST is not retried)."""
        check = _ALREADY_DONE.set(already_done)
        try:
            return await super().post(url, url_vars or {}, data=data, **kwargs)
        finally:
            _ALREADY_DONE.reset(check)

    # -- GraphQL -----------------------------------------------------------------------

    async def graphql(self, query: str, *, endpoint: str | None = None, **variables: Any) -> Any:
        """Query GitHub's GraphQL API at `graphql_url`, with the same limits and retries as REST."""
        endpoint = endpoint or self.graphql_url
        attempt = 0
        while True:
            attempt += 1
            try:
                data = await super().graphql(query, endpoint=endpoint, **variables)
            except (BadGraphQLRequest, QueryError) as exc:
                limited = _graphql_rate_limit(exc, _LAST_HEADERS.get() or {})
                if limited is None or not await self.handle_rate_limit_error(
                    method="POST", url=endpoint, exception=limited, attempt=attempt
                ):
                    raise
            else:
                self._record_graphql_cost(data)
                return data

    def _record_graphql_cost(self, data: Any) -> None:
        """A query that asks for ``rateLimit`` learns its own cost; one without it costs at
        least one point (GitHub's minimum), which is what is counted then."""
        rate = data.get("rateLimit") if isinstance(data, dict) else None
        try:
            self.graphql_points += int(rate["cost"]) if rate else 1
            if rate:
                reset = datetime.fromisoformat(str(rate["resetAt"]).replace("Z", "+00:00")).timestamp()
                self.graphql_rate = RateLimitSnapshot("graphql", int(rate["limit"]), int(rate["remaining"]), reset)
        except (KeyError, TypeError, ValueError):
            pass  # a partial rateLimit: the cost is still counted above when it was there

    # -- internals ---------------------------------------------------------------------

    def _describe(self, method: str, url: str, body: bytes) -> Send:
        path = urlsplit(url).path
        if url.rstrip("/") == self.graphql_url.rstrip("/"):
            resource, write = "graphql", _is_graphql_mutation(body)
        else:
            resource = "search" if "/search/" in path else "core"
            write = method in MUTATING_METHODS
        return Send(method=method, path=path, resource=resource, write=write, bulk=self.bulk)

    async def _admit(self, send: Send) -> Admission:
        await self._refresh_token()
        return await self._limits.admit(send)

    async def _refresh_token(self, refused: str | None = None) -> None:
        """Installation tokens are renewed before they expire, even for a long-lived client."""
        if self._token_source is None:
            return
        token = await self._token_source(refused)
        if token != self.oauth_token:
            if self.oauth_token is not None:
                self._stale_auth.add(f"token {self.oauth_token}")
            self.oauth_token = token

    def _installation_token_in(self, headers: Mapping[str, str]) -> str | None:
        """The installation token these headers carry, if it is one this client was given."""
        authorization = headers.get("authorization")
        if self._token_source is None or authorization is None:
            return None
        if authorization == f"token {self.oauth_token}" or authorization in self._stale_auth:
            return authorization.removeprefix("token ")
        return None

    def _current_auth(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        # gidgethub wrote the headers before manage_rate_limit could renew the token.
        if headers.get("authorization") in self._stale_auth:
            return {**headers, "authorization": f"token {self.oauth_token}"}
        return headers

    def _repeatable(self, send: Send) -> bool:
        """Whether sending the request twice is harmless (every method but POST; GraphQL queries)."""
        if send.method != "POST":
            return True
        if send.resource == "graphql":
            return not send.write
        return any(pattern.search(send.path) for pattern in _REPEATABLE_POSTS)

    async def _send_with_retries(
        self,
        send: Send,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        already_done: AlreadyDone | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        attempt = 1
        token_renewed = False
        repeatable = self._repeatable(send)
        while True:
            status: int | None = None
            failure: BaseException | None = None
            answer: tuple[int, Mapping[str, str], bytes] | None = None
            maybe_applied = True
            try:
                answer = await self._send_once(send, url, headers, body)
            except TimeoutError as exc:
                reason, failure = "timeout", exc
            except aiohttp.ClientConnectorError as exc:
                # No connection was made: the request never left.
                reason, failure, maybe_applied = "connection_error", exc, False
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                reason, failure = "connection_error", exc
            else:
                status = answer[0]
                refused = self._installation_token_in(headers) if status == 401 else None
                if refused is not None and not token_renewed:
                    # Revoked or expired early: one new token, one more try.
                    token_renewed = True
                    self._log_retry("token_refused", send, attempt, 0.0, status=status)
                    await self._refresh_token(refused=refused)
                    headers = self._current_auth(headers)
                    continue
                if status < 500 or attempt >= self._options.max_attempts:
                    return answer  # gidgethub turns a last 5xx into GitHubBroken
                reason = "server_error"
                maybe_applied = status in _MAYBE_APPLIED_STATUSES
            unsafe = maybe_applied and not repeatable
            if unsafe and already_done is None:
                # Sending it again could do it twice (a second comment, a second issue).
                self._log_not_retried(reason, send, attempt, status=status)
                if answer is not None:
                    return answer
                raise GitHubUnavailable(
                    f"{send.method} {send.path}: {reason}; not sent again, as it may have "
                    "reached GitHub"
                ) from failure
            if attempt >= self._options.max_attempts:
                raise GitHubUnavailable(
                    f"{send.method} {send.path}: {reason} in all {attempt} attempts"
                ) from failure
            delay = self._backoff(attempt)
            self._log_retry(reason, send, attempt, delay, status=status)
            await self._timing.sleep(delay)
            if unsafe and already_done is not None:
                found = await already_done()
                if found is not None:
                    log.info(
                        "github_post_already_done",
                        method=send.method,
                        path=send.path,
                        installation=self._limits.label,
                        attempt=attempt,
                    )
                    return 200, {"content-type": "application/json"}, json.dumps(found).encode()
            attempt += 1
            await self._limits.wait_turn(send, attempt=attempt)

    async def _send_once(
        self, send: Send, url: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Mapping[str, str], bytes]:
        started = self._timing.clock()
        outcome = "error"
        late = give_back_if_late(self._options.late_answer)
        try:
            async with self._session.request(
                send.method,
                url,
                headers=headers,
                data=body,
                timeout=aiohttp.ClientTimeout(total=self._options.request_timeout),
            ) as response:
                answer = response.status, response.headers, await response.read()
            outcome = str(answer[0])
        except TimeoutError:
            outcome = "timeout"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            if late is not None:
                late.cancel()
            self.requests_sent += 1
            self.sent_by_resource[send.resource] = self.sent_by_resource.get(send.resource, 0) + 1
            if self._on_send is not None:
                self._on_send()
            labelled(GITHUB_REQUESTS, send.method, outcome).inc()
            labelled(GITHUB_REQUEST_SECONDS, send.method).observe(self._timing.clock() - started)
            if send.write:
                self._limits.write_sent()
        self._limits.record_answer(send, answer[1])
        _LAST_HEADERS.set(answer[1])
        return answer

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform(0, min(max_delay, base_delay * 2**(attempt-1)))."""
        ceiling = min(self._options.max_delay, self._options.base_delay * 2 ** (attempt - 1))
        return ceiling * self._timing.random()

    def _rate_limit_wait(
        self, status: int, headers: Mapping[str, str], message: str, attempt: int
    ) -> tuple[str, float] | None:
        """GitHub's documented order: retry-after; else an exhausted budget's reset; else >= 60 s, growing."""
        if status not in (403, 429):
            return None
        now = self._timing.wall_clock()
        retry_after = _retry_after_seconds(headers.get("retry-after"), now)
        if retry_after is not None:
            return "secondary_rate_limit", retry_after
        reset = headers.get("x-ratelimit-reset")
        if headers.get("x-ratelimit-remaining") == "0" and reset is not None:
            try:
                return "primary_rate_limit", max(0.0, float(reset) - now) + RESET_MARGIN
            except ValueError:
                pass
        text = message.lower()
        if status == 429 or "secondary rate limit" in text or "abuse" in text:
            return "secondary_rate_limit", self._options.secondary_min_wait * 2 ** (attempt - 1)
        return None

    def _attempt_fields(self, reason: str, send: Send, attempt: int, status: int | None) -> dict[str, Any]:
        """What a log line about sending a request again (or not) says of it."""
        return {
            "reason": reason, "method": send.method, "path": send.path,
            "installation": self._limits.label, "status": status, "attempt": attempt,
        }

    def _log_not_retried(self, reason: str, send: Send, attempt: int, *, status: int | None) -> None:
        log.warning("github_not_retried", **self._attempt_fields(reason, send, attempt, status))

    def _log_retry(
        self, reason: str, send: Send, attempt: int, delay: float, *, status: int | None
    ) -> None:
        log.info("github_retry", **self._attempt_fields(reason, send, attempt, status), delay=round(delay, 3))
        GITHUB_RETRIES.labels(reason).inc()
        GITHUB_WAIT_SECONDS.labels(reason).inc(delay)


def _is_graphql_mutation(body: bytes) -> bool:
    try:
        query = json.loads(body).get("query", "")
    except (ValueError, AttributeError):
        return False
    return isinstance(query, str) and bool(_GRAPHQL_MUTATION.match(query))


def _retry_after_seconds(value: str | None, now: float) -> float | None:
    """retry-after is seconds (what GitHub sends) or an HTTP date."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def _graphql_rate_limit(
    exc: BadGraphQLRequest | QueryError, headers: Mapping[str, str]
) -> HTTPException | None:
    """A GraphQL error that is a rate limit, as the HTTPException the REST hook understands."""
    if isinstance(exc, BadGraphQLRequest):
        if int(exc.status_code) in (403, 429):
            return HTTPException(exc.status_code, str(exc), headers=headers)
        return None
    errors = exc.response.get("errors") if isinstance(exc.response, dict) else None
    if any(isinstance(e, dict) and e.get("type") == "RATE_LIMITED" for e in errors or ()):
        # 200 with RATE_LIMITED: the budget's headers say whether to wait for the reset.
        return HTTPException(http.HTTPStatus.TOO_MANY_REQUESTS, str(exc), headers=headers)
    return None
