"""Load, soak and benchmark tooling for the firewall (not collected by pytest)."""
