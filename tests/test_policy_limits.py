"""Hostile policy files through `moko check-config`: every limit (size, values after aliases,
nesting, tags) is an invalid file with its line, found quickly, exit 2."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from handlers.wiring import cli
from policies.loader import parse_policy

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
    # Deeper than Python's stack when composed naively.
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
