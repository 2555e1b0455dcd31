"""Fixtures for the GitHub client's tests: an App pointed at the fake GitHub, with injected time.

Loaded as a pytest plugin (tests/conftest.py), so test modules share them without imports
that would shadow the fixtures' names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bot.github_app import GitHubApp
from bot.github_client import ClientOptions

INSTALLATION = 41
ORG = "octo-org"


class FakeTime:
    """Monotonic and wall clocks that move only when Moko sleeps; every sleep is recorded."""

    def __init__(self) -> None:
        self.monotonic = 1_000.0
        self.wall = time.time()
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.monotonic

    def wall_clock(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


def make_app(fake: Any, session: aiohttp.ClientSession, clock: FakeTime, **options: Any) -> GitHubApp:
    return GitHubApp(
        session=session,
        api_url=fake.url,
        graphql_url=fake.graphql_url,
        app_id=str(fake.app_id),
        private_key=fake.private_key_pem,
        options=ClientOptions(**options),
        clock=clock.clock,
        wall_clock=clock.wall_clock,
        sleep=clock.sleep,
        random=lambda: 1.0,  # the top of the jitter range, so delays are exact
    )


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake(fake_github: Any) -> Any:
    fake_github.add_installation(INSTALLATION, ORG)
    fake_github.add_repo(ORG, "widgets")
    return fake_github


@pytest.fixture
def github(fake: Any, session: aiohttp.ClientSession, clock: FakeTime) -> GitHubApp:
    return make_app(fake, session, clock)
