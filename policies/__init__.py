"""The policy model: moko.yml loading and validation, one module per policy kind, pure planning.

- ``model``: Policy, BranchRule, Scope, Change, Plan, and RepoState: what is known of a
  repository, from the batched read (or a payload) through each kind's reads to the planner
- ``defaults``: the built-in default policy
- ``loader`` / ``validate``: moko.yml text -> Policy, problems with their lines, overrides
- ``scope``: which repositories a policy manages
- ``repository_settings``, ``branch_protection`` (with ``protection_shapes``,
  ``protection_report``, ``protection_state``), ``rulesets``, ``branch_cleanup``: the policy kinds, each declaring
  its hooks (plan, read, send, inverse, describe, status…); ``registry`` lists them, and the
  engine, the transaction and the reports go through it
- ``words``: what a kind says in reports
- ``plan``: plan_repository(policy, repo_state) -> Plan
"""
