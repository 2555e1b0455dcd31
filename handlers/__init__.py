"""Every webhook handler module's Router, combined in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # loaded with the handlers, in build_router
    from gidgethub.routing import Router


def build_router() -> Router:
    """The App's router: one per handler module."""
    # Imported here, not at the top: the `moko` command lives in this package too (wiring/),
    # and `moko --version` or `moko check-config` should not load every handler to start.
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
