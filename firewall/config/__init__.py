"""The configuration schema: one validated, immutable tree loaded from YAML, env and flags.

Everything lives in :mod:`firewall.config.schema`; import from there.
"""
