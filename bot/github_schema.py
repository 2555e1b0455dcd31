"""Which GraphQL fields the GitHub server has: introspection of a few types, once per process.

An older GitHub Enterprise Server lacks the newer fields (``lockBranch``,
``requireLastPushApproval``, …), and a GraphQL query naming one field the server does not
have fails whole. So before the first query built from them, Moko asks the server, by
introspection, which fields the types it queries have; the answer is kept for the process's
life, per GraphQL URL (a server's schema changes only with an upgrade, which restarts Moko's
view of it at the next start).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bot.github_protocol import GitHub
from bot.logs import get_logger

log = get_logger("moko.github")

_TYPE_QUERY = '%s: __type(name: "%s") { name fields(includeDeprecated: true) { name } }'


@dataclass(frozen=True)
class ServerSchema:
    """The fields of the introspected types, as the server has them."""

    url: str
    fields: Mapping[str, frozenset[str]]  # type name -> its field names

    def has(self, type_name: str, field: str) -> bool:
        """Whether the server's ``type_name`` has ``field`` (False for a type not asked about)."""
        return field in self.fields.get(type_name, frozenset())

    def lacks(self, type_name: str, fields: Iterable[str]) -> list[str]:
        return [field for field in fields if not self.has(type_name, field)]


_known: dict[tuple[str, tuple[str, ...]], ServerSchema] = {}
_asking: dict[tuple[str, tuple[str, ...]], asyncio.Lock] = {}


def forget() -> None:
    """Forget every schema asked (as a new process would)."""
    _known.clear()
    _asking.clear()


def known_schema(graphql_url: str, types: Iterable[str]) -> ServerSchema | None:
    """The schema if it was already asked for in this process (costs nothing), else None."""
    return _known.get((graphql_url, tuple(sorted(types))))


async def server_schema(gh: GitHub, types: Iterable[str]) -> ServerSchema:
    """The server's fields of ``types``: one introspection query per process and GraphQL URL;
    callers that ask at once share it."""
    key = (str(gh.graphql_url), tuple(sorted(types)))
    found = _known.get(key)
    if found is not None:
        return found
    lock = _asking.setdefault(key, asyncio.Lock())
    async with lock:
        found = _known.get(key)
        if found is None:
            found = await _introspect(gh, key[0], key[1])
            _known[key] = found
    return found


async def _introspect(gh: GitHub, url: str, types: tuple[str, ...]) -> ServerSchema:
    aliases = " ".join(_TYPE_QUERY % (f"t{i}", name) for i, name in enumerate(types))
    data = await gh.graphql(f"query MokoSchema {{ {aliases} }}")
    fields: dict[str, frozenset[str]] = {}
    for i, name in enumerate(types):
        described = data.get(f"t{i}") or {}
        fields[name] = frozenset(str(f["name"]) for f in described.get("fields") or ())
    log.info("github_schema_read", url=url, types=list(types))
    return ServerSchema(url, fields)
