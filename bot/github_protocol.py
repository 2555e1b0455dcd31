"""What Moko calls on an installation's GitHub client: the type that handlers and policies name.

The client is bot.github_client.MokoGitHubAPI (gidgethub underneath); code that reads or writes
GitHub names this Protocol instead, which holds only the calls Moko makes and the arguments it
passes (gidgethub's accept, jwt and header arguments are never used outside bot/), so that
a new use of the client shows here first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

# A POST's check for its own effect: the resource an earlier try created, or None (see
# MokoGitHubAPI.post).
AlreadyDone = Callable[[], Awaitable[Any]]


class GitHub(Protocol):
    """An installation's REST and GraphQL client, with the client's limits and retries."""

    # Where its GraphQL queries go (GitHub Enterprise Server has its own); a schema read from a
    # server is kept by this URL.
    graphql_url: str

    async def getitem(self, url: str, url_vars: Mapping[str, Any] | None = ...) -> Any: ...

    def getiter(self, url: str, url_vars: Mapping[str, Any] | None = ...) -> AsyncIterator[Any]: ...

    async def post(
        self, url: str, url_vars: Mapping[str, Any] | None = ..., *, data: Any, already_done: AlreadyDone | None = ...
    ) -> Any: ...

    async def patch(self, url: str, url_vars: Mapping[str, Any] | None = ..., *, data: Any) -> Any: ...

    async def put(self, url: str, url_vars: Mapping[str, Any] | None = ..., *, data: Any) -> Any: ...

    async def delete(self, url: str, url_vars: Mapping[str, Any] | None = ...) -> None: ...

    async def graphql(self, query: str, **variables: Any) -> Any: ...
