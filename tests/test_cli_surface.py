"""The command line a person expects: `moko --version`, and a help text on every option of every
command."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import version

from handlers.wiring.cli import build_parser


def test_version_prints_the_installed_version():
    done = subprocess.run([sys.executable, "-m", "handlers.wiring.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"moko {version('moko')}"


def test_every_option_of_every_command_has_a_help_text():
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [f"moko {option}" for option in (a.option_strings or [a.dest] for a in parser._actions
                                                 if not a.help and not isinstance(a, argparse._SubParsersAction))]
    for name, command in commands.choices.items():
        assert command.description or command.format_help(), name
        for action in command._actions:
            if not action.help:
                missing.append(f"moko {name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []
    helped = {choice.dest for choice in commands._choices_actions if choice.help}
    assert helped == set(commands.choices)


def test_help_of_a_command_names_its_options():
    done = subprocess.run([sys.executable, "-m", "handlers.wiring.cli", "sweep", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())  # argparse wraps lines to the terminal's width
    assert "--retry-failed take again only the repositories that failed in the last sweep" in text
