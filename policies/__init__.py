"""The policy model: moko.yml loading and validation, one module per policy kind, pure planning.

- ``model``: Policy, BranchRule, Scope, Change, RepoState, Plan (frozen dataclasses)
- ``defaults``: the built-in default policy
- ``loader`` / ``validate``: moko.yml text -> Policy, problems with their lines, overrides
- ``scope``: which repositories a policy manages
- ``repository_settings``, ``branch_protection``: the policy kinds; ``registry`` lists them
- ``plan``: plan_repository(policy, repo_state) -> Plan
"""
