"""The policy kinds' one interface: every kind in the registry declares each hook the engine,
the transaction and the reports call, and those go through the registry, naming no kind."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from policies.batch_read import ReadFields, snapshot_of
from policies.loader import parse_policy
from policies.model import Plan, RepoState
from policies.plan import plan_repository
from policies.protection_state import ProtectionState
from policies.registry import POLICY_KINDS, inverse_of, kind_of
from policies.words import ReportContext, Shown
from tests.test_import_layers import ROOT, imports_of

# The modules a kind lives in: nothing that works through the registry imports them.
KIND_MODULES = {
    "policies.repository_settings", "policies.branch_protection", "policies.protection_shapes",
    "policies.protection_report", "policies.rulesets", "policies.branch_cleanup",
    "policies.settings_batch", "policies.protection_batch", "policies.protection_state",
}
KIND_NAMES = {"REPOSITORY", "BRANCH_PROTECTION", "BRANCH_PROTECTION_RULE", "RULESETS", "BRANCH_CLEANUP"}


@pytest.mark.parametrize("kind", POLICY_KINDS, ids=lambda kind: kind.name)
def test_every_kind_declares_every_hook(kind) -> None:
    assert kind.section, f"{kind.name} has no section of moko.yml"
    for hook in ("validate", "from_section", "merge", "plan", "read", "send", "describe", "status", "decides"):
        assert getattr(kind, hook) is not None, f"{kind.name} has no {hook}"
    # A change is undone by its kind's inverse, unless the kind's changes are never undone.
    assert kind.inverse is not None or kind.independent, f"{kind.name} has no inverse"


DRIFTED = parse_policy("""
version: 1
repository: {has_wiki: false}
branches:
  - name: default
    protection: {enforce_admins: true, required_status_checks: null, required_pull_request_reviews: null, restrictions: null}
rulesets:
  - name: no-deletions
    target: branch
    enforcement: active
    conditions: {ref_name: {include: ["~DEFAULT_BRANCH"], exclude: []}}
    rules: [{type: deletion}]
""")
STATE = RepoState(
    {"full_name": "acme/widgets", "default_branch": "main", "has_wiki": True},
    kinds={"branch_protection": ProtectionState({"main": None}, {"main": None}), "rulesets": {}},
)


def test_each_kind_plans_describes_reports_and_undoes_its_own_changes() -> None:
    """A repository drifting in settings, protection and rulesets: each change is its kind's,
    says what it does, shows in its kind's status rows as not compliant, and its undo is a
    change of the same field."""
    planned = {}
    for kind in POLICY_KINDS:
        for change in kind.plan(DRIFTED, STATE).changes:
            assert kind_of(change) is kind
            planned[kind.name] = change
    assert set(planned) == {"repository", "branch_protection", "rulesets"}
    for name, change in planned.items():
        kind = kind_of(change)
        words = kind.describe(change, DRIFTED, "main")
        assert any(isinstance(part, Shown) and change.field in part.text for part in words), (name, words)
        undo = inverse_of(change)
        assert (undo.policy, undo.field, undo.before) == (change.policy, change.field, change.after)
        plan = Plan("acme/widgets", changes=kind.plan(DRIFTED, STATE).changes)
        rows = kind.status(DRIFTED, plan, ReportContext("main"))
        assert [row.compliant for row in rows] == [False], (name, rows)


@pytest.mark.parametrize(
    "module",
    [
        "policies.apply", "policies.engine", "handlers.command_report", "policies.batch_read", "policies.validate",
        "policies.plan",
    ],
)
def test_the_transaction_the_engine_the_reports_and_the_batched_read_import_no_kind(module) -> None:
    path = ROOT / Path(*module.split(".")).with_suffix(".py")
    kinds = [i.target for i in imports_of(path) if i.target in KIND_MODULES]
    assert kinds == [], f"{module} imports {kinds}: it should go through policies.registry"


@pytest.mark.parametrize("module", ["policies.apply", "handlers.command_report", "policies.batch_read"])
def test_the_transaction_the_reports_and_the_batched_read_name_no_kind(module) -> None:
    path = ROOT / Path(*module.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text())
    named = sorted({node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id in KIND_NAMES})
    assert named == [], f"{module} names the kinds {named}: a kind's behaviour belongs in its module"


def test_the_batched_read_gives_the_one_state_the_planner_plans_from_and_a_read_makes_a_new_one() -> None:
    node = {
        "name": "widgets", "nameWithOwner": "acme/widgets", "isArchived": False, "isEmpty": False,
        "defaultBranchRef": {"name": "main"}, "owner": {"login": "acme"}, "hasWikiEnabled": True,
        "branchProtectionRules": {"totalCount": 0, "nodes": []},
        "rulesets": {"totalCount": 0, "nodes": []},
    }
    snapshot = snapshot_of(node, ReadFields.for_policy(DRIFTED))
    assert isinstance(snapshot, RepoState)
    planned = plan_repository(DRIFTED, snapshot)
    assert {change.policy for change in planned.changes} == {"repository", "branch_protection", "rulesets"}
    assert planned.needs_read == ()
    # A kind's read returns a new state; the one read from stays as it was.
    learned = snapshot.with_kind("rulesets", {}).with_repository({"has_wiki": False})
    assert snapshot.repository["has_wiki"] is True and learned.repository["has_wiki"] is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.empty = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        snapshot.repository["has_wiki"] = False  # type: ignore[index]


# A kind's name (and its prefixes of what the plan needs read) or its section of moko.yml.
KIND_WORDS = {word for kind in POLICY_KINDS for word in (kind.name, kind.section, *kind.reads)}


def kind_named_in(tree: ast.AST, *, skip: tuple[str, ...] = ()) -> list[str]:
    """The kinds a piece of code names: a kind's constant (REPOSITORY…), or a string that is a
    kind's name or section, or starts a key with one (``rulesets.``); ``skip``: assignments to
    these names are not looked into."""
    skipped = {
        id(child) for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AnnAssign))
        and any(isinstance(t, ast.Name) and t.id in skip for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))
        for child in ast.walk(node)
    }
    named = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Name) and node.id in KIND_NAMES:
            named.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
            node.value.split(".", 1)[0] in KIND_WORDS and (node.value in KIND_WORDS or "." in node.value)
        ):
            named.add(repr(node.value))
    return sorted(named)


def module_tree(module: str) -> ast.Module:
    return ast.parse((ROOT / Path(*module.split(".")).with_suffix(".py")).read_text())


@pytest.mark.parametrize("module", ["policies.engine", "policies.batch_read", "policies.validate", "policies.plan"])
def test_the_engine_the_batched_read_the_checks_and_the_planner_name_no_kind(module) -> None:
    # validate's list of the file's top-level keys names every section, in the documented order.
    named = kind_named_in(module_tree(module), skip=("TOP_LEVEL_KEYS",))
    assert named == [], f"{module} names the kinds {named}: say it in the kind's module, through the registry"


def test_the_plan_names_no_kind() -> None:
    [plan] = [node for node in module_tree("policies.model").body
              if isinstance(node, ast.ClassDef) and node.name == "Plan"]
    named = kind_named_in(plan)
    assert named == [], f"Plan names the kinds {named}: say it in the kind's module, through the registry"


def test_a_kind_name_is_found_where_it_is_written() -> None:
    # The checks above would pass on code they cannot read.
    assert kind_named_in(ast.parse("if x == BRANCH_PROTECTION: pass")) == ["BRANCH_PROTECTION"]
    assert kind_named_in(ast.parse("f(policy='rulesets')")) == ["'rulesets'"]
    assert kind_named_in(ast.parse("key.startswith('branches.') or f'repository.{x}'")) == [
        "'branches.'", "'repository.'"]
    assert kind_named_in(ast.parse("'repositoryX' + 'the repository' + 'rulesets_x'")) == []
    assert kind_named_in(ast.parse("KEYS: tuple = ('branches',)\nx = 'branches'"), skip=("KEYS",)) == ["'branches'"]
