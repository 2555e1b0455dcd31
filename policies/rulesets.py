"""Policy kind "rulesets": repository rulesets, matched by name, created or updated to comply.

Each entry of a policy's ``rulesets`` section is the body of
``POST /repos/{owner}/{repo}/rulesets`` (``name``, ``target``, ``enforcement``, ``conditions``,
``rules``, ``bypass_actors``), checked against GitHub's own schema of that body
(``ruleset_body.json``, extracted from GitHub's OpenAPI description by
``scripts/extract_openapi.py``).

What "compliant" means: the repository has a ruleset of that name (one of its own, not an
organization's) whose values include what the entry names. GitHub adds fields to its answers
(``id``, ``source``, ``_links``, ``node_id``, ``created_at``, parameters the entry left to
their defaults); they are not compared. Lists are compared as sets of items (rules, bypass
actors and ref patterns in any order), each item as far as the entry names it.

A ruleset that is missing is created (POST), a drifted one is updated (PUT, with the entry
as its body); rulesets the policy does not name are never touched. Undoing a creation deletes
the ruleset; undoing an update PUTs back what it held.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from importlib import resources
from typing import Any

from bot.github_protocol import GitHub
from policies.model import (
    RULESETS,
    Change,
    KindPlan,
    Plan,
    Policy,
    RepoState,
    is_unreadable,
    shown_in_error,
    thaw,
)
from policies.words import LONG, ReportContext, Shown, StatusRow, Words

# The fields of a ruleset that its create body can set: what an undo writes back.
BODY_KEYS: tuple[str, ...] = ("name", "target", "enforcement", "conditions", "rules", "bypass_actors")
# A need to read: the repository's own rulesets (the list, then each managed one by id).
READ_KEY = f"{RULESETS}.*"

_LIST = "/repos/{owner}/{repo}/rulesets{?includes_parents,per_page}"
_ONE = "/repos/{owner}/{repo}/rulesets/{ruleset_id}"


# --- checking a policy's entries against GitHub's schema ------------------------------------

Path = tuple[str | int, ...]
Problem = tuple[Path, str]


def _load_schema() -> dict[str, Any]:
    text = resources.files("policies").joinpath("ruleset_body.json").read_text(encoding="utf-8")
    return json.loads(text)


_SCHEMA = _load_schema()
_COMPONENTS: Mapping[str, Any] = _SCHEMA["components"]["schemas"]
_TYPES: Mapping[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float),
}


def _resolve(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        schema = _COMPONENTS[str(schema["$ref"]).rsplit("/", 1)[-1]]
    return schema


def _type_ok(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, _TYPES.get(kind, (object,)))


def _variant_type(schema: Mapping[str, Any]) -> tuple[str, ...]:
    """The ``type`` values a oneOf variant of a rule accepts (its discriminating enum)."""
    prop = _resolve(schema).get("properties", {}).get("type", {})
    return tuple(prop.get("enum", ()))


def check_value(value: Any, schema: Mapping[str, Any], path: Path) -> list[Problem]:
    """Problems of ``value`` against an OpenAPI 3.0 schema, closed as GitHub's fake is: a key
    the schema does not list is a problem, so a misspelt key never passes."""
    schema = _resolve(schema)
    if value is None:
        return [] if schema.get("nullable") else [(path, "must not be null")]
    if "oneOf" in schema:
        variants = [_resolve(s) for s in schema["oneOf"]]
        typed = {t: v for v in variants for t in _variant_type(v)}
        if typed and isinstance(value, Mapping):
            kind = value.get("type")
            if kind not in typed:
                return [(path + ("type",), f"must be one of {', '.join(sorted(typed))}, not {shown_in_error(kind)}")]
            return check_value(value, typed[kind], path)
        results = [check_value(value, v, path) for v in variants]
        if any(not r for r in results):
            return []
        return min(results, key=len)
    kind = schema.get("type")
    if kind and not _type_ok(value, kind):
        return [(path, f"must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}, not {shown_in_error(value)}")]
    if "enum" in schema and value not in schema["enum"]:
        return [(path, f"must be one of {', '.join(map(str, schema['enum']))}, not {shown_in_error(value)}")]
    problems: list[Problem] = []
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        problems.append((path, f"must be at least {schema['minimum']}, not {value}"))
    if "maximum" in schema and isinstance(value, (int, float)) and value > schema["maximum"]:
        problems.append((path, f"must be at most {schema['maximum']}, not {value}"))
    if isinstance(value, Mapping):
        properties = schema.get("properties")
        for required in schema.get("required", ()):
            if required not in value:
                problems.append((path, f"{required}: missing (GitHub requires it)"))
        for key, item in value.items():
            if properties is not None and key not in properties:
                allowed = ", ".join(properties)
                problems.append((path + (key,), f"unknown key (allowed: {allowed})"))
            elif properties is not None:
                problems.extend(check_value(item, properties[key], path + (key,)))
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            problems.extend(check_value(item, schema["items"], path + (index,)))
    return problems


def check_rulesets(value: Any, path: Path) -> list[Problem]:
    """Problems of a ``rulesets`` section: a list of create bodies with distinct names."""
    if not isinstance(value, list):
        return [(path, f"must be a list of POST /repos/{{owner}}/{{repo}}/rulesets bodies, not {shown_in_error(value)}")]
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(value):
        where = path + (index,)
        if not isinstance(entry, Mapping):
            problems.append((where, f"must be the body of POST /repos/{{owner}}/{{repo}}/rulesets, not {shown_in_error(entry)}"))
            continue
        problems.extend(check_value(entry, _SCHEMA["schema"], where))
        name = entry.get("name")
        if isinstance(name, str):
            if not name:
                problems.append((where + ("name",), "must not be empty"))
            elif name in seen:
                problems.append((where + ("name",), f"{name!r} already names a ruleset (rulesets[{seen[name]}])"))
            else:
                seen[name] = index
    return problems


# --- comparing and planning ---------------------------------------------------------------


def matches(have: Any, want: Any) -> bool:
    """Whether GitHub's value ``have`` holds what the policy's ``want`` names."""
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return False
        return all(matches(have.get(key), value) for key, value in want.items())
    if isinstance(want, (list, tuple)):
        if not isinstance(have, (list, tuple)) or len(have) != len(want):
            return False
        remaining = list(have)
        for item in want:
            found = next((i for i, candidate in enumerate(remaining) if matches(candidate, item)), None)
            if found is None:
                return False
            del remaining[found]
        return True
    return bool(have == want)


def restorable(ruleset: Mapping[str, Any]) -> dict[str, Any]:
    """The body that writes a ruleset back as it is (what undoing an update sends)."""
    return {key: thaw(ruleset[key]) for key in BODY_KEYS if ruleset.get(key) is not None}


def plan_rulesets_kind(policy: Policy, repo: RepoState) -> KindPlan:
    """The "rulesets" policy kind for one repository (its state: name -> ruleset, as
    ``GET …/rulesets/{id}`` answers; not known yet: read it)."""
    if not policy.rulesets:
        return KindPlan()
    have = repo.kind(RULESETS)
    if have is None:
        return KindPlan(needs_read=(READ_KEY,))
    if is_unreadable(have):
        return KindPlan(unknown=((RULESETS, have.reason),))
    changes: list[Change] = []
    for wanted in policy.rulesets:
        name = str(wanted["name"])
        current = have.get(name)
        if current is None:
            changes.append(Change(RULESETS, name, None, thaw(wanted), "POST"))
        elif not matches(current, wanted):
            if current.get(FROM_GRAPHQL):
                # Writing (and undoing) needs the ruleset as REST has it.
                return KindPlan(needs_read=(READ_KEY,))
            changes.append(
                Change(RULESETS, name, restorable(current), thaw(wanted), "PUT", str(current["id"]))
            )
    return KindPlan(changes=tuple(changes))


# --- reading and writing ----------------------------------------------------------------------


async def _own_rulesets(gh: GitHub, owner: str, repo: str) -> list[Mapping[str, Any]]:
    """The repository's own rulesets as the list answers them (no rules or conditions)."""
    url_vars = {"owner": owner, "repo": repo, "includes_parents": "false", "per_page": "100"}
    return [
        item async for item in gh.getiter(_LIST, url_vars=url_vars)
        if item.get("source_type", "Repository") == "Repository"
    ]


async def read_rulesets(gh: GitHub, owner: str, repo: str, policy: Policy) -> dict[str, Any]:
    """Name -> ruleset (with its rules) for the rulesets the policy names that exist: the list
    leaves rules and conditions out, so each managed one is read by its id."""
    wanted = {str(entry["name"]) for entry in policy.rulesets}
    found: dict[str, Any] = {}
    for item in await _own_rulesets(gh, owner, repo):
        if item.get("name") in wanted:
            found[str(item["name"])] = await gh.getitem(
                _ONE, url_vars={"owner": owner, "repo": repo, "ruleset_id": str(item["id"])}
            )
    return found


async def send_ruleset(gh: GitHub, owner: str, repo: str, change: Change) -> Change:
    """The request for one ruleset change; returns the change as made (a created ruleset's id
    in ``target``, so that undoing it can delete it)."""
    url_vars = {"owner": owner, "repo": repo}
    if change.method == "POST":

        async def already_made() -> Any:
            # A POST whose answer was lost may have created it: find it by name.
            for item in await _own_rulesets(gh, owner, repo):
                if item.get("name") == change.field:
                    return item
            return None

        made = await gh.post(
            "/repos/{owner}/{repo}/rulesets", url_vars=url_vars, data=change.after,
            already_done=already_made,
        )
        return replace(change, target=str(made["id"]))
    one = {**url_vars, "ruleset_id": str(change.target)}
    if change.method == "DELETE":
        await gh.delete(_ONE, url_vars=one)
    else:
        await gh.put(_ONE, url_vars=one, data=change.after)
    return change


def rulesets_from_section(value: Any) -> tuple[Mapping[str, Any], ...]:
    """The rulesets of a valid ``rulesets`` section (null: none managed)."""
    return tuple(value or ())


def merge_rulesets(
    org: tuple[Mapping[str, Any], ...], value: Any, allowed: set[str], ignore: Callable[..., None]
) -> tuple[Mapping[str, Any], ...]:
    """A repository's own rulesets over the organization's: the whole list with ``rulesets``,
    else those ``rulesets.<name>`` lists, replaced or added; ``ignore`` the others."""
    if "rulesets" in allowed:
        return tuple(value or ())
    rulesets = list(org)
    for index, entry in enumerate(value or ()):
        if f"rulesets.{entry['name']}" not in allowed:
            ignore(("rulesets", index))
            continue
        names = [existing["name"] for existing in rulesets]
        if entry["name"] in names:
            rulesets[names.index(entry["name"])] = entry
        else:
            rulesets.append(entry)
    return tuple(rulesets)


def decides_ruleset(policy: Policy, name: str) -> bool:
    """Whether the policy names the ruleset."""
    return any(ruleset.get("name") == name for ruleset in policy.rulesets)


def inverse_ruleset(change: Change) -> Change:
    """The change that undoes one: a created ruleset is deleted, an updated one written back."""
    if change.method == "POST":
        return Change(RULESETS, change.field, change.after, None, "DELETE", change.target)
    return Change(RULESETS, change.field, change.after, change.before, "PUT", change.target)


def section_of(rulesets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The section as moko.yml holds it (JSON/YAML-ready)."""
    return [thaw(entry) for entry in rulesets]


# --- the batched read (GraphQL) ------------------------------------------------------------

# Rulesets per repository in a batched read (more: REST says). GitHub prices a query by the
# nodes its connections could hold: each ruleset's rules cost a point per 100 rulesets.
RULESETS_PAGE = 5
RULES_PAGE = 20  # rules per ruleset; more: REST says
# A ruleset as GraphQL gave it: enough to tell it complies, not to write it back (no bypass
# actors, only some rules' parameters), so a drifted one is read again with REST first.
FROM_GRAPHQL = "__graphql"
# Rule parameters the batched read asks for (the same names as REST's, in camelCase); a rule
# whose parameters are not here reads as drifted, and REST decides.
_PARAMETERS = {
    "PullRequestParameters": "dismissStaleReviewsOnPush requireCodeOwnerReview requireLastPushApproval "
    "requiredApprovingReviewCount requiredReviewThreadResolution",
    "RequiredStatusChecksParameters": "strictRequiredStatusChecksPolicy doNotEnforceOnCreate "
    "requiredStatusChecks { context integrationId }",
    "RequiredDeploymentsParameters": "requiredDeploymentEnvironments",
    "CommitMessagePatternParameters": "name negate operator pattern",
    "CommitAuthorEmailPatternParameters": "name negate operator pattern",
    "CommitterEmailPatternParameters": "name negate operator pattern",
    "BranchNamePatternParameters": "name negate operator pattern",
    "TagNamePatternParameters": "name negate operator pattern",
    "UpdateParameters": "updateAllowsFetchAndMerge",
}
_RULES_SELECTION = (
    f"rules(first: {RULES_PAGE}) {{ totalCount nodes {{ type parameters {{ __typename "
    + " ".join(f"... on {name} {{ {fields} }}" for name, fields in _PARAMETERS.items())
    + " } } }"
)
# Whether a ruleset has bypass actors (none: ``bypass_actors: []`` complies), asked only when
# the policy names them, as it costs as much as the rules.
_BYPASS_SELECTION = "bypassActors(first: 1) { totalCount }"


def graphql_selection(policy: Policy) -> str | None:
    """The batched read's part for this policy (None: it manages no rulesets)."""
    if not wants_rulesets(policy):
        return None
    bypass = any("bypass_actors" in entry for entry in policy.rulesets)
    return (
        f"rulesets(first: {RULESETS_PAGE}, includeParents: false) {{ totalCount nodes {{ "
        "databaseId name target enforcement conditions { refName { include exclude } } "
        + (_BYPASS_SELECTION + " " if bypass else "") + _RULES_SELECTION + " } }"
    )


def _snake(name: str) -> str:
    return "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in name)


def _rest_shape(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {_snake(k): _rest_shape(v) for k, v in value.items() if k != "__typename"}
    if isinstance(value, list):
        return [_rest_shape(v) for v in value]
    return value


def _rule_from_graphql(node: Mapping[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = {"type": str(node["type"]).lower()}
    if node.get("parameters") is not None:
        rule["parameters"] = _rest_shape(node["parameters"])
    return rule


def rulesets_from_graphql(repository: Mapping[str, Any]) -> dict[str, Any] | None:
    """Name -> ruleset in REST's shape (marked ``FROM_GRAPHQL``) from a batched read's
    ``Repository`` node; None when the read could not see them all (REST says then)."""
    connection = repository.get("rulesets")
    if not isinstance(connection, Mapping):
        return None
    nodes = [n for n in connection.get("nodes") or () if n]
    if int(connection.get("totalCount") or 0) > len(nodes):
        return None
    found: dict[str, Any] = {}
    for node in nodes:
        rules = node.get("rules") or {}
        rule_nodes = [r for r in rules.get("nodes") or () if r]
        if int(rules.get("totalCount") or 0) > len(rule_nodes):
            return None
        ruleset: dict[str, Any] = {
            "id": node.get("databaseId"), "name": node["name"],
            "enforcement": str(node["enforcement"]).lower(),
            "rules": [_rule_from_graphql(r) for r in rule_nodes], FROM_GRAPHQL: True,
        }
        if node.get("target"):
            ruleset["target"] = str(node["target"]).lower()
        ref_name = (node.get("conditions") or {}).get("refName")
        if ref_name is not None:
            ruleset["conditions"] = {"ref_name": _rest_shape(ref_name)}
        bypass = node.get("bypassActors")
        if isinstance(bypass, Mapping) and int(bypass.get("totalCount") or 0) == 0:
            ruleset["bypass_actors"] = []
        found[str(node["name"])] = ruleset
    return found


def wants_rulesets(policy: Policy) -> bool:
    """Whether a batched read for this policy asks for rulesets (a repository may add some)."""
    return bool(policy.rulesets) or any(key.partition(".")[0] == RULESETS for key in policy.overrides)


# --- describing (status, plan) -------------------------------------------------------------


def drifted_keys(change: Change) -> list[str]:
    """The keys of the policy's body that the ruleset does not hold as named."""
    before = change.before or {}
    return [key for key, value in (change.after or {}).items() if not matches(before.get(key), value)]


def describe_ruleset(change: Change, policy: Policy | None, default_branch: str | None) -> Words:
    """Create, update (and where it differs) or delete a ruleset."""
    if change.method == "POST":
        return (Shown(f"create ruleset {change.field}"),)
    if change.method == "DELETE":
        return (Shown(f"delete ruleset {change.field}"),)
    detail = f"differs in {', '.join(drifted_keys(change)) or 'rules'}"
    return (Shown(f"update ruleset {change.field}"), ": ", Shown(detail, LONG))


def ruleset_status(policy: Policy, plan: Plan, context: ReportContext) -> list[StatusRow]:
    """One row per ruleset the policy names."""
    return [
        StatusRow((Shown(name),), (Shown(wanted),), (Shown(actual, LONG),), compliant)
        for name, wanted, actual, compliant in _ruleset_rows(policy, plan)
    ]


def _ruleset_rows(policy: Policy, plan: Plan) -> list[tuple[str, str, str, bool | None]]:
    """(ruleset name, wanted, actual, compliant: True, False or None for unknown)."""
    changes = {c.field: c for c in plan.changes if c.policy == RULESETS}
    unknown = any(key.split(".", 1)[0] == RULESETS for key, _ in plan.unknown) or READ_KEY in plan.needs_read
    rows: list[tuple[str, str, str, bool | None]] = []
    for wanted in policy.rulesets:
        name = str(wanted["name"])
        summary = f"{wanted.get('enforcement')}, {len(wanted.get('rules') or ())} rules"
        change = changes.get(name)
        if change is not None:
            actual = "missing" if change.before is None else f"differs in {', '.join(drifted_keys(change))}"
            rows.append((name, summary, actual, False))
        elif unknown:
            rows.append((name, summary, "unknown", None))
        else:
            rows.append((name, summary, "as wanted", True))
    return rows
