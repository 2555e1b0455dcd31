"""The command line's exit codes, as the README's contract states them: one place for every command."""

EXIT_OK = 0  # success
EXIT_FAILURES = 1  # the work had failures (a repository failed or is unknown, a check failed)
EXIT_USAGE = 2  # usage or configuration error, an invalid policy file included
