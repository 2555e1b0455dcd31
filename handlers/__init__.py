"""Every webhook handler module's Router, combined in one place."""

from __future__ import annotations

from gidgethub.routing import Router

from handlers import ping


def build_router() -> Router:
    """The App's router: one per handler module."""
    return Router(ping.router)
