"""Pytest plugin: the `fake_github` fixture, which fails a test that sent GitHub a bad request."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from .server import FakeGitHub


def assert_no_violations(fake: FakeGitHub) -> None:
    """Fail the current test if the fake recorded any request that breaks GitHub's schemas."""
    if fake.violations:
        listing = "\n  ".join(fake.violations)
        pytest.fail(f"the fake GitHub received {len(fake.violations)} invalid request(s):\n"
                    f"  {listing}", pytrace=False)


@pytest_asyncio.fixture
async def fake_github() -> AsyncIterator[FakeGitHub]:
    """A started FakeGitHub; at teardown, any recorded violation fails the test.

    A test that sends a bad request on purpose takes it back with `fake.take_violations()`.
    """
    fake = FakeGitHub()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()
    assert_no_violations(fake)
