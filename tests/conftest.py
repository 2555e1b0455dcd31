"""Shared fixtures: the fake GitHub, PostgreSQL databases, and a Moko pointed at the fake."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bot import github_schema
from policies import branch_cleanup
from tests.support.harness import RunningMoko, moko_environ, run_moko

pytest_plugins = ("tests.fakegithub.plugin", "tests.pg", "tests.support.github_client")


@pytest_asyncio.fixture
async def env(fake_github, tmp_path) -> dict[str, str]:
    """Moko's environment: the fake GitHub, a fresh SQLite file."""
    return moko_environ(fake_github, f"sqlite:///{tmp_path}/moko.db")


@pytest_asyncio.fixture
async def moko(env) -> AsyncIterator[RunningMoko]:
    """Moko serving on a loopback port with its real handlers."""
    async with run_moko(env) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_server_schemas():
    """Each test's fake GitHub is a new server (a port may come back): forget the schemas
    asked of earlier ones, and what kept their old branches, as a new process would."""
    github_schema.forget()
    branch_cleanup.forget()
    yield
    github_schema.forget()
    branch_cleanup.forget()
