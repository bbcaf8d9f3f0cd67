"""The ``trigger-firewall`` command line: one dispatch table in :mod:`firewall.cli.main`,
one module per command."""
