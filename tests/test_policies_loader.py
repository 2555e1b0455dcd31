"""moko.yml as a user writes it: the default, valid files, every error with its line, overrides."""

from __future__ import annotations

import json
import textwrap

import pytest

from handlers.wiring import cli
from policies.branch_protection import resolve_branch_rules
from policies.defaults import DEFAULT_POLICY, default_policy
from policies.loader import (
    PolicyError,
    PolicyProblem,
    merge_overrides,
    parse_policy,
    validate_policy_text,
)
from policies.model import BranchRule, Scope


def yml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def lines_and_messages(text: str) -> list[tuple[int, str]]:
    return [(problem.line, problem.message) for problem in validate_policy_text(yml(text))]


SPEC_EXAMPLE = """
version: 1
mode: enforce            # enforce | dry-run
repository:              # any field of PATCH /repos/{owner}/{repo}
  has_issues: true
  has_wiki: false
  has_projects: false
branches:
  - name: default        # the repository's default branch, or an exact branch name
    protection:          # the body of PUT /repos/{owner}/{repo}/branches/{branch}/protection
      required_pull_request_reviews:
        required_approving_review_count: 1
        dismiss_stale_reviews: true
      required_status_checks: null
      enforce_admins: false
      restrictions: null
scope:
  include: ["*"]         # shell-style globs on the repository name
  exclude: []
  archived: false        # archived repositories are left alone unless true
overrides: [repository.has_wiki]
commands:
  apply_permission: maintain   # least role (admin, maintain, write, triage, read) for /moko apply
"""


# --- the default ---


def test_default_policy_is_what_the_spec_states() -> None:
    policy = default_policy()
    assert policy.to_dict() == {
        "version": 1,
        "mode": "enforce",
        "repository": {"has_issues": True, "has_wiki": False, "has_projects": False},
        "branches": [
            {
                "name": "default",
                "protection": {
                    "required_status_checks": None,
                    "enforce_admins": False,
                    "required_pull_request_reviews": {"required_approving_review_count": 1},
                    "restrictions": None,
                },
            }
        ],
        "scope": {"include": ["*"], "exclude": [], "archived": False},
        "overrides": [],
        "commands": {"apply_permission": "maintain"},
        "notify": "none",
    }


def test_default_policy_is_immutable_hashable_and_json_ready() -> None:
    policy = default_policy()
    assert hash(policy) == hash(parse_policy(""))
    assert {policy: "cached"}[parse_policy("# nothing set\n")] == "cached"
    with pytest.raises(TypeError):
        policy.repository["has_wiki"] = True  # type: ignore[index]
    assert json.loads(json.dumps(policy.branches[0].protection))["enforce_admins"] is False


def test_empty_file_means_the_built_in_default() -> None:
    assert parse_policy("") == DEFAULT_POLICY
    assert validate_policy_text("") == []


# --- valid files ---


def test_the_spec_example_is_valid_and_loads_as_written() -> None:
    assert validate_policy_text(yml(SPEC_EXAMPLE)) == []
    policy = parse_policy(yml(SPEC_EXAMPLE), source=".github/moko.yml")
    assert policy.source == ".github/moko.yml"
    assert policy.overrides == ("repository.has_wiki",)
    assert policy.branches == (
        BranchRule(
            "default",
            {
                "required_pull_request_reviews": {
                    "required_approving_review_count": 1,
                    "dismiss_stale_reviews": True,
                },
                "required_status_checks": None,
                "enforce_admins": False,
                "restrictions": None,
            },
        ),
    )


def test_missing_sections_keep_the_default_and_present_ones_replace_it_whole() -> None:
    policy = parse_policy(
        yml("""
        repository:
          delete_branch_on_merge: true
        scope:
          exclude: ["sandbox-*"]
    """)
    )
    assert dict(policy.repository) == {"delete_branch_on_merge": True}  # has_wiki etc. not managed
    assert policy.branches == DEFAULT_POLICY.branches
    assert policy.scope == Scope(include=("*",), exclude=("sandbox-*",), archived=False)
    assert policy.apply_permission == "maintain"


def test_empty_branches_manages_no_protection() -> None:
    assert parse_policy("branches: []\n").branches == ()


def test_protection_null_is_a_rule_that_removes_protection() -> None:
    policy = parse_policy(
        yml("""
        branches:
          - name: legacy
            protection: null
    """)
    )
    assert policy.branches == (BranchRule("legacy", None),)


def test_dry_run_mode() -> None:
    assert parse_policy("mode: dry-run\n").dry_run is True


# --- invalid files: each error with its line ---


def test_yaml_syntax_error_reports_its_line() -> None:
    problems = validate_policy_text(
        yml("""
        version: 1
        repository:
          has_wiki: false
         has_issues: true
    """)
    )
    assert len(problems) == 1
    assert problems[0].line == 4
    assert problems[0].message.startswith("invalid YAML")


def test_unknown_repository_field_is_reported_on_its_line_with_a_suggestion() -> None:
    assert lines_and_messages("""
        version: 1
        repository:
          has_issues: true
          has_wikki: false
    """) == [
        (
            4,
            "repository.has_wikki: not a field of PATCH /repos/{owner}/{repo}; did you mean 'has_wiki'?",
        ),
    ]


def test_every_error_is_reported_at_once_in_line_order() -> None:
    found = lines_and_messages("""
        version: 2
        mode: enforcing
        repository:
          has_wiki: "no"
          visibility: secret
        scope:
          archived: sometimes
        commands:
          apply_permission: owner
        colour: blue
    """)
    assert [line for line, _ in found] == [1, 2, 4, 5, 7, 9, 10]
    assert found[0] == (1, "version: must be 1, not 2")
    assert found[1] == (2, "mode: must be one of enforce, dry-run, report, not 'enforcing'")
    assert found[2] == (4, "repository.has_wiki: must be true or false, not 'no'")
    assert found[3] == (5, "repository.visibility: must be one of public, private, not 'secret'")
    assert found[4] == (7, "scope.archived: must be true or false, not 'sometimes'")
    assert found[5] == (
        9,
        "commands.apply_permission: must be one of admin, maintain, write, triage, read, not 'owner'",
    )
    assert found[6][0] == 10 and found[6][1].startswith("colour: unknown key")


def test_name_and_archived_are_refused_with_the_reason() -> None:
    found = lines_and_messages("""
        repository:
          name: everything
          archived: true
    """)
    assert [line for line, _ in found] == [2, 3]
    assert "renaming" in found[0][1]
    assert "scope.archived" in found[1][1]


def test_commit_message_needs_its_title_and_visibility_excludes_private() -> None:
    found = lines_and_messages("""
        repository:
          private: true
          visibility: private
          squash_merge_commit_message: PR_BODY
    """)
    assert found == [
        (3, "repository.visibility: set either private or visibility, not both"),
        (
            4,
            "repository.squash_merge_commit_message: GitHub needs squash_merge_commit_title whenever squash_merge_commit_message is set",
        ),
    ]


def test_bad_protection_shapes_are_reported_where_they_are() -> None:
    found = lines_and_messages("""
        branches:
          - name: default
            protection:
              required_status_checks:
                contexts: ci
              enforce_admins: {enabled: true}
              required_pull_request_reviews:
                required_approving_review_count: 7
                dismiss_stale: true
              restrictions:
                users: [octocat]
                groups: [admins]
              required_linear_history: yes please
              required_signatures: true
          - name: release/*
            protection: {}
          - protection: null
    """)
    assert found == [
        (
            4,
            "branches[0].protection.required_status_checks: strict: missing (true: branches must be up to date before merging)",
        ),
        (
            5,
            "branches[0].protection.required_status_checks.contexts: must be a list of check names, not 'ci'",
        ),
        (6, "branches[0].protection.enforce_admins: must be true or false or null, not a mapping"),
        (
            8,
            "branches[0].protection.required_pull_request_reviews.required_approving_review_count: must be a number from 0 to 6, not 7",
        ),
        (
            9,
            "branches[0].protection.required_pull_request_reviews.dismiss_stale: unknown key; did you mean 'dismiss_stale_reviews'?",
        ),
        (
            12,
            "branches[0].protection.restrictions.groups: unknown key (allowed: users, teams, apps)",
        ),
        (
            13,
            "branches[0].protection.required_linear_history: must be true or false, not 'yes please'",
        ),
        (
            14,
            "branches[0].protection.required_signatures: not part of the PUT …/protection body (it has its own endpoint); Moko does not manage it",
        ),
        (15, "branches[1].name: must be an exact branch name or 'default' (no wildcards)"),
        (17, "branches[2]: name: missing (a branch name, or 'default' for the default branch)"),
    ]


def test_a_rule_without_protection_must_say_null_explicitly() -> None:
    assert lines_and_messages("""
        branches:
          - name: main
    """) == [
        (
            2,
            "branches[0]: protection: missing (a PUT …/protection body, or null to remove protection)",
        )
    ]


def test_duplicate_keys_and_rules_are_errors() -> None:
    found = lines_and_messages("""
        repository:
          has_wiki: false
          has_wiki: true
        branches:
          - {name: main, protection: null}
          - {name: main, protection: {}}
    """)
    assert found == [
        (3, "repository.has_wiki: duplicate key (first at line 2)"),
        (6, "branches[1].name: 'main' already has a rule (branches[0])"),
    ]


def test_top_level_must_be_a_mapping() -> None:
    assert lines_and_messages("- has_wiki: false\n") == [
        (
            1,
            "the policy must be a mapping with the keys version, mode, repository, branches, scope, overrides, commands, notify, rulesets, branch_cleanup",
        ),
    ]


def test_overrides_must_name_keys_that_exist() -> None:
    found = lines_and_messages("""
        overrides:
          - repository.has_wiki
          - repository.has_wikki
          - repository.name
          - scope
          - branches.default
    """)
    assert [line for line, _ in found] == [3, 4, 5]
    assert "did you mean 'repository.has_wiki'?" in found[0][1]
    assert "may not set it" in found[1][1]
    assert "cannot be overridden" in found[2][1]


def test_parse_policy_raises_with_every_problem_as_file_line_message() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy("mode: sometimes\nrepository:\n  has_wikki: true\n", source=".github/moko.yml")
    assert [str(problem) for problem in caught.value.problems] == [
        ".github/moko.yml:1: mode: must be one of enforce, dry-run, report, not 'sometimes'",
        ".github/moko.yml:3: repository.has_wikki: not a field of PATCH /repos/{owner}/{repo}; did you mean 'has_wiki'?",
    ]
    assert str(caught.value).splitlines()[0].startswith(".github/moko.yml:1:")


def test_problem_prints_as_check_config_wants_it() -> None:
    assert str(PolicyProblem(7, "mode: bad", "moko.yml")) == "moko.yml:7: mode: bad"


# --- overrides ---

ORG = yml("""
    repository:
      has_issues: true
      has_wiki: false
      has_projects: false
    overrides: [repository.has_wiki, branches.default]
""")


def test_allowed_override_applies() -> None:
    org = parse_policy(ORG)
    policy, problems = merge_overrides(org, "repository:\n  has_wiki: true\n")
    assert problems == []
    assert dict(policy.repository) == {"has_issues": True, "has_wiki": True, "has_projects": False}


def test_refused_override_is_ignored_and_reported_while_allowed_ones_apply() -> None:
    org = parse_policy(ORG)
    repo_file = yml("""
        repository:
          has_wiki: true
          has_projects: true
        mode: dry-run
    """)
    policy, problems = merge_overrides(org, repo_file, ".github/moko.yml")
    assert policy.repository["has_wiki"] is True
    assert policy.repository["has_projects"] is False
    assert policy.mode == "enforce"
    assert [(p.line, p.message) for p in problems] == [
        (
            3,
            "repository.has_projects: ignored: the organization's policy allows overriding only repository.has_wiki, branches.default",
        ),
        (
            4,
            "mode: ignored: the organization's policy allows overriding only repository.has_wiki, branches.default",
        ),
    ]
    assert str(problems[0]).startswith(".github/moko.yml:3: ")


def test_branch_rule_override_replaces_that_rule_only() -> None:
    org = parse_policy(ORG)
    repo_file = yml("""
        branches:
          - name: default
            protection:
              required_pull_request_reviews: {required_approving_review_count: 2}
          - name: release
            protection: {}
    """)
    policy, problems = merge_overrides(org, repo_file)
    assert [p.line for p in problems] == [5]
    assert [rule.name for rule in policy.branches] == ["default"]
    assert policy.branches[0].protection == {
        "required_pull_request_reviews": {"required_approving_review_count": 2}
    }


def test_whole_section_overrides() -> None:
    org = parse_policy("overrides: [repository, branches, branches.default]\n")
    policy, problems = merge_overrides(org, "repository:\n  allow_auto_merge: true\nbranches: []\n")
    assert problems == []
    assert policy.repository["allow_auto_merge"] is True
    assert policy.repository["has_wiki"] is False  # the org's other fields still apply
    assert policy.branches == ()


def test_a_wildcard_never_covers_fields_that_change_who_can_see_or_change_a_repository() -> None:
    org = parse_policy("repository:\n  visibility: private\noverrides: [repository, branches]\n")
    repo_file = yml("""
        repository:
          has_wiki: true
          visibility: public
          default_branch: wide-open
          allow_forking: true
          pull_request_creation_policy: all
          security_and_analysis: {secret_scanning: {status: disabled}}
        branches:
          - name: default
            protection: null
    """)
    policy, problems = merge_overrides(org, repo_file, ".github/moko.yml")
    assert dict(policy.repository) == {"visibility": "private", "has_wiki": True}
    assert [rule.name for rule in policy.branches] == ["default"]  # the organization's rule
    assert [(p.line, p.message) for p in problems] == [
        (3, "repository.visibility: ignored: it changes who can see the repository, so the organization's "
            "overrides must list repository.visibility by name ('repository' does not cover it)"),
        (4, "repository.default_branch: ignored: it changes which branch the organization's default-branch "
            "rules protect, so the organization's overrides must list repository.default_branch by name "
            "('repository' does not cover it)"),
        (5, "repository.allow_forking: ignored: it changes who can copy a private repository, so the "
            "organization's overrides must list repository.allow_forking by name ('repository' does not cover it)"),
        (6, "repository.pull_request_creation_policy: ignored: it changes who can open pull requests, so the "
            "organization's overrides must list repository.pull_request_creation_policy by name "
            "('repository' does not cover it)"),
        (7, "repository.security_and_analysis: ignored: it changes the repository's security features, so the "
            "organization's overrides must list repository.security_and_analysis by name "
            "('repository' does not cover it)"),
        (9, "branches[0]: ignored: the default branch's rule can be overridden only when the organization's "
            "overrides list branches.default ('branches' does not cover it)"),
    ]


def test_a_sensitive_field_listed_by_name_may_be_overridden() -> None:
    org = parse_policy("repository:\n  visibility: private\noverrides: [repository, repository.visibility]\n")
    policy, problems = merge_overrides(org, "repository:\n  visibility: public\n")
    assert problems == [] and dict(policy.repository) == {"visibility": "public"}


@pytest.mark.parametrize(
    ("overrides", "wins"),
    [("[branches.main]", "default"), ("[branches]", "default"), ("[branches.main, branches.default]", "main")],
)
def test_a_rule_naming_the_default_branch_displaces_the_default_rule_only_with_branches_default(
    overrides, wins
) -> None:
    org = parse_policy(f"overrides: {overrides}\n")
    repo_file = "branches:\n  - name: main\n    protection: null\n"
    policy, problems = merge_overrides(org, repo_file)
    assert problems == []
    rules = resolve_branch_rules(policy, "main")
    assert list(rules) == ["main"]
    assert rules["main"].protection is (None if wins == "main" else DEFAULT_POLICY.branches[0].protection)
    # On a repository whose default branch is another, the rule for main applies to main.
    assert resolve_branch_rules(policy, "trunk")["main"].protection is None


def test_no_overrides_allowed_by_default() -> None:
    policy, problems = merge_overrides(DEFAULT_POLICY, "repository:\n  has_wiki: true\n")
    assert policy == DEFAULT_POLICY
    assert [p.message for p in problems] == [
        "repository.has_wiki: ignored: the organization's policy allows no overrides"
    ]


def test_invalid_repository_file_is_an_error_naming_the_file_and_line() -> None:
    org = parse_policy(ORG)
    with pytest.raises(PolicyError) as raised:
        merge_overrides(org, "repository:\n  has_wiki: maybe\n", "acme/docs/.github/moko.yml")
    assert raised.value.source == "acme/docs/.github/moko.yml"
    assert [(p.line, p.message) for p in raised.value.problems] == [
        (2, "repository.has_wiki: must be true or false, not 'maybe'")
    ]


def test_overriding_private_replaces_the_orgs_visibility() -> None:
    org = parse_policy("repository:\n  visibility: private\noverrides: [repository.private]\n")
    policy, _ = merge_overrides(org, "repository:\n  private: false\n")
    assert dict(policy.repository) == {"private": False}


def test_block_creations_without_push_restrictions_is_refused() -> None:
    # GitHub keeps it off without restrictions, so Moko would rewrite the branch forever.
    assert lines_and_messages("""
        branches:
          - name: main
            protection:
              restrictions: null
              block_creations: true
    """) == [
        (
            5,
            "branches[0].protection.block_creations: needs restrictions (who may push) in the same protection",
        )
    ]


# --- notify and mode: report ---


def test_notify_and_report_mode_are_read_and_checked() -> None:
    policy = parse_policy("version: 1\nmode: report\nnotify: issue\n")
    assert (policy.mode, policy.notify, policy.dry_run, policy.report) == ("report", "issue", True, True)
    assert parse_policy("version: 1\n").notify == "none"
    problems = validate_policy_text("version: 1\nnotify: email\n")
    assert [str(p) for p in problems] == ["moko.yml:2: notify: must be one of issue, none, not 'email'"]


def test_a_repository_may_set_notify_only_when_the_organization_lists_it() -> None:
    org = parse_policy("version: 1\nnotify: none\noverrides: [notify]\n")
    merged, ignored = merge_overrides(org, "notify: issue\n")
    assert merged.notify == "issue" and ignored == []
    strict = parse_policy("version: 1\nnotify: issue\noverrides: [repository.has_wiki]\n")
    merged, ignored = merge_overrides(strict, "notify: none\n")
    assert merged.notify == "issue"
    assert [p.message for p in ignored] == [
        "notify: ignored: the organization's policy allows overriding only repository.has_wiki"]


# --- the file format's edges, as `moko check-config` prints them ---

# What the help of ``overrides`` lists: each kind's keys in the order its changes apply,
# notify, and last the kind that only sweeps apply.
OVERRIDE_KEYS = (
    "repository, repository.<field>, branches, branches.<rule name>, rulesets, "
    "rulesets.<ruleset name>, notify or branch_cleanup"
)


def check_config(tmp_path, capsys, text: str) -> tuple[int, list[str]]:
    """`moko check-config` on a file holding ``text``: its exit code and the lines it prints,
    each without the file's path."""
    path = tmp_path / "moko.yml"
    path.write_text(yml(text))
    code = cli.main(["check-config", str(path)])
    return code, [line.removeprefix(f"{path}:") for line in capsys.readouterr().out.splitlines()]


def test_check_config_names_every_key_overrides_may_list(tmp_path, capsys) -> None:
    assert check_config(tmp_path, capsys, """
        version: 1
        overrides: repository.has_wiki
    """) == (2, [f"2: overrides: must be a list of keys ({OVERRIDE_KEYS}), not 'repository.has_wiki'"])


def test_overrides_refuse_a_non_key_and_parts_of_sections_without_parts(tmp_path, capsys) -> None:
    code, printed = check_config(tmp_path, capsys, """
        overrides:
          - 3
          - notify
          - branch_cleanup
          - branch_cleanup.after
          - rulesets
          - rulesets.release
          - repository
          - scope.include
    """)
    assert (code, printed) == (2, [
        "2: overrides[0]: must be a key such as repository.has_wiki, not 3",
        f"5: overrides[3]: 'branch_cleanup.after' cannot be overridden; overrides may list {OVERRIDE_KEYS}",
        f"9: overrides[7]: 'scope.include' cannot be overridden; overrides may list {OVERRIDE_KEYS}",
    ])


def test_version_must_be_the_integer_1(tmp_path, capsys) -> None:
    assert check_config(tmp_path, capsys, "version: 1.0\n") == (2, ["1: version: must be 1, not 1.0"])
    assert check_config(tmp_path, capsys, "version: true\n") == (2, ["1: version: must be 1, not true"])
    assert check_config(tmp_path, capsys, "version: 1\n")[0] == 0


def test_scope_and_commands_problems_each_on_its_line(tmp_path, capsys) -> None:
    assert check_config(tmp_path, capsys, """
        scope:
          include: "*"
          exclude: ["docs", ""]
          archive: true
        commands:
          apply: write
    """) == (2, [
        "2: scope.include: must be a list of repository name globs, not '*'",
        "3: scope.exclude[1]: must be a non-empty string, not ''",
        "4: scope.archive: unknown key; did you mean 'archived'?",
        "6: commands.apply: unknown key (allowed: apply_permission)",
    ])
    assert check_config(tmp_path, capsys, "scope: [a]\ncommands: write\n") == (2, [
        "1: scope: must be a mapping {include, exclude, archived}, not a list",
        "2: commands: must be a mapping {apply_permission}, not 'write'",
    ])


def test_a_null_section_keeps_the_default_but_a_wrong_one_is_reported(tmp_path, capsys) -> None:
    code, printed = check_config(tmp_path, capsys, """
        repository: null
        branches: null
        rulesets: null
        scope: null
        overrides: null
        commands: null
        branch_cleanup: null
    """)
    assert code == 0 and printed[0] == " valid"
    assert check_config(tmp_path, capsys, """
        rulesets: 3
        branch_cleanup: 3
    """) == (2, [
        "1: rulesets: must be a list of POST /repos/{owner}/{repo}/rulesets bodies, not 3",
        "2: branch_cleanup: must be a mapping {after, merged_only, keep}, not 3",
    ])


# --- what YAML allows and a policy file does not ---


def test_keys_that_are_not_names_are_reported_where_they_are() -> None:
    assert lines_and_messages("""
        ? [version]
        : 1
        repository:
          1: true
          ? {has_wiki: true}
          : false
          !!binary aGk=: true
          has_wiki: true
          has_wiki: false
          has_issues: maybe
    """) == [
        (1, "keys must be names, not a non-scalar"),
        (4, "repository: keys must be names, not 1"),
        (5, "repository: keys must be names, not a non-scalar"),
        (7, "repository: keys must be names, not a non-scalar"),
        (9, "repository.has_wiki: duplicate key (first at line 8)"),
        # The keys after those are still read.
        (10, "repository.has_issues: must be true or false, not 'maybe'"),
    ]


def test_an_alias_inside_itself_is_reported_once_where_it_is() -> None:
    assert lines_and_messages("""
        version: 1
        scope:
          include: &globs [docs, *globs]
    """) == [(3, "scope.include[1]: a YAML alias may not contain itself")]


def test_a_number_python_cannot_hold_is_reported_where_it_is() -> None:
    digits = "1" * 5_000
    assert lines_and_messages(f"version: 1\nscope:\n  archived: {digits}\n") == [
        (3, "scope.archived: not a usable number")
    ]
    assert lines_and_messages(f"{digits}\n") == [(1, "not a usable number")]


def test_merge_keys_take_mappings_and_every_source_is_checked() -> None:
    assert lines_and_messages("""
        <<: 3
        version: 1
        scope:
          <<:
            - [docs]
            - !!set {include}
            - {archived: maybe}
            - {include: [docs-*]}
    """) == [
        (1, "<< takes a mapping or a list of mappings"),
        (5, "scope: << takes a mapping or a list of mappings"),
        (6, "scope: << takes a mapping or a list of mappings"),
        (7, "scope.archived: must be true or false, not 'maybe'"),
    ]
    # A mapping that merges itself would expand forever: refused, its other sources still checked.
    assert lines_and_messages("""
        version: 1
        scope: &scope
          include: [docs-*]
          <<: [*scope, {archived: maybe}]
    """) == [
        (2, "scope: a YAML alias may not contain itself"),
        (4, "scope.archived: must be true or false, not 'maybe'"),
    ]


def test_text_that_is_no_yaml_or_no_utf_8_is_reported_on_its_line() -> None:
    assert lines_and_messages("version: 1\nrepository:\n  description: a\x07b\n") == [
        (3, "invalid YAML: control characters are not allowed")
    ]
    # Text holding a lone surrogate (e.g. decoded from a JSON "\ud800" escape) is no UTF-8 file.
    assert lines_and_messages("version: 1\nrepository:\n  description: caf\ud800\n") == [(3, "not UTF-8 text")]
