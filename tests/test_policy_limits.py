"""Hostile policy files through `moko check-config`: every limit (size, values after aliases,
nesting, tags) is an invalid file with its line, found quickly, exit 2."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from handlers.wiring import cli
from policies.loader import parse_policy, validate_policy_text

# Ten times ten ... nine levels: a billion strings once expanded, 400 bytes written.
BILLION_LAUGHS = 'lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"lol{level}: &lol{level} [{', '.join([f'*lol{level - 1}'] * 10)}]\n" for level in range(1, 9)
)
# The same through merge keys: each level merges the one below twice.
MERGE_BOMB = "m0: &m0 {a: 1, b: 2}\n" + "".join(
    f"m{level}: &m{level} {{<<: [*m{level - 1}, *m{level - 1}], k{level}: 1}}\n" for level in range(1, 40)
)
HOSTILE = {
    "too large": ("version: 1\n" + "# padding\n" * 30_000, 26_215, "the file is larger than 256 KiB"),
    "billion laughs": (BILLION_LAUGHS, 1, "more than 10,000 YAML values (aliases counted as expanded)"),
    "merge bomb": (MERGE_BOMB, 1, "more than 10,000 YAML values (aliases counted as expanded)"),
    "too many values": (
        "version: 1\noverrides: [" + ", ".join(["repository"] * 12_000) + "]\n", 2,
        "more than 10,000 YAML values (aliases counted as expanded)",
    ),
    "nested 65 deep": (
        "version: 1\nscope:\n" + "".join("  " * depth + f"k{depth}:\n" for depth in range(1, 70)), 65,
        "nested more than 64 levels deep",
    ),
    # Deeper than Python's stack when composed naively (and than libyaml's own limit).
    "flow mappings nested 5,000 deep": (
        "version: 1\nscope: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n", 2, "nested more than 64 levels deep",
    ),
    "nested 100,000 deep": ("version: 1\nbranches:\n" + "- " * 100_000 + "x\n", 3, "nested more than 64 levels deep"),
    "deep through an alias": (
        "version: 1\nx: &deep " + "[" * 40 + "1" + "]" * 40 + "\nbranches: " + "[" * 30 + "*deep" + "]" * 30 + "\n",
        2, "nested more than 64 levels deep",
    ),
    "binary": (
        "version: 1\nrepository:\n  description: !!binary aGVsbG8=\n", 3,
        "repository.description: the tag !!binary is not allowed "
        "(only strings, numbers, true/false, null, mappings and lists)",
    ),
    "python object": (
        "version: 1\nrepository: !!python/object/apply:os.system ['touch /tmp/moko-pwned']\n", 2,
        "repository: the tag !!python/object/apply:os.system is not allowed "
        "(only strings, numbers, true/false, null, mappings and lists)",
    ),
    "local tag": ("version: !ask 1\n", 1, "version: the tag !ask is not allowed "
                  "(only strings, numbers, true/false, null, mappings and lists)"),
    "set": ("overrides: !!set {repository: null}\n", 1, "overrides: the tag !!set is not allowed "
            "(only strings, numbers, true/false, null, mappings and lists)"),
    # Expanding it would never end: refused like an alias that contains itself.
    "a mapping that merges itself": (
        "version: 1\nscope: &scope\n  include: [docs-*]\n  <<: *scope\n", 2,
        "scope: a YAML alias may not contain itself",
    ),
    "not UTF-8": (b"version: 1\nrepository:\n  description: caf\xe9\n", 3, "not UTF-8 text"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_check_config_reports_each_limit_with_its_line_quickly(case, tmp_path, capsys):
    content, line, message = HOSTILE[case]
    path = tmp_path / "moko.yml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    started = time.perf_counter()
    assert cli.main(["check-config", str(path)]) == 2
    assert time.perf_counter() - started < 1.0
    assert capsys.readouterr().out.splitlines() == [f"{path}:{line}: {message}"]


def test_check_config_as_a_process_refuses_a_billion_laughs(tmp_path):
    path = tmp_path / "moko.yml"
    path.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS.encode()) < 1000
    done = subprocess.run(
        [sys.executable, "-m", "handlers.wiring.cli", "check-config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert done.stdout == f"{path}:1: more than 10,000 YAML values (aliases counted as expanded)\n"
    assert "Traceback" not in done.stderr


def test_standard_tags_aliases_and_merge_keys_within_the_limits_still_work():
    policy = parse_policy(
        "version: !!int 1\n"
        "repository:\n  description: !!str 2024-01-01\n  has_wiki: !!bool false\n"
        "branches:\n"
        "  - name: main\n    protection: &strict\n      required_status_checks: null\n"
        "      enforce_admins: true\n      restrictions: null\n"
        "  - name: release\n    protection:\n      <<: *strict\n      enforce_admins: false\n"
    )
    assert dict(policy.repository) == {"description": "2024-01-01", "has_wiki": False}
    main, release = policy.branches
    assert main.protection == {"required_status_checks": None, "enforce_admins": True, "restrictions": None}
    assert release.protection == {"required_status_checks": None, "enforce_admins": False, "restrictions": None}


def test_an_unquoted_date_says_to_quote_it(tmp_path, capsys):
    path = tmp_path / "moko.yml"
    path.write_text("repository:\n  description: 2024-01-01\n")
    assert cli.main(["check-config", str(path)]) == 2
    assert capsys.readouterr().out.endswith("; quote it to make it a string\n")


# --- each limit at its edge: the most the file format allows is a usable file ---


def globs_twice(count: int, tail: str) -> str:
    """A valid policy whose scope excludes, through an alias, the ``count`` globs it includes:
    2 × ``count`` + 9 values once expanded, then ``tail``."""
    globs = ", ".join(f"g{index}" for index in range(count))
    return f"version: 1\nscope:\n  include: &globs [{globs}]\n  exclude: *globs\n{tail}"


def nested_alias(kind: str, inner: int, outer: int) -> str:
    """A list (or mapping) ``inner`` deep, anchored, used ``outer`` levels deep: nested
    ``inner + outer + 2`` levels once the alias is expanded. Merged (``{<<: *deep}``), the
    merge key counts as a level too."""
    value, used = "1", "{<<: *deep}" if kind == "merge" else "*deep"
    for _ in range(inner):
        value = f"[{value}]" if kind == "list" else f"{{k: {value}}}"
    for _ in range(outer):
        used = f"[{used}]" if kind == "list" else f"{{k: {used}}}"
    return f"version: 1\nx: &deep {value}\nbranches: {used}\n"


def merged_scopes(sources: int, keys: int) -> str:
    """Commands merging the scope ``sources`` times (each source 4 values once merged), then
    ``keys`` override keys: 4 × ``sources`` + ``keys`` + 12 values."""
    return (
        "version: 1\nscope: &scope {include: [docs-*]}\ncommands:\n  <<: ["
        + ", ".join(["*scope"] * sources) + "]\noverrides: [" + ", ".join(["notify"] * keys) + "]\n"
    )


LIMIT = "more than 10,000 YAML values (aliases counted as expanded)"
DEEP = "nested more than 64 levels deep"
AT_THE_EDGE = {
    # 9,995 keys and 5 values around them: 10,000 values.
    "10,000 values": ("version: 1\noverrides: [" + ", ".join(["notify"] * 9_995) + "]\n", []),
    "10,001 values": ("version: 1\noverrides: [" + ", ".join(["notify"] * 9_996) + "]\n", [f"2: {LIMIT}"]),
    # The same counted as aliases expand (2 × 4,994 + 9 + 3).
    "10,000 values through an alias": (globs_twice(4_994, "overrides: [notify]\n"), []),
    # The 10,000th value a key on line 5, the 10,001st its value on line 6.
    "10,001 values through an alias": (globs_twice(4_995, "overrides:\n  []\n"), [f"6: {LIMIT}"]),
    "10,000 values through merge keys": (
        merged_scopes(1_000, 5_988), ["2: commands.include: unknown key (allowed: apply_permission)"],
    ),
    "10,001 values through merge keys": (merged_scopes(1_000, 5_989), [f"5: {LIMIT}"]),
    # Merge keys that merge nothing: 5 values and two for each ("<<" and its empty list).
    "9,999 values in merge keys": ("version: 1\nscope:\n" + "  <<: []\n" * 4_997, []),
    "10,001 values in merge keys": ("version: 1\nscope:\n" + "  <<: []\n" * 4_998, [f"5000: {LIMIT}"]),
    "nested 64 deep": (
        "version: 1\nscope:\n" + "".join("  " * depth + f"k{depth}:\n" for depth in range(1, 63)),
        ["3: scope.k1: unknown key (allowed: include, exclude, archived)"],
    ),
    "nested 65 deep": (
        "version: 1\nscope:\n" + "".join("  " * depth + f"k{depth}:\n" for depth in range(1, 64)), [f"65: {DEEP}"],
    ),
    "lists nested 64 deep through an alias": (nested_alias("list", 31, 31), [
        "2: x: unknown key (allowed: version, mode, repository, branches, scope, overrides, commands, "
        "notify, rulesets, branch_cleanup)",
        "3: branches[0]: must be a rule {name: …, protection: …}, not a list",
    ]),
    "lists nested 65 deep through an alias": (nested_alias("list", 31, 32), [f"2: {DEEP}"]),
    "mappings nested 64 deep through an alias": (nested_alias("mapping", 31, 31), [
        "2: x: unknown key (allowed: version, mode, repository, branches, scope, overrides, commands, "
        "notify, rulesets, branch_cleanup)",
        "3: branches: must be a list of {name, protection} rules, not a mapping",
    ]),
    "mappings nested 65 deep through an alias": (nested_alias("mapping", 31, 32), [f"2: {DEEP}"]),
    "mappings nested 64 deep through a merge key": (nested_alias("merge", 31, 30), [
        "2: x: unknown key (allowed: version, mode, repository, branches, scope, overrides, commands, "
        "notify, rulesets, branch_cleanup)",
        "3: branches: must be a list of {name, protection} rules, not a mapping",
    ]),
    "mappings nested 65 deep through a merge key": (nested_alias("merge", 31, 31), [f"2: {DEEP}"]),
}


@pytest.mark.parametrize("case", AT_THE_EDGE)
def test_check_config_at_each_limits_edge(case, tmp_path, capsys):
    content, printed = AT_THE_EDGE[case]
    path = tmp_path / "moko.yml"
    path.write_text(content)
    assert cli.main(["check-config", str(path)]) == (2 if printed else 0)
    out = capsys.readouterr().out.splitlines()
    assert out == ([f"{path}:{line}" for line in printed] if printed else [f"{path}: valid"])


def test_a_file_of_256_kib_is_read_and_one_byte_more_is_refused_at_its_last_line():
    exactly = "version: 1\n" + "#" * (256 * 1024 - 12) + "\n"
    assert len(exactly.encode()) == 256 * 1024
    # As text (a file's content from GitHub) and as bytes (check-config reads bytes).
    for content in (exactly, exactly.encode()):
        assert validate_policy_text(content) == []
    for content in (exactly + "\n", (exactly + "\n").encode()):
        assert [str(problem) for problem in validate_policy_text(content)] == [
            "moko.yml:3: the file is larger than 256 KiB"
        ]


def test_without_libyaml_deep_flow_nesting_is_refused_where_it_crosses(tmp_path):
    """PyYAML built without libyaml scans flow collections in Python, whose look-ahead for keys
    costs more at each level: the scanner itself stops at the 65th level."""
    files = {
        "deep.yml": "[\n" * 100 + "]" * 100 + "\n",
        "edge.yml": "[\n" * 64 + "]" * 64 + "\n",
        "flow.yml": "version: 1\nscope: {include: [docs-*], exclude: []}\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    # As if libyaml were missing: PyYAML and Moko fall back on the parser written in Python.
    script = (
        "import sys; sys.modules['yaml._yaml'] = None\n"
        "from handlers.wiring.cli import main\n"
        "for name in sys.argv[1:]: main(['check-config', name])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *(str(tmp_path / name) for name in files)],
        capture_output=True, text=True, timeout=30,
    )
    assert done.stdout.splitlines() == [
        f"{tmp_path / 'deep.yml'}:65: nested more than 64 levels deep",
        f"{tmp_path / 'edge.yml'}:1: the policy must be a mapping with the keys version, mode, repository, "
        "branches, scope, overrides, commands, notify, rulesets, branch_cleanup",
        f"{tmp_path / 'flow.yml'}: valid",
    ], done.stderr
