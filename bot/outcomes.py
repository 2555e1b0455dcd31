"""Every outcome name Moko writes: what became of a change (the audit record's ``outcome``) and
what a repository's remediation came to (a sweep's counts, its checkpoints)."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """An outcome, by its name as stored, audited and shown: a ``str`` whose value is the
    name (``Outcome.DRY_RUN == "dry-run"``), so records stay byte for byte what they were."""

    # What became of one change.
    # A request to GitHub about to be sent; a record with its outcome follows it (same run,
    # repository, policy and field). One with none after it: Moko stopped in between, and the
    # change may or may not have happened.
    PENDING = "pending"
    APPLIED = "applied"
    DRY_RUN = "dry-run"
    FAILED = "failed"  # a repository's too: something failed
    ROLLED_BACK = "rolled-back"
    DEFERRED = "deferred"  # a repository's too: a change waits for its branch
    DENIED = "denied"  # a command the commenter may not give
    # What a repository's remediation came to.
    COMPLIANT = "compliant"
    FIXED = "fixed"
    SKIPPED = "skipped"
    PLANNED = "planned"  # a dry run's, or /moko plan's: what would be fixed
    UNKNOWN = "unknown"  # its compliance cannot be told


# The outcomes an audit record may hold.
AUDIT_OUTCOMES: frozenset[Outcome] = frozenset({
    Outcome.PENDING, Outcome.APPLIED, Outcome.DRY_RUN, Outcome.FAILED, Outcome.ROLLED_BACK,
    Outcome.DEFERRED, Outcome.DENIED,
})
# What a repository's remediation may come to.
REPOSITORY_OUTCOMES: frozenset[Outcome] = frozenset({
    Outcome.COMPLIANT, Outcome.FIXED, Outcome.FAILED, Outcome.DEFERRED, Outcome.SKIPPED,
    Outcome.PLANNED, Outcome.UNKNOWN,
})
