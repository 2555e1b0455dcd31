"""A strict, stateful fake GitHub (REST + GraphQL) that checks every request against GitHub's schemas."""

from .server import Call, FakeGitHub
from .webhooks import build_event, load_example, sign, webhook_headers

__all__ = ["Call", "FakeGitHub", "build_event", "load_example", "sign", "webhook_headers"]
