"""Match requests to GitHub's OpenAPI operations and validate their path, query and JSON body."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SPEC_FILES = ("github-rest-subset.json", "github-rest-extra.json")
METHODS = ("get", "put", "post", "patch", "delete", "head", "options")
# OpenAPI-only keywords that JSON Schema must not see (or that carry no constraint).
_DROP = {"discriminator", "readOnly", "writeOnly", "example", "examples", "deprecated",
         "description", "title", "externalDocs", "xml", "nullable"}
_MULTI_SEGMENT = {"branch", "path"}


def to_json_schema(node: Any, *, partial: bool = False, strict: bool = True) -> Any:
    """Convert an OpenAPI 3.0 schema to JSON Schema (draft 7), closing every listed object.

    `nullable: true` allows null; OpenAPI-only keywords and `x-*` are dropped; a schema
    that lists `properties` gets `additionalProperties: false` unless it says otherwise,
    except a branch of allOf/anyOf/oneOf that only adds to its parent's properties.
    With strict=False objects stay open (for GitHub's own, looser, response shapes).
    """
    if isinstance(node, list):
        return [to_json_schema(item, strict=strict) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key.startswith("x-"):
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(sub, strict=strict) for name, sub in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = to_json_schema(value, strict=strict)
        elif key in ("allOf", "anyOf", "oneOf"):
            branch_partial = key == "allOf" or "properties" in node
            out[key] = [to_json_schema(sub, partial=branch_partial, strict=strict)
                        for sub in value]
        else:
            out[key] = value
    if strict and "properties" in out and "additionalProperties" not in out and not partial:
        out["additionalProperties"] = False
    if node.get("nullable") is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        elif "type" not in out:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


@dataclass
class Param:
    """A path or query parameter of an operation, with a compiled validator for its value."""

    name: str
    location: str
    required: bool
    schema: dict[str, Any]
    validator: Draft7Validator

    def coerce(self, raw: str) -> Any:
        """Turn the raw string into the schema's type (raise ValueError when impossible)."""
        kind = self.schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "string")
        if kind == "integer":
            return int(raw)
        if kind == "number":
            return float(raw)
        if kind == "boolean":
            if raw not in ("true", "false"):
                raise ValueError(raw)
            return raw == "true"
        if kind == "array":
            return raw.split(",")
        return raw


@dataclass
class Operation:
    """One (method, path template) of the description and everything needed to check a call."""

    method: str
    template: str
    operation_id: str
    doc_url: str
    regex: re.Pattern[str]
    path_params: dict[str, Param]
    query_params: dict[str, Param]
    body_schema: dict[str, Any] | None
    body_required: bool
    spec: OpenAPISpec
    _validator: Draft7Validator | None = field(default=None, repr=False)

    @property
    def body_validator(self) -> Draft7Validator | None:
        """The request body validator, compiled on first use and cached."""
        if self.body_schema is None:
            return None
        if self._validator is None:
            root = {**self.body_schema, "components": self.spec.json_components}
            self._validator = Draft7Validator(root)
        return self._validator


@dataclass
class Match:
    """The outcome of checking a request: its operation (if any), parameters and problems."""

    operation: Operation | None
    params: dict[str, Any]
    query: dict[str, Any]
    errors: list[str]
    not_found: bool = False


def _deref(document: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        _, _, kind, name = node["$ref"].split("/", 3)
        node = document["components"][kind][name]
    return node


def _error_text(error: ValidationError) -> str:
    """Phrase a JSON Schema error the way GitHub's REST API does."""
    where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    prefix = f"For '{where[1:] or 'body'}', " if where else ""
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        return " ".join(f'{prefix}"{k}" is not a permitted key.' for k in extra)
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        name = missing[0] if missing else error.message
        return f'{prefix}"{name}" wasn\'t supplied.'
    if error.validator == "type":
        kinds = error.validator_value
        kinds = kinds if isinstance(kinds, list) else [kinds]
        wanted = " or ".join(f"{'an' if k[0] in 'aeiou' else 'a'} {k}" for k in kinds)
        return f"{prefix}{json.dumps(error.instance)} is not {wanted}."
    return f"{prefix}{error.message}"


class OpenAPISpec:
    """One loaded OpenAPI document: its components (converted once) and its operations."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        schemas = document.get("components", {}).get("schemas", {})
        self.json_components = {"schemas": {n: to_json_schema(s) for n, s in schemas.items()}}
        self._lenient: dict[str, Any] | None = None
        self.operations: list[Operation] = []
        for template, item in document.get("paths", {}).items():
            shared = item.get("parameters", [])
            for method in METHODS:
                if method in item:
                    self.operations.append(self._operation(template, method, item[method], shared))

    def response_validator(self, op: Operation, status: int) -> Draft7Validator | None:
        """A lenient validator (open objects) for a documented 2xx response of `op`."""
        raw = self.document["paths"][op.template][op.method.lower()]["responses"].get(str(status))
        schema = ((_deref(self.document, raw) or {}).get("content", {})
                  .get("application/json", {}).get("schema"))
        if schema is None:
            return None
        if self._lenient is None:
            schemas = self.document.get("components", {}).get("schemas", {})
            self._lenient = {"schemas": {n: to_json_schema(v, strict=False)
                                         for n, v in schemas.items()}}
        return Draft7Validator({**to_json_schema(schema, strict=False),
                                "components": self._lenient})

    def _param(self, raw: dict[str, Any]) -> Param:
        schema = to_json_schema(_deref(self.document, raw.get("schema", {})))
        return Param(
            name=raw["name"],
            location=raw["in"],
            required=bool(raw.get("required")),
            schema=schema,
            validator=Draft7Validator(schema),
        )

    def _operation(
        self, template: str, method: str, op: dict[str, Any], shared: list[Any]
    ) -> Operation:
        path_params: dict[str, Param] = {}
        query_params: dict[str, Param] = {}
        multi: set[str] = set(_MULTI_SEGMENT)
        for raw in [*shared, *op.get("parameters", [])]:
            raw = _deref(self.document, raw)
            if raw.get("x-multi-segment"):
                multi.add(raw["name"])
            if raw["in"] == "path":
                path_params[raw["name"]] = self._param(raw)
            elif raw["in"] == "query":
                query_params[raw["name"]] = self._param(raw)
        pattern = ""
        for part in re.split(r"(\{[^}]+\})", template):
            if part.startswith("{"):
                name = part[1:-1]
                pattern += f"(?P<{name}>.+)" if name in multi else f"(?P<{name}>[^/]+)"
            else:
                pattern += re.escape(part)
        body_schema = None
        body_required = False
        request_body = _deref(self.document, op.get("requestBody"))
        if request_body:
            body_required = bool(request_body.get("required"))
            content = request_body.get("content", {})
            media = content.get("application/json") or next(iter(content.values()), {})
            body_schema = to_json_schema(media.get("schema", {}))
        return Operation(
            method=method.upper(),
            template=template,
            operation_id=op.get("operationId", f"{method} {template}"),
            doc_url=op.get("externalDocs", {}).get("url", "https://docs.github.com/rest"),
            regex=re.compile(pattern),
            path_params=path_params,
            query_params=query_params,
            body_schema=body_schema,
            body_required=body_required,
            spec=self,
        )


def _specificity(op: Operation) -> tuple[int, int]:
    literal = len(re.sub(r"\{[^}]+\}", "", op.template))
    return (-literal, len(op.path_params))


class OpenAPIValidator:
    """Every operation of the loaded documents, most specific path template first."""

    def __init__(self, files: tuple[str, ...] = SPEC_FILES, fixtures: Path = FIXTURES) -> None:
        self.specs = [
            OpenAPISpec(json.loads((fixtures / name).read_text(encoding="utf-8")))
            for name in files
            if (fixtures / name).exists()
        ]
        ops = [op for spec in self.specs for op in spec.operations]
        self.operations = sorted(ops, key=_specificity)
        self.by_id = {op.operation_id: op for op in self.operations}
        self._enforce_protection_facts()

    def _enforce_protection_facts(self) -> None:
        """Make sure the README's facts about PUT …/protection hold in the loaded schema."""
        op = self.by_id.get("repos/update-branch-protection")
        if op is None or op.body_schema is None:
            return
        schema = op.body_schema
        needed = ["required_status_checks", "enforce_admins", "required_pull_request_reviews",
                  "restrictions"]
        schema["required"] = sorted(set(schema.get("required", [])) | set(needed))
        checks = schema["properties"]["required_status_checks"]
        checks["required"] = sorted(set(checks.get("required", [])) | {"strict", "contexts"})
        op._validator = None

    def response_validator(self, operation_id: str, status: int) -> Draft7Validator | None:
        """A lenient validator for the documented `status` answer of an operation."""
        op = self.by_id[operation_id]
        return op.spec.response_validator(op, status)

    def match(self, method: str, raw_path: str) -> tuple[Operation | None, dict[str, str], bool]:
        """Find the operation for a request; the flag says whether the path exists at all."""
        path_known = False
        for op in self.operations:
            found = op.regex.fullmatch(raw_path)
            if found is None:
                continue
            path_known = True
            if op.method == method:
                return op, {k: unquote(v) for k, v in found.groupdict().items()}, True
        return None, {}, path_known

    def check(
        self,
        method: str,
        raw_path: str,
        query: Mapping[str, str | list[str]],
        body: Any = None,
        *,
        has_body: bool = False,
    ) -> Match:
        """Validate one request; errors name every problem found."""
        op, raw_params, path_known = self.match(method.upper(), raw_path)
        if op is None:
            what = "method not allowed for" if path_known else "unknown endpoint"
            return Match(None, {}, {}, [f"{what} {method.upper()} {unquote(raw_path)}"],
                         not_found=True)
        errors: list[str] = []
        params: dict[str, Any] = {}
        for name, raw in raw_params.items():
            param = op.path_params.get(name)
            if param is None:
                params[name] = raw
                continue
            params[name] = _check_value(param, raw, errors)
        values: dict[str, Any] = {}
        for name, raw_value in query.items():
            param = op.query_params.get(name)
            if param is None:
                errors.append(f"query parameter {name!r} is not accepted by {op.operation_id}")
                continue
            raw = raw_value[-1] if isinstance(raw_value, list) else raw_value
            values[name] = _check_value(param, raw, errors)
        for name, param in op.query_params.items():
            if param.required and name not in query:
                errors.append(f"query parameter {name!r} is required")
        validator = op.body_validator
        if validator is None:
            if has_body:
                errors.append(f"{op.operation_id} takes no request body")
        elif not has_body:
            if op.body_required:
                errors.append("a JSON request body is required")
        else:
            errors.extend(_body_errors(validator, body))
        return Match(op, params, values, errors)


def _check_value(param: Param, raw: str, errors: list[str]) -> Any:
    try:
        value = param.coerce(raw)
    except ValueError:
        errors.append(f"{param.location} parameter {param.name!r}: {raw!r} is not of type "
                      f"{param.schema.get('type')}")
        return raw
    for error in param.validator.iter_errors(value):
        errors.append(f"{param.location} parameter {param.name!r}: {error.message}")
    return value


def _body_errors(validator: Draft7Validator, body: Any) -> list[str]:
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    out: list[str] = []
    for error in errors:
        out.extend(_explain(error))
    return out


def _explain(error: ValidationError) -> list[str]:
    """Messages for one error; for oneOf/anyOf, those of the branch that came closest."""
    if not (error.context and error.validator in ("oneOf", "anyOf")):
        return [_error_text(error)]
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context:
        key = sub.relative_schema_path[0] if sub.relative_schema_path else None
        branches.setdefault(key, []).append(sub)

    def mismatched(subs: list[ValidationError]) -> bool:
        return any(s.validator in ("enum", "const") for s in subs)

    def score(subs: list[ValidationError]) -> tuple[bool, int, int]:
        depth = min(len(list(s.absolute_path)) for s in subs)
        return (not mismatched(subs), depth, -len(subs))

    best = max(branches.values(), key=score)
    if mismatched(best):
        # Every branch rejects a discriminating value: list what would have been accepted.
        enums = [s for subs in branches.values() for s in subs if s.validator == "enum"]
        if enums and len({tuple(s.absolute_path) for s in enums}) == 1:
            allowed = sorted({str(v) for s in enums for v in s.validator_value})
            return [_error_text(enums[0]).split(" is not one of")[0] + f" is not one of {allowed}."]
    if all(s.validator == "type" for s in best):
        # No branch accepts the value's type: say what the value failed to be.
        return [_error_text(error)]
    return [text for sub in best for text in _explain(sub)]


@lru_cache(maxsize=1)
def default_validator() -> OpenAPIValidator:
    """The process-wide validator over tests/fixtures (built once, it is shared and read-only)."""
    return OpenAPIValidator()
