"""Resource policies: named, validated resource profiles with behaviour (policies/builtin/*.yaml,
/etc/cgagent/policies.d, --policy-dir), and the controller `cgagent serve` runs to apply them live.

Importing this package is cheap; pydantic is imported by policies.model / policies.loader only.
"""
