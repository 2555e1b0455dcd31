"""`moko check-config FILE`: validate a policy file, one `FILE:LINE: message` line per error."""

from __future__ import annotations

import sys
from pathlib import Path

from policies.loader import validate_policy_text

EXIT_OK, EXIT_INVALID = 0, 2


def run_check_config(path: str) -> int:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        print(f"{path}:0: cannot read the file: {reason}", file=sys.stderr)
        return EXIT_INVALID
    problems = validate_policy_text(text, source=path)
    for problem in problems:
        print(str(problem))
    if problems:
        return EXIT_INVALID
    print(f"{path}: valid")
    return EXIT_OK
