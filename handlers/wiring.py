"""Components the handlers need, installed on the services when the app starts."""

from __future__ import annotations

from bot.app import Hooks
from bot.context import Services
from handlers.common import ENGINE
from policies.engine import PolicyEngine


def install_engine(services: Services) -> None:
    services.components[ENGINE] = PolicyEngine(
        store=services.store, audit=services.audit, dry_run=services.settings.dry_run
    )


def install_components() -> Hooks:
    return Hooks(components=[install_engine])
