"""Components the handlers need, installed on the services when the app starts."""

from __future__ import annotations

from bot.app import Hooks


def install_components() -> Hooks:
    return Hooks()
