"""Components the handlers need, installed on the services when the app starts, and the
background loops that run beside them."""

from __future__ import annotations

from bot.context import Hooks, Services
from bot.reconcile_budget import TurnCost
from bot.scheduler import ReconcileCycle
from handlers.common import engine_of_services
from handlers.noncompliance import NonComplianceNotice
from policies.engine import PolicyEngine
from policies.sweep import reconcile_installation


def install_engine(services: Services) -> None:
    services.engine = PolicyEngine(
        store=services.store,
        audit=services.audit,
        dry_run=services.settings.dry_run,
        permissions=services.github.installation_permissions,
        notice=NonComplianceNotice(services.github.bot_login),
        in_flight_for=services.settings.request_timeout,
    )


async def reconcile_one(services: Services, installation: int, account: str) -> TurnCost:
    """One installation's turn: the same sweep as `moko sweep`, as the App's installation."""
    return await reconcile_installation(
        engine_of_services(services), services.github, services.store, installation, account
    )


async def continuous_reconciliation(services: Services) -> None:
    await ReconcileCycle(services, reconcile_one).run_forever()


def install_components() -> Hooks:
    return Hooks(components=[install_engine], background=[continuous_reconciliation])
