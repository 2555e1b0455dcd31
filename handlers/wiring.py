"""Components the handlers need, installed on the services when the app starts, and the
background loops that run beside them."""

from __future__ import annotations

from bot.app import Hooks
from bot.context import Services
from bot.scheduler import ScheduledSweeps
from handlers.common import ENGINE
from policies.engine import PolicyEngine
from policies.sweep import sweep_installations


def install_engine(services: Services) -> None:
    services.components[ENGINE] = PolicyEngine(
        store=services.store,
        audit=services.audit,
        dry_run=services.settings.dry_run,
        permissions=services.github.installation_permissions,
    )


async def sweep_every_installation(services: Services) -> None:
    """One round of the scheduled reconciliation: the same sweep as `moko sweep`, per installation."""
    await sweep_installations(services.components[ENGINE], services.github, services.store)


async def scheduled_reconciliation(services: Services) -> None:
    await ScheduledSweeps(services, sweep_every_installation).run_forever()


def install_components() -> Hooks:
    return Hooks(components=[install_engine], background=[scheduled_reconciliation])
