"""Which policy kinds an event concerns: an edit of a repository's settings needs no read of
its protection. A ``Concern`` names the kinds it covers by their names in the registry, and
the engine plans only those parts of the policy. Not to be confused with
``policies.model.Scope``, which repositories a policy manages."""

from __future__ import annotations

from dataclasses import dataclass, replace

from policies.model import BRANCH_PROTECTION, REPOSITORY, RULESETS, Policy
from policies.registry import POLICY_KINDS, PolicyKind


@dataclass(frozen=True)
class Concern:
    """``kinds``: the kinds it covers, by name (None: every kind). ``sweep``: the kinds that
    only sweeps apply (deleting stale branches) too, as sweeps, /moko plan and status plan
    them. ``default_branch_only``: of each kind, only what is about the default branch (its
    ``default_branch_part``)."""

    kinds: frozenset[str] | None = None
    sweep: bool = False
    default_branch_only: bool = False

    def covers(self, kind: PolicyKind) -> bool:
        return (self.kinds is None or kind.name in self.kinds) and (self.sweep or not kind.sweeps_only)

    @property
    def whole(self) -> bool:
        """Whether it is the repository's whole policy (as an event's remediation knows it)."""
        return self.kinds is None and not self.default_branch_only

    def restrict(self, policy: Policy) -> Policy:
        """The policy with only what this concern covers (a kind it leaves out manages nothing)."""
        for kind in POLICY_KINDS:
            section = getattr(policy, kind.section)
            if not self.covers(kind):
                if section != kind.nothing:
                    policy = replace(policy, **{kind.section: kind.nothing})
            elif self.default_branch_only and kind.default_branch_part is not None:
                policy = replace(policy, **{kind.section: kind.default_branch_part(section)})
        return policy


def only(*kinds: str) -> Concern:
    """The concern of these kinds (by name) alone."""
    return Concern(frozenset(kinds))


ALL = Concern()
# A sweep's (and /moko plan's and status's) concern: the whole policy, stale branches too.
SWEEP = Concern(sweep=True)
SETTINGS_ONLY = only(REPOSITORY)
PROTECTION_ONLY = only(BRANCH_PROTECTION)
RULESETS_ONLY = only(RULESETS)
# The default branch moved: its rule now means another branch; the named ones did not change.
NEW_DEFAULT_BRANCH = Concern(frozenset({REPOSITORY, BRANCH_PROTECTION}), default_branch_only=True)
