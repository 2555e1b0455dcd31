"""Every webhook handler module's Router, combined in one place."""

from __future__ import annotations

from gidgethub.routing import Router

from handlers import (
    branch_protection,
    comments,
    installation,
    ping,
    pull_request,
    push,
    repository,
    rulesets,
)


def build_router() -> Router:
    """The App's router: one per handler module."""
    return Router(
        ping.router,
        installation.router,
        repository.router,
        branch_protection.router,
        rulesets.router,
        push.router,
        pull_request.router,
        comments.router,
    )
