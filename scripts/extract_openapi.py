"""Extract the REST operations Moko needs beyond the subset into tests/fixtures/github-rest-extra.json,
the webhook events beyond github-webhooks-subset.json into tests/fixtures/github-webhooks-extra.json,
and the body of POST /repos/{owner}/{repo}/rulesets into policies/ruleset_body.json (Moko checks a
policy's ``rulesets`` entries against it)."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = Path("/work/shared/data/github-rest-full.json.gz")
DEFAULT_TARGET = ROOT / "tests" / "fixtures" / "github-rest-extra.json"
WEBHOOKS_TARGET = ROOT / "tests" / "fixtures" / "github-webhooks-extra.json"
RULESET_BODY_TARGET = ROOT / "policies" / "ruleset_body.json"
RULESET_BODY_OPERATION = ("post", "/repos/{owner}/{repo}/rulesets")

# Webhook events (x-webhooks keys) Moko handles beyond github-webhooks-subset.json.
WEBHOOKS: list[str] = ["pull-request-reopened", "pull-request-synchronize", "repository-ruleset-created"]

# (method, path template) pairs the fake GitHub must know beyond github-rest-subset.json.
OPERATIONS: list[tuple[str, str]] = [
    ("delete", "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions/{reaction_id}"),
    ("get", "/repos/{owner}/{repo}/issues/{issue_number}/comments"),
    ("get", "/repos/{owner}/{repo}/issues/comments/{comment_id}"),
    ("patch", "/repos/{owner}/{repo}/issues/comments/{comment_id}"),
    ("get", "/orgs/{org}"),
    ("get", "/users/{username}/installation"),
    ("get", "/app/installations/{installation_id}"),
    ("get", "/repos/{owner}/{repo}/branches"),
    ("get", "/repos/{owner}/{repo}/rulesets/{ruleset_id}"),
    ("delete", "/repos/{owner}/{repo}/rulesets/{ruleset_id}"),
    ("get", "/repos/{owner}/{repo}/rules/branches/{branch}"),
    ("post", "/app-manifests/{code}/conversions"),
    ("get", "/app/hook/config"),
    ("get", "/app/hook/deliveries"),
    ("post", "/app/hook/deliveries/{delivery_id}/attempts"),
    ("get", "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions"),
    ("get", "/repos/{owner}/{repo}/pulls/{pull_number}"),
    ("get", "/repos/{owner}/{repo}/pulls/{pull_number}/files"),
    ("delete", "/repos/{owner}/{repo}/git/refs/{ref}"),
]

# Operations of GitHub Enterprise Cloud that the api.github.com description lacks, written
# down from GitHub's REST reference ("List custom repository roles in an organization",
# docs.github.com/enterprise-cloud@latest/rest/orgs/custom-roles). Custom repository roles
# exist only for Enterprise Cloud organizations; elsewhere the endpoint answers 404.
GHEC_OPERATIONS: dict[str, dict[str, Any]] = {
    "/orgs/{org}/custom-repository-roles": {
        "get": {
            "summary": "List custom repository roles in an organization",
            "description": "List the custom repository roles available in this organization. "
            "GitHub Apps need the organization permission \"Custom repository roles\" (read) "
            "or \"Administration\" (read).",
            "operationId": "orgs/list-custom-roles",
            "externalDocs": {
                "description": "API method documentation",
                "url": "https://docs.github.com/enterprise-cloud@latest/rest/orgs/custom-roles"
                "#list-custom-repository-roles-in-an-organization",
            },
            "parameters": [{"$ref": "#/components/parameters/org"}],
            "responses": {
                "200": {
                    "description": "Response - list of custom role names",
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {
                            "total_count": {"type": "integer"},
                            "custom_roles": {"type": "array", "items": {
                                "title": "Organization Custom Repository Role",
                                "type": "object",
                                "properties": {
                                    "id": {"type": "integer"},
                                    "name": {"type": "string"},
                                    "description": {"type": "string", "nullable": True},
                                    "base_role": {
                                        "type": "string",
                                        "enum": ["read", "triage", "write", "maintain"],
                                    },
                                    "permissions": {"type": "array", "items": {"type": "string"}},
                                    "organization": {"$ref": "#/components/schemas/simple-user"},
                                    "created_at": {"type": "string", "format": "date-time"},
                                    "updated_at": {"type": "string", "format": "date-time"},
                                },
                                "required": ["id", "name", "base_role", "permissions",
                                             "organization", "created_at", "updated_at"],
                            }},
                        },
                    }}},
                },
            },
        },
    },
}


def _refs(node: Any, found: set[str]) -> None:
    """Collect every '#/components/<kind>/<name>' reference under node."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/"):
            found.add(ref)
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def extract(full: dict[str, Any], operations: list[tuple[str, str]]) -> dict[str, Any]:
    """Build a self-contained OpenAPI document holding only the given operations."""
    paths: dict[str, dict[str, Any]] = {}
    for method, template in operations:
        operation = dict(full["paths"][template][method])
        operation["responses"] = {
            code: response
            for code, response in operation["responses"].items()
            if str(code).startswith("2")
        }
        paths.setdefault(template, {})[method] = operation
    for template, operations_of in GHEC_OPERATIONS.items():
        paths.setdefault(template, {}).update(operations_of)
    components: dict[str, dict[str, Any]] = {}
    pending: set[str] = set()
    _refs(paths, pending)
    done: set[str] = set()
    while pending:
        ref = pending.pop()
        if ref in done:
            continue
        done.add(ref)
        _, _, kind, name = ref.split("/", 3)
        target = full["components"][kind][name]
        components.setdefault(kind, {})[name] = target
        _refs(target, pending)
    for kind in components:
        components[kind] = dict(sorted(components[kind].items()))
    return {
        "openapi": full["openapi"],
        "info": {
            "title": "GitHub REST API extra operations (generated by scripts/extract_openapi.py)",
            "version": full["info"].get("version", ""),
            "description": "Operations Moko uses that github-rest-subset.json lacks, extracted "
            "from @octokit/openapi's api.github.com description (plus the Enterprise Cloud "
            "operations written down in the script). Only 2xx responses kept. "
            "Regenerate with scripts/extract_openapi.py; do not edit by hand.",
        },
        "servers": full.get("servers", []),
        "paths": paths,
        "components": dict(sorted(components.items())),
    }


def _with_components(full: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with every component it references, transitively, from ``full``."""
    components: dict[str, dict[str, Any]] = {}
    pending: set[str] = set()
    _refs(document, pending)
    done: set[str] = set()
    while pending:
        ref = pending.pop()
        if ref in done:
            continue
        done.add(ref)
        _, _, kind, name = ref.split("/", 3)
        target = full["components"][kind][name]
        components.setdefault(kind, {})[name] = target
        _refs(target, pending)
    return {**document, "components": {kind: dict(sorted(items.items())) for kind, items in sorted(components.items())}}


def extract_webhooks(full: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A self-contained document holding the named webhook events' request schemas."""
    webhooks = {name: full["x-webhooks"][name] for name in names}
    return _with_components(full, {
        "openapi": full["openapi"],
        "info": {
            "title": "GitHub webhook events beyond github-webhooks-subset.json (generated by scripts/extract_openapi.py)",
            "version": full["info"].get("version", ""),
            "description": "x-webhooks of @octokit/openapi's api.github.com description. "
            "Regenerate with scripts/extract_openapi.py; do not edit by hand.",
        },
        "webhooks": webhooks,
    })


def extract_request_body(full: dict[str, Any], operation: tuple[str, str]) -> dict[str, Any]:
    """One operation's JSON request body schema, with the component schemas it references."""
    method, template = operation
    body = full["paths"][template][method]["requestBody"]["content"]["application/json"]["schema"]
    return _with_components(full, {
        "description": f"The request body of {method.upper()} {template}, from @octokit/openapi's "
        "api.github.com description. Regenerate with scripts/extract_openapi.py; do not edit by hand.",
        "version": full["info"].get("version", ""),
        "schema": body,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--target", type=Path, default=DEFAULT_TARGET)
    args = parser.parse_args()
    with gzip.open(args.source, "rt", encoding="utf-8") as handle:
        full = json.load(handle)
    document = extract(full, OPERATIONS)
    args.target.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"wrote {len(OPERATIONS)} operations to {args.target}")
    webhooks = extract_webhooks(full, WEBHOOKS)
    WEBHOOKS_TARGET.write_text(json.dumps(webhooks, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"wrote {len(WEBHOOKS)} webhook events to {WEBHOOKS_TARGET}")
    ruleset_body = extract_request_body(full, RULESET_BODY_OPERATION)
    RULESET_BODY_TARGET.write_text(json.dumps(ruleset_body, indent=1) + "\n", encoding="utf-8")
    print(f"wrote the ruleset body schema to {RULESET_BODY_TARGET}")


if __name__ == "__main__":
    main()
