"""``python -m firewall`` runs the command-line interface."""

from __future__ import annotations

from firewall.cli.main import main

raise SystemExit(main())
