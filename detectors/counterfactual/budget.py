"""Probes as a share of the traffic: the budget that scales with what the firewall forwards.

The per-second bucket (``probes_per_second``) caps the load ``counterfactual`` can put on the
model whatever the traffic; this caps it relative to the traffic, so a burst of odd-looking
requests (an attacker spraying made-up words to exhaust the budget, or a jargon-heavy tenant)
cannot turn the firewall into the model's main client. ``probe_share: 1.0`` means at most as
many probes as requests the detector's routes screened over the last minute, plus
``probe_burst`` so that a quiet service can still prove its first suspicion.

The window slides: the previous minute counts in proportion to how much of it still lies in
the last 60 seconds (two counters, no per-request list).
"""

from __future__ import annotations

__all__ = ["ShareBudget"]

WINDOW_SECONDS = 60.0


class ShareBudget:
    """At most ``share`` probes per request seen in the sliding window, plus ``allowance``."""

    def __init__(self, share: float | None, allowance: int, window: float = WINDOW_SECONDS) -> None:
        self._share = share
        self._allowance = allowance
        self._window = window
        self._index = 0
        self._requests = [0, 0]  # previous window, this one
        self._probes = [0, 0]

    def _roll(self, now: float) -> float:
        """Move the window to ``now``; how much of the previous one still counts."""
        index = int(now // self._window)
        if index != self._index:
            if index == self._index + 1:
                self._requests = [self._requests[1], 0]
                self._probes = [self._probes[1], 0]
            else:
                self._requests = [0, 0]
                self._probes = [0, 0]
            self._index = index
        return 1.0 - (now % self._window) / self._window

    def saw(self, now: float) -> None:
        """One request screened by this detector's rule (suspected or not)."""
        self._roll(now)
        self._requests[1] += 1

    def allows(self, probes: int, now: float) -> bool:
        """Whether ``probes`` more fit in the share (nothing is taken)."""
        if self._share is None:
            return True
        weight = self._roll(now)
        requests = self._requests[0] * weight + self._requests[1]
        sent = self._probes[0] * weight + self._probes[1]
        return sent + probes <= self._share * requests + self._allowance

    def spent(self, probes: int, now: float) -> None:
        self._roll(now)
        self._probes[1] += probes
