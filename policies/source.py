"""Where a repository's policy comes from: the organization's `.github` repository, the
repository's own overrides, or the built-in default; cached per installation.

Files are parsed in a worker thread, never on the event loop, and each parsed file, valid or
invalid, is kept by its blob SHA: the same file is parsed once, however many events or
repositories read it (the loader's limits bound what one parse costs)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache, TTLCache
from gidgethub import BadRequest

from bot.github_protocol import GitHub
from bot.metrics import POLICY_FILES_PARSED, labelled
from policies.defaults import DEFAULT_POLICY
from policies.loader import (
    LoadedFile,
    PolicyError,
    PolicyProblem,
    load_policy_file,
    merge_loaded,
    policy_of,
)
from policies.model import Policy

POLICY_REPO = ".github"
POLICY_PATH = ".github/moko.yml"
# Other replicas do not see the push that changes the file; the TTL bounds how stale they get.
CACHE_TTL_SECONDS = 300.0
PARSED_CACHE_SIZE = 1024
# Parsing is CPU work: two threads at most, so a burst of new files cannot take every core.
PARSER_THREADS = 2
# The contents API's "1 MB": past it, a file comes with no content.
CONTENT_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class ResolvedPolicy:
    """The policy for one repository, and the warnings its overrides raised."""

    policy: Policy
    warnings: tuple[PolicyProblem, ...] = ()


@dataclass(frozen=True)
class PolicyFile:
    """A policy file as read from GitHub: its bytes and its blob SHA (None when not known),
    or, when it cannot be a policy file at all, the problem that says so."""

    data: bytes
    sha: str | None = None
    problem: str | None = None

    def identity(self) -> str:
        """Which file this is: its blob SHA, else a hash of what was read."""
        if self.sha is not None:
            return self.sha
        return "sha256:" + hashlib.sha256(self.data + (self.problem or "").encode()).hexdigest()


def too_large(size: object, sha: str | None) -> PolicyFile:
    """A file GitHub gives no content of (over 1 MB): invalid, never an empty file."""
    return PolicyFile(b"", sha, f"the file is too large ({size} bytes): GitHub gives no content over 1 MB")


def _file_of(content: Mapping[str, Any]) -> PolicyFile:
    sha = content.get("sha") if isinstance(content.get("sha"), str) else None
    if content.get("type") not in (None, "file"):
        return PolicyFile(b"", sha, f"{POLICY_PATH} is not a file")
    if content.get("encoding") == "none":
        # Over 1 MB the contents API answers with no content at all: never an empty file.
        return too_large(content.get("size"), sha)
    try:
        return PolicyFile(base64.b64decode(content.get("content") or ""), sha)
    except (binascii.Error, ValueError):
        return PolicyFile(b"", sha, "GitHub's answer could not be decoded")


async def read_file(gh: GitHub, owner: str, repo: str, path: str, ref: str | None = None) -> PolicyFile | None:
    """A file from the default branch (or from ``ref``, e.g. a commit SHA), or None when there is none."""
    url_vars = {"owner": owner, "repo": repo, "path": path}
    try:
        if ref is None:
            content = await gh.getitem("/repos/{owner}/{repo}/contents/{path}", url_vars=url_vars)
        else:
            content = await gh.getitem("/repos/{owner}/{repo}/contents/{path}{?ref}", url_vars={**url_vars, "ref": ref})
    except BadRequest as exc:
        if exc.status_code == 404:
            return None
        raise
    if isinstance(content, list):  # a directory of that name
        return None
    return _file_of(content)


@functools.cache
def _parser() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=PARSER_THREADS, thread_name_prefix="moko-policy")


def _load(file: PolicyFile, source: str) -> LoadedFile:
    if file.problem is not None:
        return LoadedFile(None, {}, (PolicyProblem(1, file.problem, source),), source)
    return load_policy_file(file.data, source)


class ParsedFiles:
    """Parsed policy files by blob SHA (a file without one is parsed every time)."""

    def __init__(self, maxsize: int = PARSED_CACHE_SIZE) -> None:
        self._files: LRUCache[str, LoadedFile] = LRUCache(maxsize=maxsize)
        # Parses under way: deliveries processed at once that read the same file wait for one.
        self._parsing: dict[str, asyncio.Future[LoadedFile]] = {}

    async def load(self, file: PolicyFile, source: str) -> LoadedFile:
        if file.sha is None:
            return await self._parse(file, source)
        cached = self._files.get(file.sha)
        if cached is None:
            parsing = self._parsing.get(file.sha)
            if parsing is None:
                parsing = asyncio.ensure_future(self._parse_and_keep(file, file.sha, source))
                self._parsing[file.sha] = parsing
            # Shielded: one waiter cancelled does not cancel the parse the others wait for.
            cached = await asyncio.shield(parsing)
        return cached.with_source(source)

    async def _parse_and_keep(self, file: PolicyFile, sha: str, source: str) -> LoadedFile:
        # Kept before the parse stops being "under way", so no one in between parses it again.
        try:
            loaded = self._files[sha] = await self._parse(file, source)
            return loaded
        finally:
            self._parsing.pop(sha, None)

    @staticmethod
    async def _parse(file: PolicyFile, source: str) -> LoadedFile:
        loaded = await asyncio.get_running_loop().run_in_executor(_parser(), _load, file, source)
        labelled(POLICY_FILES_PARSED, "valid" if loaded.valid else "invalid").inc()
        return loaded


class PolicySource:
    """Reads and caches organization policies; invalid files raise PolicyError (nothing applies)."""

    def __init__(
        self, *, ttl: float = CACHE_TTL_SECONDS, maxsize: int = 4096, parsed: ParsedFiles | None = None
    ) -> None:
        # An invalid file is kept as its error: it is not read again at every event.
        self._org: TTLCache[tuple[int | None, str], Policy | PolicyError] = TTLCache(maxsize=maxsize, ttl=ttl)
        self.parsed = parsed or ParsedFiles()

    def invalidate(self, installation: int | None, org: str) -> None:
        self._org.pop((installation, org.lower()), None)

    async def org_policy(self, gh: GitHub, installation: int | None, org: str) -> Policy:
        key = (installation, org.lower())
        cached = self._org.get(key)
        if cached is None:
            cached = await self._read_org_policy(gh, org)
            self._org[key] = cached
        if isinstance(cached, PolicyError):
            raise PolicyError(cached.problems, cached.source, cached.file_id)
        return cached

    async def _read_org_policy(self, gh: GitHub, org: str) -> Policy | PolicyError:
        file = await read_file(gh, org, POLICY_REPO, POLICY_PATH)
        if file is None:
            return DEFAULT_POLICY
        try:
            return policy_of(await self.parsed.load(file, f"{org}/{POLICY_REPO}/{POLICY_PATH}"))
        except PolicyError as exc:
            exc.file_id = file.identity()
            return exc

    async def merge_repository_file(self, policy: Policy, file: PolicyFile, org: str, repo: str) -> ResolvedPolicy:
        """The organization's policy with a repository's own file applied (PolicyError when
        the file is invalid)."""
        loaded = await self.parsed.load(file, f"{org}/{repo}/{POLICY_PATH}")
        merged, problems = merge_loaded(policy, loaded)
        return ResolvedPolicy(merged, tuple(problems))

    async def policy_for(self, gh: GitHub, installation: int | None, org: str, repo: str) -> ResolvedPolicy:
        """The organization's policy with the repository's allowed overrides applied."""
        policy = await self.org_policy(gh, installation, org)
        if not policy.overrides or repo.lower() == POLICY_REPO:
            return ResolvedPolicy(policy)
        file = await read_file(gh, org, repo, POLICY_PATH)
        if file is None:
            return ResolvedPolicy(policy)
        return await self.merge_repository_file(policy, file, org, repo)
