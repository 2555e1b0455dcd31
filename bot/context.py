"""What a handler gets besides the event: the App's services and the delivery it is working for."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bot.config import Settings
from bot.store.base import Store

if TYPE_CHECKING:
    from bot.audit import AuditWriter
    from bot.github_app import GitHubApp
    from bot.github_client import MokoGitHubAPI
    from policies.engine import PolicyEngine


@dataclass
class Services:
    """Long-lived parts shared by every delivery, sweep and command of one process."""

    settings: Settings
    store: Store
    github: GitHubApp
    audit: AuditWriter
    owner: str  # this replica's identity in leases and locks
    # The policy engine, installed by the wiring when the app starts (bot/ imports no policy
    # code: the annotation alone names it).
    engine: PolicyEngine | None = None
    # Epoch seconds for the commands' rate limit; tests set a clock of their own.
    clock: Callable[[], float] = time.time


@dataclass
class Hooks:
    """Extension points the wiring offers the app: installers run on the services once they
    exist (the policy engine), and background loops started beside the workers."""

    components: list[Callable[[Services], None]] = field(default_factory=list)
    background: list[Callable[[Services], Any]] = field(default_factory=list)


@dataclass
class EventContext:
    """One delivery's context: handlers receive it as `ctx` beside the gidgethub Event."""

    services: Services
    delivery_id: str
    event_name: str
    installation_id: int | None
    log: Any
    trigger: str = ""
    retaken: bool = False  # the delivery was claimed before: an earlier try may have done work
    received_at: datetime | None = None  # when the delivery was stored: its payload is older

    async def github(self, *, bulk: bool = False) -> MokoGitHubAPI:
        """A client acting as the App's installation that sent the event."""
        if self.installation_id is None:
            raise LookupError("the event carries no installation")
        return await self.services.github.installation_client(self.installation_id, bulk=bulk)
