"""trigger-firewall: an inference-time firewall that screens model traffic for backdoor triggers."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
